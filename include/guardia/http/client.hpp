// A small HTTP/1.1 client for outgoing POSTs (the notifier's webhooks), on the caller's
// executor: no thread, no blocking call on the loop.
//
// One request per connection (`Connection: close`): webhooks are rare, and a fresh
// connection is never a stale kept-alive one. http:// and https:// are supported; https
// verifies the peer's certificate chain (system CA store, or a context made with a CA file)
// and its name (DNS name, or IP address for a numeric host), sends SNI for names, and
// speaks TLS 1.2 or later.
//
// Every network wait (resolve, connect, TLS handshake, write, read) is under one deadline,
// and http_post honours Asio cancellation (e.g. `http_post(...) || timer`): a cancelled call
// returns errc::cancelled. Answers are bounded: headers up to 8 KiB; the body
// is kept up to ClientOptions::max_body, a longer one is not read (body_truncated) and the
// status still counts.
//
// Error messages name the request as "POST scheme://host:port/path": never the query
// string, never a header value (either may hold a secret).
#pragma once

#include "guardia/core/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace boost::asio::ssl {
class context;
}

namespace guardia::http {

// A parsed http(s) URL. Userinfo ("user:pass@") and fragments are refused: credentials
// belong in headers, which are never stored or logged.
struct Url {
    Url() {}
    bool https = false;
    std::string host;  // a name, an IPv4 address, or an IPv6 address without brackets
    std::uint16_t port = 0;
    std::string target;  // path and query, starting with '/'
    // "scheme://host:port/path" (no query): safe for messages and logs.
    std::string display() const;
    std::string host_header() const;  // "host:port", IPv6 bracketed
};

// Errors (errc::invalid_argument) say what is wrong without echoing a query string.
Result<Url> parse_url(std::string_view url);

// What http_post accepts as an extra header (configuration checks them up front):
// RFC 9110 token characters for the name; visible characters, spaces and tabs for the value,
// never CR, LF or NUL (header injection).
bool is_header_name(std::string_view s);
bool is_header_value(std::string_view s);

using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct ClientResponse {
    ClientResponse() {}
    int status = 0;
    std::string body;             // at most ClientOptions::max_body bytes
    bool body_truncated = false;  // the answer's body was longer and was not read
};

// Blocking (reads CA files): call at start-up or through run_blocking(). Verifies peers;
// `ca_file` (PEM) is trusted in addition to the system CA store when not empty. Errors
// (errc::invalid_argument) name the file.
Result<std::shared_ptr<boost::asio::ssl::context>> make_tls_client_context(
    const std::string& ca_file);
// The same; `system_store` false: only `ca_file` is trusted (the system store when it is empty).
Result<std::shared_ptr<boost::asio::ssl::context>> make_tls_client_context(
    const std::string& ca_file, bool system_store);

struct ClientOptions {
    ClientOptions() {}
    // For https. Null: a process-wide context on the system CA store, built on first use off
    // the event loop (through run_blocking).
    std::shared_ptr<boost::asio::ssl::context> tls;
    std::size_t max_body = 64 * 1024;
    std::string user_agent = "guardia";
};

// POSTs `body` to `url` with `headers` (Host, Content-Length, Connection and User-Agent are
// set here and must not be passed) and returns the answer whatever its status: a 500 is a
// value. Everything must be done within `timeout`.
// Errors: errc::invalid_argument (bad URL, header or timeout), errc::connect_failed
// (unresolvable, refused), errc::handshake_failed (TLS: untrusted or mismatched certificate,
// protocol), errc::timeout, errc::connection_lost (closed or reset before a full answer),
// Beast's http::error codes for malformed answers, errc::cancelled.
boost::asio::awaitable<Result<ClientResponse>> http_post(std::string url, std::string body,
                                                         HeaderList headers,
                                                         std::chrono::milliseconds timeout,
                                                         ClientOptions options = ClientOptions());

}  // namespace guardia::http
