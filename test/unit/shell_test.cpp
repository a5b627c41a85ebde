#include "guardia/core/shell.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <string>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

using guardia::shell_quote;

TEST_CASE("shell_quote wraps plain words in single quotes") {
    CHECK(shell_quote("abc") == "'abc'");
    CHECK(shell_quote("") == "''");
    CHECK(shell_quote("/app/web apps") == "'/app/web apps'");
}

TEST_CASE("shell_quote escapes embedded single quotes") {
    CHECK(shell_quote("it's") == "'it'\\''s'");
    CHECK(shell_quote("'") == "''\\'''");
}

// The real proof: /bin/sh must read every quoted value back as exactly one, unchanged word.
TEST_CASE("shell_quote round-trips hostile strings through /bin/sh") {
    const std::array<std::string, 8> values = {
        "plain", "with space", "it's", "$(touch /tmp/pwned)", "`id`", "a;b&&c|d", "\"dq\" \\ back",
        "-rf *"};
    for (const auto& v : values) {
        std::string cmd = "printf %s " + shell_quote(v);
        FILE* p = ::popen(cmd.c_str(), "r");
        REQUIRE(p != nullptr);
        std::string out;
        char buf[256];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
        CHECK(::pclose(p) == 0);
        CHECK(out == v);
    }
}

namespace {
// Runs `script` with /bin/sh; returns its stdout, sets `status` to its exit code.
std::string run_sh(const std::string& script, int& status) {
    FILE* p = ::popen(("/bin/sh -c " + shell_quote(script) + " 2>/dev/null").c_str(), "r");
    REQUIRE(p != nullptr);
    std::string out;
    char buf[256];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    const int raw = ::pclose(p);
    status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    return out;
}
}  // namespace

TEST_CASE("remote_sha256_script hashes the file into the variable, or exits 91 without a tool") {
    const std::string file = "/tmp/guardia-unit-sha256 it's.bin";
    {
        FILE* f = std::fopen(file.c_str(), "wb");
        REQUIRE(f != nullptr);
        std::fputs("abc", f);
        std::fclose(f);
    }
    int status = -1;
    const std::string body = "f=" + shell_quote(file) + "; " +
                             guardia::remote_sha256_script("\"$f\"", "h") + "printf '%s' \"$h\"";
    CHECK(run_sh(body, status) ==
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(status == 0);
    // Neither sha256sum nor openssl on the PATH: exit 91, nothing printed after it.
    CHECK(run_sh("PATH=/nonexistent; " + body, status).empty());
    CHECK(status == 91);
    // A missing file: the tool fails, the script exits 91 as well.
    CHECK(run_sh("f=/nonexistent/x; " + guardia::remote_sha256_script("\"$f\"", "h") + "echo reached",
                 status)
              .empty());
    CHECK(status == 91);
    std::remove(file.c_str());
}

TEST_CASE("remote_sha256_script: openssl first for large files, sha256sum first below; each falls back") {
    // Stand-ins that say which one ran; the real tools are compared above.
    char dir_template[] = "/tmp/guardia-unit-hash-tools-XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const std::string dir = dir_template;
    auto fake = [&](const std::string& name, const std::string& says) {
        const std::string path = dir + "/" + name;
        FILE* f = std::fopen(path.c_str(), "w");
        REQUIRE(f != nullptr);
        std::fputs(("#!/bin/sh\ncat > /dev/null; echo '" + says + " -'\n").c_str(), f);
        std::fclose(f);
        ::chmod(path.c_str(), 0755);
    };
    fake("openssl", "by-openssl");
    fake("sha256sum", "by-sha256sum");
    auto hash_with = [&](std::uint64_t bytes, const std::string& path_var) {
        int status = -1;
        std::string out = run_sh("PATH=" + path_var + "; f=/dev/null; " +
                                     guardia::remote_sha256_script("\"$f\"", "h", bytes) +
                                     "printf '%s' \"$h\"",
                                 status);
        CHECK(status == 0);
        return out;
    };
    const auto big = guardia::kOpensslHashFromBytes;
    CHECK(hash_with(0, dir) == "by-sha256sum");
    CHECK(hash_with(big - 1, dir) == "by-sha256sum");
    CHECK(hash_with(big, dir) == "by-openssl");
    CHECK(hash_with(std::uint64_t{1} << 40, dir) == "by-openssl");
    // The preferred tool missing: the other one.
    std::remove((dir + "/openssl").c_str());
    CHECK(hash_with(big, dir) == "by-sha256sum");
    fake("openssl", "by-openssl");
    std::remove((dir + "/sha256sum").c_str());
    CHECK(hash_with(0, dir) == "by-openssl");
    std::remove((dir + "/openssl").c_str());
    ::rmdir(dir.c_str());
}
