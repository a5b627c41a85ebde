// The embedded HTTP/1.1 server behind `guardia serve` (issue 6, hardened in issue 12):
// connections, limits, TLS and graceful shutdown. What a request means is the handler's
// business; the server owns what a handler should never see: malformed or oversized requests,
// slow clients, too many connections, unauthenticated floods, a handler that throws.
//
// Everything runs on the caller's executor (one single-threaded io_context): no thread, no
// blocking call. Every wait on a client has a deadline:
//   - a new connection must deliver the head of its first request whole (TLS handshake
//     included) within min(read_timeout, first_head_timeout) of being accepted, and the whole
//     first request within read_timeout;
//   - between requests a kept-alive connection may stay silent for idle_timeout; once the first
//     byte of the next request arrives, the whole request must follow within read_timeout;
//   - writing an answer is bounded by write_timeout.
// A request that started but did not finish in time is answered 408; a connection that said
// nothing is closed without an answer. While the handler runs no read deadline applies: a long
// poll may take as long as it needs.
//
// Admission. Once a head is parsed and within the header limit, `admit` (if set) sees it before
// any body byte is read and before "100-continue" is sent: it authenticates (the service
// answers 401 for an unknown token on /api/*). A refused head is answered and the connection
// closed; the body is never read.
//
// Connection slots. At most max_connections connections hold a slot, and at most
// max_connections_per_address of them come from one client address (beyond: 503 and close).
// Unauthenticated clients must not starve authenticated ones, so when every slot is taken a
// new connection EVICTS one instead of being refused: the oldest connection whose current
// request has not been admitted (still in the TLS handshake, silent, or sending a head) and
// that never had a request admitted; failing that, the oldest such connection that had (an
// idle keep-alive connection, which HTTP allows a server to close at any time). A connection
// whose request was admitted (its body being read, its handler running, its answer being
// written) is never evicted; only when every slot holds one is the new connection answered 503.
// An attacker can thus hold at most the slots that no one else needs, and only until the next
// connection arrives; each of its connections is also bounded by the first-head deadline.
//
// Errors the server produces itself are JSON bodies {"error": code, "message": text}:
//   400 bad_request          malformed request line or headers
//   408 request_timeout      a request began but did not arrive whole within its deadline
//   413 payload_too_large    body over the limit (with Content-Length: before reading it)
//   431 headers_too_large    header block over max_header_bytes
//   500 internal_error       the handler (or body_limit_for, admit) threw (details only in the log)
//   503 too_many_connections every slot holds an admitted request, or the client address
//                            already has max_connections_per_address connections
// After 400, 408, 413, 431, 503 and an admit refusal the connection is closed (after a short
// drain, so that the answer is not lost to a TCP reset); so it is after a handler's 401, 413 or
// 431. After a handler's 500 keep-alive continues. "Expect: 100-continue" is answered once the
// head passed the limits and admission; for HEAD the handler's answer goes out without its body.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/http/api_util.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http/parser.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace spdlog {
class logger;
}

namespace guardia::http {

// User-declared constructors on purpose: GCC 12 miscompiles a braced aggregate temporary
// passed by value to a coroutine (see ssh/session.hpp).
struct TlsFiles {
    TlsFiles() {}
    std::string cert_file;  // PEM: the certificate, then any intermediates
    std::string key_file;   // PEM: its private key
};

struct ServerOptions {
    ServerOptions() {}
    std::string address = "127.0.0.1";        // numeric IPv4 or IPv6 address; no name resolution
    unsigned short port = 0;                  // 0: the kernel picks; read local_endpoint()
    std::size_t max_body_bytes = 1 << 20;     // default body limit -> 413
    std::size_t max_header_bytes = 16 << 10;  // request line + headers -> 431
    std::size_t max_connections = 128;        // beyond: evict an unadmitted one, or 503
    std::size_t max_connections_per_address = 0;  // 0: no cap; beyond: 503, close
    std::chrono::milliseconds read_timeout{30000};   // a whole request (slowloris) -> 408/close
    std::chrono::milliseconds idle_timeout{60000};   // kept-alive, between requests -> close
    // The head of a connection's first request (TLS handshake included), capped by
    // read_timeout: a client that has not authenticated gets little time to hold a slot.
    std::chrono::milliseconds first_head_timeout{10000};
    std::chrono::milliseconds write_timeout{30000};  // writing one answer -> close
    std::optional<TlsFiles> tls;  // set: HTTPS only (TLS 1.2+), cert/key loaded in listen()
    // Optional per-request body limit, decided from the request head (method + target), e.g.
    // a larger limit for artifact uploads. Returns 0 to use max_body_bytes. If it throws, the
    // request is answered 500.
    std::function<std::size_t(const Request& head)> body_limit_for;
    // Optional admission of a request from its head alone (before any body byte is read and
    // before "100-continue"): nullopt admits; a Response is written as it is (Connection: close)
    // and the connection closed. If it throws, the request is answered 500 and closed.
    std::function<std::optional<Response>(const Request& head)> admit;
    std::shared_ptr<spdlog::logger> logger;  // null: spdlog default; never sees bodies or queries
};

// The handler receives a complete request (body read within the limits). It may co_await for
// as long as it needs (long polls such as ?wait=true): no read timeout applies while it runs.
// It must not throw for bad input (return a 4xx); if it throws anyway the server answers 500
// with a JSON error, logs it, and keeps serving. When shutdown's grace period is over, the
// handler is cancelled (Asio terminal cancellation) and must then return promptly.
using Handler = std::function<boost::asio::awaitable<Response>(Request)>;

// A streamed answer (Server-Sent Events and the like): the server writes `head` (status and
// fields as the handler set them; the server adds Connection: close and drops any
// Content-Length), then each chunk `next()` yields, as it comes, until it yields nullopt.
// The body is close-delimited (HTTP/1.0 style, legal in HTTP/1.1): a stream never carries a
// second request, every client handles it, and no chunk framing is needed. Each write is
// bounded by write_timeout. The server stops the stream (cancelling a pending next(), Asio
// terminal cancellation: it must then return promptly) when the peer closes or sends anything
// (a read pending on the socket completes) or when shutdown() begins: streams are closed at
// the start of shutdown, not held until the grace ends. A stream holds its connection slot.
using StreamProducer = std::function<boost::asio::awaitable<std::optional<std::string>>()>;
struct Reply {
    Reply() {}
    Reply(Response r) : head(std::move(r)) {}  // NOLINT: a plain answer converts implicitly
    Reply(Response r, StreamProducer p) : head(std::move(r)), stream(std::move(p)) {}
    Response head;          // a plain answer, or the head of a stream
    StreamProducer stream;  // set: a streamed answer
};
// A handler that may answer with a stream.
using StreamingHandler = std::function<boost::asio::awaitable<Reply>(Request)>;

// How the server sets up the parser of each request before reading its head: header limit
// max_header_bytes (clamped to 32 bits; over it -> 431), no body limit until the head is known
// (then body_limit_for or max_body_bytes). Exposed for the fuzz target of the request head
// (test/fuzz/fuzz_http_request.cpp), which must parse with exactly the server's settings.
void prepare_request_parser(beast_http::request_parser<beast_http::string_body>& parser,
                            const ServerOptions& options);
// Whether a head the parser accepted is still over max_header_bytes (answered 431). Beast 1.81
// applies header_limit to the request line and to the header fields separately, so a head of
// up to twice the limit parses; the server checks the whole head (`head_bytes`, as consumed by
// the parser) once read. Found by test/fuzz/fuzz_http_request.cpp.
bool head_too_large(std::size_t head_bytes, const ServerOptions& options);

// One listening socket and the connections accepted on it. Single-threaded: every member
// function must be called on the executor's thread. Destroy the Server before its io_context;
// destroying it closes the listening socket and every connection at once (no goodbye: use
// shutdown() for that).
class Server {
  public:
    // Throws std::invalid_argument for an empty handler (a programming error).
    Server(boost::asio::any_io_executor executor, ServerOptions options, Handler handler);
    Server(boost::asio::any_io_executor executor, ServerOptions options, StreamingHandler handler);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Binds and listens (and loads the TLS cert/key). Errors: errc::invalid_argument for an
    // unusable address or a second call, the system's code ("address already in use") naming
    // address:port, errc::local_io_failed naming the certificate or key file.
    Result<void> listen();
    boost::asio::ip::tcp::endpoint local_endpoint() const;
    bool uses_tls() const;
    // Spawns the accept loop on the executor. Calling it before a successful listen() is a
    // programming error (std::logic_error); a second call does nothing.
    void start();
    // Graceful stop: stop accepting at once; idle keep-alive connections (and those still in
    // the TLS handshake) are closed; requests being read, or whose handler is running, get to
    // finish and are answered (with Connection: close), up to `grace`, after which remaining
    // connections are closed and running handlers cancelled. Completes when all are gone.
    // May be called before start(), and more than once.
    boost::asio::awaitable<void> shutdown(std::chrono::milliseconds grace);

    std::size_t open_connections() const;   // not counting connections being turned away (503)
    std::uint64_t requests_served() const;  // answers from the handler, written in full
    // 4xx/5xx the server itself produced (limits, malformed, timeouts, 503, handler threw),
    // plus connections closed unanswered because too many were already being turned away.
    std::uint64_t requests_rejected() const;
    // Connections closed to make room for a new one (see "Connection slots" above).
    std::uint64_t connections_evicted() const;
    std::size_t open_streams() const;  // streamed answers in progress

    struct Impl;  // in server.cpp; shared with the connection coroutines, which may outlive us

  private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace guardia::http
