// What every API handler needs around the server: JSON answers in one shape, a strict JSON
// body parse, bearer-token checks and target parsing. Pure functions, no I/O; the server
// (server.hpp) uses the same answers for the errors it produces itself.
#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace guardia::http {

namespace beast_http = boost::beast::http;
using Request = beast_http::request<beast_http::string_body>;
using Response = beast_http::response<beast_http::string_body>;

// Helpers for handlers (all responses JSON unless said, Content-Type application/json,
// keep-alive and HTTP version mirrored from the request, Content-Length set).
Response json_response(const Request& req, beast_http::status status,
                       const boost::json::value& body);
// {"error": code, "message": message}
Response error_response(const Request& req, beast_http::status status, std::string_view code,
                        std::string_view message);
Response text_response(const Request& req, beast_http::status status, std::string body,
                       std::string_view content_type);

// The deepest nesting parse_json_object can accept, whatever max_depth asks:
// parse_json_document (core/json_input.hpp), reused for its strictness, stops there.
inline constexpr std::size_t max_json_depth = 32;

// Strict body parse. Content-Type must be application/json, parameters such as charset
// allowed (else 415 unsupported_media_type); empty body -> 400 empty_body; nesting deeper
// than min(max_depth, max_json_depth) -> 400 too_deep (a top-level object is depth 1);
// invalid JSON or a duplicate key -> 400 bad_json with "body:line:column: ..."; a valid
// document that is not an object -> 400 not_an_object. On failure returns the ready error
// Response.
std::variant<boost::json::object, Response> parse_json_object(const Request& req,
                                                              std::size_t max_depth);

// "Authorization: Bearer <token>" (scheme case-insensitive) carries exactly `token`. The
// comparison takes the same time whatever the presented value: CRYPTO_memcmp over the
// token's length, also when the lengths differ. An empty `token` never matches.
bool bearer_token_matches(const Request& req, std::string_view token);

// The path of an origin-form target without its query, split into percent-decoded segments:
// "/api/tasks/SR-1/validation" -> {"api","tasks","SR-1","validation"}, "/" -> {}. Empty
// segments ("//", a trailing '/') are dropped. nullopt for a target not starting with '/',
// a bad % escape, or a segment that decodes to one holding '/' or NUL, or to "." or ".."
// (segments may end up in file names; nothing downstream should have to re-check).
std::optional<std::vector<std::string>> path_segments(std::string_view target);

// Query parameters of a target: "a=1&b=x+y%21" -> {a:"1", b:"x y!"}. '+' is a space, %XX
// decoded; a key without '=' has the value ""; empty pieces ("&&") are skipped; for a
// duplicate key the last wins. nullopt for a bad % escape.
std::optional<std::map<std::string, std::string>> query_params(std::string_view target);

}  // namespace guardia::http
