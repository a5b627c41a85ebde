#include "guardia/core/error.hpp"
#include "guardia/core/secret.hpp"

#include <doctest/doctest.h>
#include <libssh2.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

using namespace guardia;

TEST_CASE("guardia errors carry a category, a kind and a human message") {
    Error e(errc::host_key_changed, "web-01: host key changed");
    CHECK(e.code == errc::host_key_changed);
    CHECK(std::string(e.code.category().name()) == "guardia");
    CHECK(e.describe().find("web-01: host key changed") == 0);
    CHECK(e.describe().find("guardia:") != std::string::npos);
}

TEST_CASE("libssh2 and sftp codes have their own categories") {
    auto ec = make_libssh2_error(LIBSSH2_ERROR_SOCKET_DISCONNECT);
    CHECK(std::string(ec.category().name()) == "libssh2");
    CHECK(ec.message() == "peer disconnected");
    CHECK(make_sftp_error(4).message() == "failure");
    CHECK(ec != make_error_code(errc::connect_failed));
}

TEST_CASE("Result carries either a value or an Error") {
    Result<int> ok = 3;
    Result<int> bad = Error(errc::timeout, "slow");
    CHECK(ok.has_value());
    CHECK(*ok == 3);
    CHECK_FALSE(bad.has_value());
    CHECK(bad.error().code == errc::timeout);
}

TEST_CASE("secret files must be private") {
    auto dir = std::filesystem::temp_directory_path() / "guardia-secret-test";
    std::filesystem::create_directories(dir);
    auto path = (dir / "pw").string();
    { std::ofstream(path) << "hunter2\n"; }
    std::filesystem::permissions(path, std::filesystem::perms::owner_read |
                                           std::filesystem::perms::owner_write |
                                           std::filesystem::perms::group_read);
    CHECK_THROWS_WITH_AS(read_secret_file(path), doctest::Contains("readable by group"),
                         std::runtime_error);
    std::filesystem::permissions(path, std::filesystem::perms::owner_read |
                                           std::filesystem::perms::owner_write);
    auto s = read_secret_file(path);
    CHECK(s.reveal() == "hunter2");
    Secret moved = std::move(s);
    CHECK(moved.reveal() == "hunter2");
    CHECK(s.empty());
    std::filesystem::remove_all(dir);
}
