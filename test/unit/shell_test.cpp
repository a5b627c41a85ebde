#include "guardia/core/shell.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cstdio>
#include <string>

#include <sys/wait.h>

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
