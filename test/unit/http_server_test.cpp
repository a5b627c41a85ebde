// The helpers handlers use around the server (api_util.hpp): pure functions, no sockets.
#include "guardia/http/api_util.hpp"

#include <boost/json/parse.hpp>

#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

using namespace guardia::http;
namespace json = boost::json;
using Status = beast_http::status;

namespace {

json::value body_json(const Response& res) {
    return json::parse(res.body());
}

std::string error_code_of(const Response& res) {
    return std::string(body_json(res).as_object().at("error").as_string());
}

}  // namespace

// ------------------------------------------------------------------ helpers

namespace {

Request with_header(beast_http::field f, std::string value) {
    Request req{beast_http::verb::get, "/", 11};
    req.set(f, value);
    return req;
}

Request json_post(std::string body, std::string content_type = "application/json") {
    Request req{beast_http::verb::post, "/", 11};
    req.set(beast_http::field::content_type, content_type);
    req.body() = std::move(body);
    req.prepare_payload();
    return req;
}

// The error code of a failed parse_json_object, "" when it succeeded.
std::string parse_error(const Request& req, std::size_t depth = 8) {
    auto r = parse_json_object(req, depth);
    if (std::holds_alternative<json::object>(r)) return "";
    return error_code_of(std::get<Response>(r));
}

beast_http::status parse_status(const Request& req) {
    auto r = parse_json_object(req, 8);
    return std::holds_alternative<Response>(r) ? std::get<Response>(r).result() : Status::ok;
}

}  // namespace

TEST_CASE("http helpers: bearer_token_matches") {
    const std::string token = "s3cr3t-token-0123456789";
    CHECK(bearer_token_matches(with_header(beast_http::field::authorization, "Bearer " + token),
                               token));
    CHECK(bearer_token_matches(with_header(beast_http::field::authorization, "bearer " + token),
                               token));
    CHECK_FALSE(bearer_token_matches(
        with_header(beast_http::field::authorization, "Bearer s3cr3t-token-0123456788"), token));
    CHECK_FALSE(bearer_token_matches(Request{beast_http::verb::get, "/", 11}, token));  // missing
    CHECK_FALSE(bearer_token_matches(
        with_header(beast_http::field::authorization, "Basic " + token), token));
    CHECK_FALSE(bearer_token_matches(
        with_header(beast_http::field::authorization, "Bearer" + token), token));
    CHECK_FALSE(bearer_token_matches(
        with_header(beast_http::field::authorization, "Bearer " + token + "x"), token));
    CHECK_FALSE(bearer_token_matches(
        with_header(beast_http::field::authorization, "Bearer " + token.substr(1)), token));
    CHECK_FALSE(bearer_token_matches(with_header(beast_http::field::authorization, "Bearer "), ""));
    CHECK_FALSE(
        bearer_token_matches(with_header(beast_http::field::authorization, "Bearer x"), ""));
}

TEST_CASE("http helpers: path_segments decodes and refuses what could escape") {
    using V = std::vector<std::string>;
    CHECK(path_segments("/api/tasks/SR-1/validation") == V{"api", "tasks", "SR-1", "validation"});
    CHECK(path_segments("/") == V{});
    CHECK(path_segments("/api/tasks?wait=true&x=/y") == V{"api", "tasks"});
    CHECK(path_segments("/a//b/") == V{"a", "b"});
    CHECK(path_segments("/art/my%20file%2Bv2.tar") == V{"art", "my file+v2.tar"});
    CHECK(path_segments("/a+b") == V{"a+b"});  // '+' is no space in a path
    CHECK(path_segments("/%C3%A9t%C3%A9") == V{"\xC3\xA9t\xC3\xA9"});
    CHECK_FALSE(path_segments("/a%2Fb").has_value());  // would smuggle a '/'
    CHECK_FALSE(path_segments("/a%2fb").has_value());
    CHECK_FALSE(path_segments("/a%00b").has_value());
    CHECK_FALSE(path_segments("/a/../b").has_value());
    CHECK_FALSE(path_segments("/a/%2e%2E/b").has_value());
    CHECK_FALSE(path_segments("/a/./b").has_value());
    CHECK_FALSE(path_segments("/bad%").has_value());
    CHECK_FALSE(path_segments("/bad%4").has_value());
    CHECK_FALSE(path_segments("/bad%zz").has_value());
    CHECK_FALSE(path_segments("relative/path").has_value());
    CHECK_FALSE(path_segments("").has_value());
    CHECK_FALSE(path_segments("http://host/a").has_value());
}

TEST_CASE("http helpers: query_params decodes, last duplicate wins") {
    using M = std::map<std::string, std::string>;
    CHECK(query_params("/a") == M{});
    CHECK(query_params("/a?") == M{});
    CHECK(query_params("/a?wait=true&timeout=30") == M{{"wait", "true"}, {"timeout", "30"}});
    CHECK(query_params("/a?q=x+y%21%2B") == M{{"q", "x y!+"}});
    CHECK(query_params("/a?k=1&k=2") == M{{"k", "2"}});
    CHECK(query_params("/a?flag&&v=") == M{{"flag", ""}, {"v", ""}});
    CHECK(query_params("/a?x=a=b") == M{{"x", "a=b"}});
    CHECK(query_params("/a?na%6De=v") == M{{"name", "v"}});
    CHECK_FALSE(query_params("/a?x=%").has_value());
    CHECK_FALSE(query_params("/a?x=%G1").has_value());
    CHECK_FALSE(query_params("/a?%zz=1").has_value());
}

TEST_CASE("http helpers: parse_json_object is strict") {
    CHECK(parse_error(json_post(R"({"a":1})")) == "");
    CHECK(parse_error(json_post(R"({"a":1})", "application/json; charset=utf-8")) == "");
    CHECK(parse_error(json_post(R"({"a":1})", "Application/JSON")) == "");

    CHECK(parse_status(json_post(R"({"a":1})", "text/plain")) == Status::unsupported_media_type);
    CHECK(parse_error(json_post(R"({"a":1})", "text/plain")) == "unsupported_media_type");
    CHECK(parse_error(json_post(R"({"a":1})", "application/jsonx")) == "unsupported_media_type");
    Request no_type{beast_http::verb::post, "/", 11};
    no_type.body() = "{}";
    CHECK(parse_error(no_type) == "unsupported_media_type");

    CHECK(parse_status(json_post("")) == Status::bad_request);
    CHECK(parse_error(json_post("")) == "empty_body");
    CHECK(parse_error(json_post("  \n")) == "empty_body");

    auto bad = parse_json_object(json_post("{\n  \"a\": 1,\n  \"b\": }"), 8);
    REQUIRE(std::holds_alternative<Response>(bad));
    const auto& bad_res = std::get<Response>(bad);
    CHECK(bad_res.result() == Status::bad_request);
    CHECK(error_code_of(bad_res) == "bad_json");
    const std::string message(body_json(bad_res).as_object().at("message").as_string());
    CHECK(message.find("body:3:") != std::string::npos);              // line:column
    CHECK(parse_error(json_post(R"({"a":1,"a":2})")) == "bad_json");  // duplicate key
    CHECK(parse_error(json_post(R"({"a":1} x)")) == "bad_json");

    CHECK(parse_error(json_post(R"({"a":{"b":{"c":1}}})"), 3) == "");
    CHECK(parse_error(json_post(R"({"a":{"b":{"c":[1]}}})"), 3) == "too_deep");
    CHECK(parse_error(json_post(R"({"a":"[[[[[[{{{{"})"), 2) == "");  // brackets in a string
    CHECK(parse_error(json_post(std::string(40, '[') + std::string(40, ']')), 100) == "too_deep");

    CHECK(parse_error(json_post("[1,2]")) == "not_an_object");
    CHECK(parse_error(json_post("42")) == "not_an_object");
    CHECK(parse_error(json_post("\"s\"")) == "not_an_object");
}

TEST_CASE("http helpers: responses mirror version and keep-alive, JSON error shape") {
    Request req{beast_http::verb::get, "/", 10};
    auto res = error_response(req, Status::not_found, "not_found", "no such task");
    CHECK(res.version() == 10);
    CHECK_FALSE(res.keep_alive());
    CHECK(res[beast_http::field::content_type] == "application/json");
    CHECK(res[beast_http::field::content_length] == std::to_string(res.body().size()));
    CHECK(body_json(res) == json::parse(R"({"error":"not_found","message":"no such task"})"));

    Request req11{beast_http::verb::get, "/", 11};
    auto text = text_response(req11, Status::ok, "hello", "text/plain; charset=utf-8");
    CHECK(text.version() == 11);
    CHECK(text.keep_alive());
    CHECK(text.body() == "hello");
    CHECK(text[beast_http::field::content_type] == "text/plain; charset=utf-8");
}
