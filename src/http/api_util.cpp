#include "guardia/http/api_util.hpp"

#include "guardia/core/json_input.hpp"

#include <boost/beast/http/field.hpp>
#include <boost/json/serialize.hpp>

#include <openssl/crypto.h>

#include <algorithm>

namespace guardia::http {

namespace json = boost::json;

namespace {

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               auto lower = [](char c) {
                   return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
               };
               return lower(x) == lower(y);
           });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// %XX decoding; '+' becomes a space only in queries (in a path it is a plain '+').
std::optional<std::string> percent_decode(std::string_view s, bool plus_is_space) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        if (c == '%') {
            if (i + 2 >= s.size()) return std::nullopt;  // fewer than two characters follow
            const int hi = hex_value(s[i + 1]);
            const int lo = hex_value(s[i + 2]);
            if (hi < 0 || lo < 0) return std::nullopt;
            out += static_cast<char>(hi * 16 + lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            out += ' ';
        } else {
            out += c;
        }
    }
    return out;
}

// Nesting depth of a JSON text, counted lexically (brackets outside strings); stops counting
// once over `limit`. Run before the parser so that "too deep" is told apart from bad syntax.
bool deeper_than(std::string_view text, std::size_t limit) {
    std::size_t depth = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > limit) return true;
        } else if ((c == '}' || c == ']') && depth > 0) {
            --depth;
        }
    }
    return false;
}

}  // namespace

Response json_response(const Request& req, beast_http::status status, const json::value& body) {
    return text_response(req, status, json::serialize(body), "application/json");
}

Response error_response(const Request& req, beast_http::status status, std::string_view code,
                        std::string_view message) {
    json::object body;
    body["error"] = code;
    body["message"] = message;
    return json_response(req, status, body);
}

Response text_response(const Request& req, beast_http::status status, std::string body,
                       std::string_view content_type) {
    Response res{status, req.version()};
    res.set(beast_http::field::content_type, content_type);
    res.keep_alive(req.keep_alive());
    res.body() = std::move(body);
    res.prepare_payload();
    return res;
}

std::variant<json::object, Response> parse_json_object(const Request& req, std::size_t max_depth) {
    using beast_http::status;
    const std::string_view type = req[beast_http::field::content_type];
    if (!iequals(trim(type.substr(0, type.find(';'))), "application/json"))
        return error_response(req, status::unsupported_media_type, "unsupported_media_type",
                              "the body must be application/json");
    const std::string& text = req.body();
    if (text.find_first_not_of(" \t\r\n") == std::string::npos)  // JSON whitespace only
        return error_response(req, status::bad_request, "empty_body", "a JSON object is required");
    const std::size_t limit = std::min(max_depth, max_json_depth);
    if (deeper_than(text, limit))
        return error_response(
            req, status::bad_request, "too_deep",
            "the JSON body nests deeper than " + std::to_string(limit) + " levels");
    auto doc = parse_json_document(text, "body");
    if (!doc) return error_response(req, status::bad_request, "bad_json", doc.error().message);
    if (!doc->is_object())
        return error_response(req, status::bad_request, "not_an_object",
                              "the JSON body must be an object");
    return std::move(doc->as_object());
}

bool bearer_token_matches(const Request& req, std::string_view token) {
    const std::string_view value = req[beast_http::field::authorization];
    constexpr std::string_view scheme = "bearer";
    if (value.size() <= scheme.size() || !iequals(value.substr(0, scheme.size()), scheme) ||
        value[scheme.size()] != ' ')
        return false;
    const std::string_view presented = trim(value.substr(scheme.size()));
    if (token.empty()) return false;
    // Same work whatever was presented: with a different length, the token is compared with
    // itself, so the time depends on the token's length only, never on the presented bytes.
    const bool same_length = presented.size() == token.size();
    const std::string_view compared = same_length ? presented : token;
    const bool equal = CRYPTO_memcmp(compared.data(), token.data(), token.size()) == 0;
    return same_length && equal;
}

std::optional<std::vector<std::string>> path_segments(std::string_view target) {
    const std::string_view path = target.substr(0, target.find_first_of("?#"));
    if (path.empty() || path.front() != '/') return std::nullopt;
    std::vector<std::string> out;
    std::size_t start = 1;
    while (start <= path.size()) {
        const std::size_t end = std::min(path.find('/', start), path.size());
        const std::string_view raw = path.substr(start, end - start);
        start = end + 1;
        if (raw.empty()) continue;
        auto segment = percent_decode(raw, false);
        if (!segment || segment->find_first_of(std::string_view("/\0", 2)) != std::string::npos ||
            *segment == "." || *segment == "..")
            return std::nullopt;
        out.push_back(std::move(*segment));
    }
    return out;
}

std::optional<std::map<std::string, std::string>> query_params(std::string_view target) {
    std::map<std::string, std::string> out;
    const std::size_t q = target.find('?');
    if (q == std::string_view::npos) return out;
    std::string_view query = target.substr(q + 1);
    query = query.substr(0, query.find('#'));
    while (!query.empty()) {
        const std::size_t amp = std::min(query.find('&'), query.size());
        const std::string_view piece = query.substr(0, amp);
        query.remove_prefix(std::min(amp + 1, query.size()));
        if (piece.empty()) continue;
        const std::size_t eq = piece.find('=');
        auto key = percent_decode(piece.substr(0, eq), true);
        auto value = eq == std::string_view::npos ? std::optional<std::string>(std::string())
                                                  : percent_decode(piece.substr(eq + 1), true);
        if (!key || !value) return std::nullopt;
        out[std::move(*key)] = std::move(*value);
    }
    return out;
}

}  // namespace guardia::http
