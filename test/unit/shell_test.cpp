#include "guardia/core/shell.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cstdio>
#include <string>

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
