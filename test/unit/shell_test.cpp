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

void write_text(const std::string& path, const std::string& text) {
    FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    std::fputs(text.c_str(), f);
    std::fclose(f);
}
}  // namespace

TEST_CASE("remote_sha256_script hashes the file into the variable, or exits 91 without a tool") {
    const std::string file = "/tmp/guardia-unit-sha256 it's.bin";
    write_text(file, "abc");
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

TEST_CASE("remote_sha256_script: openssl first from 2 MiB, sha256sum first below; a missing or broken tool is skipped") {
    // Stand-ins that say which one ran, in each tool's own output format; the real tools are
    // compared above and below.
    char dir_template[] = "/tmp/guardia-unit-hash-tools-XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const std::string dir = dir_template;
    const std::string by_openssl(64, 'a'), by_sha256sum(64, 'b');
    auto fake = [&](const std::string& name, const std::string& body) {
        const std::string path = dir + "/" + name;
        write_text(path, "#!/bin/sh\n" + body + "\n");
        ::chmod(path.c_str(), 0755);
    };
    auto good_tools = [&] {
        fake("openssl", "echo '" + by_openssl + " *stdin'");
        fake("sha256sum", "echo '" + by_sha256sum + "  -'");
    };
    auto hash_with = [&](std::uint64_t bytes, int& status) {
        return run_sh("PATH=" + dir + "; f=/dev/null; " +
                          guardia::remote_sha256_script("\"$f\"", "h", bytes) + "printf '%s' \"$h\"",
                      status);
    };
    int status = -1;
    const auto big = guardia::kOpensslHashFromBytes;
    good_tools();
    CHECK(hash_with(0, status) == by_sha256sum);
    CHECK(hash_with(big - 1, status) == by_sha256sum);
    CHECK(hash_with(big, status) == by_openssl);
    CHECK(hash_with(std::uint64_t{1} << 40, status) == by_openssl);
    CHECK(status == 0);
    // The preferred tool missing: the other one.
    std::remove((dir + "/openssl").c_str());
    CHECK(hash_with(big, status) == by_sha256sum);
    good_tools();
    std::remove((dir + "/sha256sum").c_str());
    CHECK(hash_with(0, status) == by_openssl);
    // Installed but failing (an openssl that cannot load its configuration): the other one.
    good_tools();
    fake("openssl", "echo 'error: cannot load provider' >&2; exit 1");
    CHECK(hash_with(big, status) == by_sha256sum);
    CHECK(status == 0);
    // Both failing: exit 91, nothing after.
    fake("sha256sum", "exit 1");
    CHECK(hash_with(big, status).empty());
    CHECK(status == 91);
    // An answer that is not a sha256 (an openssl printing "(stdin)= ..." without -r, a wrapper
    // printing a banner): never compared, exit 91 instead of a false mismatch.
    fake("openssl", "echo '(stdin)= " + by_openssl + "'");
    CHECK(hash_with(big, status).empty());
    CHECK(status == 91);
    fake("openssl", "echo 'ABCDEF  -'");
    CHECK(hash_with(big, status).empty());
    CHECK(status == 91);
    fake("openssl", "echo '" + by_openssl + "0 *stdin'");  // 65 digits
    CHECK(hash_with(big, status).empty());
    CHECK(status == 91);
    for (const char* tool : {"openssl", "sha256sum"}) std::remove((dir + "/" + tool).c_str());
    ::rmdir(dir.c_str());
}

TEST_CASE("remote_sha256_script: the real openssl and sha256sum give the same digest either way round") {
    const std::string file = "/tmp/guardia-unit-sha256-order.bin";
    write_text(file, "abc");
    for (std::uint64_t bytes : {std::uint64_t{0}, guardia::kOpensslHashFromBytes}) {
        CAPTURE(bytes);
        int status = -1;
        CHECK(run_sh("f=" + shell_quote(file) + "; " +
                         guardia::remote_sha256_script("\"$f\"", "h", bytes) + "printf '%s' \"$h\"",
                     status) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        CHECK(status == 0);
    }
    std::remove(file.c_str());
}
