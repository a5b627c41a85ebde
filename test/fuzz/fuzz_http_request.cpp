// Fuzz target: the request handling of the embedded HTTP server (http/server.hpp) up to the
// handler, without sockets. The input is the bytes a client sends on a new connection.
//
// As Server does: a Beast request_parser set up by http::prepare_request_parser (the server's
// own function) reads the head; the body limit comes from the head (guardia serve's
// service::request_body_limit: large artifact uploads only with the bearer token); a
// Content-Length over it is refused before the body is read; then the body. A complete
// request then goes through what every API handler does with it (http/api_util.hpp): path
// segments, query parameters, the bearer check, the strict JSON body parse, and JSON answers.
// Each input is run under the service's default limits and under the smallest ones the
// configuration allows (1 KiB headers and body), so that the limits are reached by inputs of a
// few KiB.
//
// Properties: no crash, sanitizer report or leak; a head is accepted only within the header
// limit and a body only within the body limit; a large body limit only for an authenticated
// PUT of an artifact; path segments are never empty, ".", ".." and never hold '/' or NUL;
// bearer_token_matches agrees with a plain reading of the header; every JSON answer (the
// server's own refusals, the handlers' errors quoting the target) is valid JSON.
#include "guardia/core/digest.hpp"
#include "guardia/core/json_input.hpp"
#include "guardia/http/api_util.hpp"
#include "guardia/http/server.hpp"
#include "guardia/service/service_config.hpp"

#include "fuzz_common.hpp"

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/json/parse.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

namespace bh = boost::beast::http;
namespace http = guardia::http;
namespace json = boost::json;

constexpr std::string_view token = "fuzz-token-0123456789abcdef";

struct Limits {
    http::ServerOptions server;
    std::size_t artifact_limit = 0;
    std::size_t max_json_depth = 0;
};

// The clients `guardia serve` would load: one holding every role, with the fuzzer's token.
const guardia::service::ClientRegistry& fuzz_clients() {
    static const guardia::service::ClientRegistry reg = [] {
        guardia::service::ServiceConfig sc;
        guardia::service::ClientSpec c;
        c.name = "fuzz";
        c.token_sha256 = guardia::sha256_hex(token);
        c.roles = guardia::service::RoleSet::all();
        sc.clients.push_back(c);
        return guardia::service::ClientRegistry::load(sc).value();
    }();
    return reg;
}

Limits limits_of(const guardia::service::ServiceConfig& sc) {
    // As `guardia serve` (src/app/serve_command.cpp) builds its ServerOptions.
    Limits l;
    l.server.max_body_bytes = sc.max_body_bytes;
    l.server.max_header_bytes = sc.max_header_bytes;
    l.artifact_limit = sc.max_artifact_bytes;
    l.max_json_depth = sc.max_json_depth;
    const std::size_t artifact_limit = sc.max_artifact_bytes;
    l.server.body_limit_for = [artifact_limit](const http::Request& head) {
        return guardia::service::request_body_limit(head, fuzz_clients(), artifact_limit);
    };
    return l;
}

const Limits& default_limits() {
    static const Limits l = limits_of(guardia::service::ServiceConfig{});
    return l;
}

const Limits& smallest_limits() {
    static const Limits l = [] {
        guardia::service::ServiceConfig sc;
        sc.max_header_bytes = 1024;
        sc.max_body_bytes = 1024;
        sc.max_artifact_bytes = 1024;
        sc.max_json_depth = 2;
        return limits_of(sc);
    }();
    return l;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; };
        if (lower(a[i]) != lower(b[i])) return false;
    }
    return true;
}

// The bearer check as the API documents it, written plainly.
bool bearer_ok(const http::Request& req) {
    const std::string_view v = req[bh::field::authorization];
    return v.size() > 7 && iequals(v.substr(0, 6), "bearer") && v[6] == ' ' &&
           trim(v.substr(7)) == token;
}

// A JSON answer must be valid JSON, whatever bytes it quotes.
void check_json_answer(const http::Response& res, const char* what) {
    json::error_code ec;
    (void)json::parse(res.body(), ec);
    GUARDIA_FUZZ_CHECK(!ec, std::string(what) + ": " + ec.message() + ": " + res.body());
}

// What every handler does with a complete request.
void handle(const http::Request& req, const Limits& limits) {
    const std::string_view target = req.target();
    const auto segments = http::path_segments(target);
    if (segments) {
        for (const auto& s : *segments) {
            GUARDIA_FUZZ_CHECK(!s.empty() && s != "." && s != "..", s);
            GUARDIA_FUZZ_CHECK(s.find_first_of(std::string_view("/\0", 2)) == std::string::npos,
                               s);
        }
    }
    (void)http::query_params(target);
    GUARDIA_FUZZ_CHECK(http::bearer_token_matches(req, token) == bearer_ok(req),
                       std::string(req[bh::field::authorization]));
    GUARDIA_FUZZ_CHECK(!http::bearer_token_matches(req, ""), "an empty token never matches");

    auto body = http::parse_json_object(req, limits.max_json_depth);
    if (auto* refusal = std::get_if<http::Response>(&body))
        check_json_answer(*refusal, "parse_json_object's answer");
    // The router's answer to an unknown path quotes it (deploy_service.cpp).
    check_json_answer(http::error_response(req, bh::status::not_found, "not_found",
                                           "no such path: " + guardia::printable(target)),
                      "not_found answer");
}

void run(std::string_view bytes, const Limits& limits) {
    const http::ServerOptions& o = limits.server;
    bh::request_parser<bh::string_body> parser;
    http::prepare_request_parser(parser, o);

    // The head, as async_read_header: everything the client sent is available at once.
    boost::beast::error_code ec;
    std::size_t used = 0;
    while (!parser.is_header_done()) {
        used += parser.put(boost::asio::buffer(bytes.data() + used, bytes.size() - used), ec);
        if (ec == bh::error::need_more) return;  // incomplete: the server waits (408 later)
        if (ec) {
            // 431 for header_limit, 400 for the rest: both are answers the server writes.
            GUARDIA_FUZZ_CHECK(ec.category() == bh::make_error_code(bh::error::bad_method).category(),
                               ec.message());
            return;
        }
    }
    if (http::head_too_large(used, o)) return;  // 431, as the server answers
    GUARDIA_FUZZ_CHECK(used <= o.max_header_bytes,
                       "head of " + std::to_string(used) + " bytes accepted");

    const auto& head = parser.get();
    std::size_t limit = o.max_body_bytes;
    if (const std::size_t l = o.body_limit_for(head)) limit = l;
    if (limit != o.max_body_bytes) {
        const auto seg = http::path_segments(head.target());
        GUARDIA_FUZZ_CHECK(head.method() == bh::verb::put && bearer_ok(head) && seg &&
                               seg->size() == 5 && (*seg)[0] == "api" && (*seg)[3] == "artifacts",
                           "a large body limit for " + std::string(head.target()));
    }
    if (const auto length = parser.content_length(); length && *length > limit) return;  // 413
    parser.body_limit(limit);

    parser.eager(true);  // as async_read does for the body
    while (!parser.is_done()) {
        const std::size_t n =
            parser.put(boost::asio::buffer(bytes.data() + used, bytes.size() - used), ec);
        used += n;
        if (ec) return;  // need_more: waits for the rest (408 later); 413 body_limit; 400
        if (n == 0) return;
    }
    http::Request req = parser.release();
    GUARDIA_FUZZ_CHECK(req.body().size() <= limit,
                       "a body of " + std::to_string(req.body().size()) + " bytes accepted");
    handle(req, limits);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    run(bytes, default_limits());
    run(bytes, smallest_limits());
    return 0;
}
