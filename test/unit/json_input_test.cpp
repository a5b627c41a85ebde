#include "guardia/core/json_input.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/http/api_util.hpp"

#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <doctest/doctest.h>

#include <string>

using guardia::printable;

namespace {

// What a JSON client does with an answer: it must parse (Boost.JSON checks UTF-8 strictly).
bool parses_as_json(const std::string& text) {
    boost::json::error_code ec;
    (void)boost::json::parse(text, ec);
    return !ec;
}

}  // namespace

TEST_CASE("printable: one line, at most 64 bytes, then ...") {
    CHECK(printable("web-01") == "web-01");
    CHECK(printable("a\nb\tc\x7f") == "a?b?c?");
    CHECK(printable(std::string(64, 'x')) == std::string(64, 'x'));
    CHECK(printable(std::string(65, 'x')) == std::string(64, 'x') + "...");
}

TEST_CASE("printable: valid UTF-8 out, never a character cut in two") {
    // Found by fuzz_http_request (test/fuzz/regressions/http_request/404-target-cut-utf8):
    // the 64-byte cut fell inside a 3-byte character and the 404 answer quoting the target
    // was not valid JSON.
    std::string euros = "/cafe/";
    for (int i = 0; i < 20; ++i) euros += "\xe2\x82\xac";  // 20 x U+20AC, 3 bytes each
    const std::string p = printable(euros);
    CHECK(p == "/cafe/" + euros.substr(6, 19 * 3) + "...");  // 6 + 57 bytes, the 20th dropped
    CHECK(printable("caf\xc3\xa9") == "caf\xc3\xa9");
    CHECK(printable("\xf0\x9f\x98\x80") == "\xf0\x9f\x98\x80");  // 4-byte character kept whole
    // Bytes that are not well-formed UTF-8 become '?'.
    CHECK(printable("a\xff" "b") == "a?b");
    CHECK(printable("\xc3") == "?");                 // truncated sequence
    CHECK(printable("\xc0\xaf") == "??");            // overlong '/'
    CHECK(printable("\xed\xa0\x80") == "???");       // UTF-16 surrogate
    CHECK(printable("\xf4\x90\x80\x80") == "????");  // above U+10FFFF
}

TEST_CASE("JSON answers quoting client bytes stay valid JSON") {
    std::string target = "/cafe/";
    for (int i = 0; i < 20; ++i) target += "\xe2\x82\xac";
    for (const std::string& t : {target, std::string("/\xff\xfe/x"), std::string("/a\xc3")}) {
        guardia::http::Request req;
        req.target(t);
        const auto res = guardia::http::error_response(
            req, boost::beast::http::status::not_found, "not_found", "no such path: " + printable(t));
        CHECK(parses_as_json(res.body()));
    }
}

TEST_CASE("inventory errors quoting a long non-ASCII key are valid UTF-8") {
    std::string key;
    for (int i = 0; i < 40; ++i) key += "\xc3\xa9";  // 80 bytes of "é"
    key = "xyz" + key;                                 // the 64-byte cut falls inside one
    auto r = guardia::deploy::parse_inventory("{\"" + key + "\": 1}", "nodes.json");
    REQUIRE_FALSE(r.has_value());
    boost::json::object o;
    o["message"] = r.error().message;
    CHECK(parses_as_json(boost::json::serialize(o)));
}
