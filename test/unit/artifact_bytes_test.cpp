#include "guardia/core/artifact_bytes.hpp"

#include "../support/fleet.hpp"

#include <doctest/doctest.h>

#include <sys/stat.h>

#include <fstream>
#include <string>

using guardia::ArtifactBytes;
using guardia::errc;

namespace {

// Digests of "abc" (FIPS 180-2 and RFC 1321 test vectors).
constexpr const char* kAbcSha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
constexpr const char* kAbcMd5 = "900150983cd24fb0d6963f7d28e17f72";

}  // namespace

TEST_CASE("ArtifactBytes::read_file holds the file's bytes, digests and mode") {
    guardia::test::TempDir tmp;
    const auto path = tmp.path() + "/app.jar";
    { std::ofstream(path, std::ios::binary) << "abc"; }
    REQUIRE(::chmod(path.c_str(), 0751) == 0);
    auto bytes = ArtifactBytes::read_file(path);
    REQUIRE_MESSAGE(bytes.has_value(), (bytes ? "" : bytes.error().message));
    const auto& b = **bytes;
    CHECK(std::string(b.data(), b.size()) == "abc");
    CHECK(b.sha256() == kAbcSha256);
    CHECK(b.md5() == kAbcMd5);
    CHECK(b.mode() == 0751);
}

TEST_CASE("ArtifactBytes::read_file of an empty file: zero bytes, digests of nothing") {
    guardia::test::TempDir tmp;
    const auto path = tmp.path() + "/empty";
    { std::ofstream(path, std::ios::binary); }
    auto bytes = ArtifactBytes::read_file(path);
    REQUIRE(bytes.has_value());
    CHECK((*bytes)->size() == 0);
    CHECK((*bytes)->sha256() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_CASE("ArtifactBytes::read_file refuses what it cannot hold as a file's bytes") {
    guardia::test::TempDir tmp;
    auto missing = ArtifactBytes::read_file(tmp.path() + "/nope");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code == errc::local_io_failed);
    CHECK(missing.error().message.find(tmp.path() + "/nope") != std::string::npos);

    auto dir = ArtifactBytes::read_file(tmp.path());
    REQUIRE_FALSE(dir.has_value());
    CHECK(dir.error().code == errc::local_io_failed);
    CHECK(dir.error().message.find("not a regular file") != std::string::npos);
}

TEST_CASE("ArtifactBytes::from_bytes hashes what it is given") {
    auto b = ArtifactBytes::from_bytes(std::vector<char>{'a', 'b', 'c'});
    CHECK(b->size() == 3);
    CHECK(b->sha256() == kAbcSha256);
    CHECK(b->md5() == kAbcMd5);
    CHECK(b->mode() == 0644);
}
