#include "guardia/http/server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/json/object.hpp>

#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <exception>
#include <limits>
#include <list>
#include <map>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace guardia::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace ssl = boost::asio::ssl;
using asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

using PlainStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;
template <class Stream>
constexpr bool is_tls = std::is_same_v<Stream, TlsStream>;

// After an answer that closes the connection, what the client still sends is read and
// dropped for this long (at most), so that closing does not reset the connection under an
// answer the client has not read yet. Capped by read_timeout.
constexpr milliseconds max_linger{1000};
constexpr std::size_t max_drain_bytes = 1 << 20;
// Connections being turned away with a 503 at the same time; beyond, they are closed
// without a word (a flood must not buy itself work).
constexpr std::size_t max_turning_away = 16;
// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
constexpr milliseconds accept_backoff{100};
constexpr std::size_t first_read_size = 4096;

std::string format_endpoint(const tcp::endpoint& ep) {
    const auto a = ep.address();
    return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" +
           std::to_string(ep.port());
}

// The path of a target for logs: queries may carry tokens.
std::string_view path_only(std::string_view target) {
    return target.substr(0, target.find('?'));
}

bool is_cancellation(std::exception_ptr e) {
    try {
        std::rethrow_exception(e);
    } catch (const boost::system::system_error& s) {
        return s.code() == asio::error::operation_aborted;
    } catch (...) {
        return false;
    }
}

std::string describe(std::exception_ptr e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return x.what();
    } catch (...) {
        return "unknown exception";
    }
}

}  // namespace

// ------------------------------------------------------------------ shared state

namespace {

// One accepted connection, as the server sees it from outside its coroutine.
struct ConnState {
    ConnState() {}
    enum class Phase {
        starting,  // accepted, coroutine not yet running or in the TLS handshake
        idle,      // waiting for the first byte of a request
        reading,   // a request has begun, its head not yet admitted
        body,      // its head was admitted; reading the body
        handling,  // the handler runs
        writing,   // the answer is being written
        closing,   // answered with Connection: close, draining
        streaming,  // a streamed answer is being written
    };
    Phase phase = Phase::starting;
    beast::tcp_stream* tcp = nullptr;  // the coroutine's lowest layer; null outside it
    asio::cancellation_signal cancel;  // bound to the coroutine: shutdown's last resort
    std::string peer;                  // "address:port", for logs
    asio::ip::address address;         // the client's, counted in Impl::per_address
    bool counted = false;              // holds one count of per_address[address]
    bool ever_admitted = false;        // a request of this connection was admitted
    bool evicted = false;              // closed to make room; the slot is already reused

    // May be closed to make room for a new connection: nothing admitted is in progress.
    bool evictable() const {
        return !evicted && (phase == Phase::starting || phase == Phase::idle ||
                            phase == Phase::reading || phase == Phase::closing);
    }
};
using ConnList = std::list<ConnState>;

}  // namespace

struct Server::Impl {
    Impl(asio::any_io_executor ex, ServerOptions o, StreamingHandler h)
        : executor(std::move(ex)),
          options(std::move(o)),
          handler(std::move(h)),
          log(options.logger ? options.logger : spdlog::default_logger()),
          acceptor(executor) {}

    bool all_gone() const { return !accepting && sessions.empty() && turning_away.empty(); }
    // Connections holding a slot (evicted ones are on their way out).
    std::size_t live() const { return sessions.size() - evicting; }
    milliseconds first_head_timeout() const {
        return std::min(options.read_timeout, options.first_head_timeout);
    }
    // A connection or the accept loop ended: wake every shutdown() waiting for that.
    void notify() {
        for (auto* t : waiters) t->cancel();
    }
    milliseconds linger() const { return std::min(options.read_timeout, max_linger); }

    asio::any_io_executor executor;
    ServerOptions options;
    StreamingHandler handler;
    std::shared_ptr<spdlog::logger> log;
    tcp::acceptor acceptor;
    std::optional<ssl::context> tls;
    tcp::endpoint endpoint;
    bool listening = false;
    bool started = false;
    bool accepting = false;                    // the accept loop is running
    bool stopping = false;                     // shutdown began (or the Server is gone)
    ConnList sessions;                         // counted in open_connections()
    ConnList turning_away;                     // being answered 503
    std::vector<asio::steady_timer*> waiters;  // one per running shutdown()
    std::uint64_t served = 0;
    std::uint64_t rejected = 0;
    std::uint64_t evicted = 0;
    std::size_t streams = 0;                            // connections in Phase::streaming
    std::size_t evicting = 0;                           // sessions marked evicted, not yet gone
    std::map<asio::ip::address, std::size_t> per_address;  // sessions per client address
};

namespace {

using Impl = Server::Impl;

// Points the connection's entry at its stream while the coroutine holds it, so that shutdown
// can close it; the entry never points at a dead stream, even if the coroutine frame is
// destroyed without completing (io_context destroyed first).
class Registration {
  public:
    Registration(ConnState& c, beast::tcp_stream& tcp) : c_(c) { c_.tcp = &tcp; }
    ~Registration() { c_.tcp = nullptr; }
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;

  private:
    ConnState& c_;
};

// An answer the server gives on its own, after which it closes the connection.
struct Refusal {
    Refusal() {}
    Refusal(beast_http::status s, std::string c, std::string m)
        : status(s), code(std::move(c)), message(std::move(m)) {}
    beast_http::status status = beast_http::status::bad_request;
    std::string code;
    std::string message;
};

Response make_refusal(unsigned version, const Refusal& r) {
    Request shape;
    shape.version(version == 10 ? 10 : 11);
    shape.keep_alive(false);
    return error_response(shape, r.status, r.code, r.message);
}

template <class Stream>
asio::awaitable<error_code> write_answer(Stream& stream, Response& res, milliseconds timeout) {
    auto& tcp = beast::get_lowest_layer(stream);
    tcp.expires_after(timeout);
    auto [ec, n] = co_await beast_http::async_write(stream, res, tuple_awaitable);
    (void)n;
    tcp.expires_never();
    co_return ec;
}

// Ends a connection after an answer that said Connection: close. TLS: close_notify and wait
// for the peer's. TCP: half-close, then read and drop what the client still sends (it may be
// the rest of a body we refused) until it closes too, or the linger time is over.
template <class Stream>
asio::awaitable<void> close_gracefully(Impl& impl, ConnState& conn, Stream& stream) {
    conn.phase = ConnState::Phase::closing;
    auto& tcp = beast::get_lowest_layer(stream);
    tcp.expires_after(impl.linger());
    if constexpr (is_tls<Stream>) {
        auto [ec] = co_await stream.async_shutdown(tuple_awaitable);
        (void)ec;  // a peer that just closes is no error worth a line
    } else {
        error_code ec;
        tcp.socket().shutdown(tcp::socket::shutdown_send, ec);
        std::array<char, 4096> scratch;
        std::size_t drained = 0;
        while (!ec && drained < max_drain_bytes) {
            auto [e, n] = co_await tcp.async_read_some(asio::buffer(scratch), tuple_awaitable);
            ec = e;
            drained += n;
        }
    }
    tcp.close();
}

template <class Stream>
asio::awaitable<void> refuse(Impl& impl, ConnState& conn, Stream& stream, unsigned version,
                             Refusal refusal) {
    impl.log->debug("http: {} {} to {}: {}", static_cast<unsigned>(refusal.status), refusal.code,
                    conn.peer, refusal.message);
    ++impl.rejected;
    conn.phase = ConnState::Phase::writing;
    Response res = make_refusal(version, refusal);
    if (auto ec = co_await write_answer(stream, res, impl.options.write_timeout)) {
        impl.log->debug("http: writing the {} to {} failed: {}",
                        static_cast<unsigned>(refusal.status), conn.peer, ec.message());
        co_return;
    }
    co_await close_gracefully(impl, conn, stream);
}

// A read racing a timer set to `deadline`. timed_out: the timer fired first and the read was
// cancelled (not closed: the connection can still carry a 408).
struct TimedRead {
    TimedRead() {}
    error_code ec;
    std::size_t bytes = 0;  // consumed by the parser
    bool timed_out = false;
};

template <class Op>
asio::awaitable<TimedRead> read_before(Op op, asio::steady_timer& timer,
                                       Clock::time_point deadline) {
    using asio::experimental::make_parallel_group;
    using asio::experimental::wait_for_one;
    timer.expires_at(deadline);
    auto [order, e_read, n, e_timer] =
        co_await make_parallel_group(std::move(op), timer.async_wait(asio::deferred))
            .async_wait(wait_for_one(), asio::use_awaitable);
    TimedRead out;
    out.ec = e_read;
    out.bytes = n;
    // The read may have completed in the same turn as the timer: then it counts.
    out.timed_out = e_read && order[0] == 1 && !e_timer;
    co_return out;
}

// Calls one of the options' hooks (admit, body_limit_for) on a request head. A hook that throws
// is logged, naming it and the request, and gives nullopt: the request is answered 500.
template <class Fn>
std::optional<std::invoke_result_t<Fn&>> call_hook(const Impl& impl, const char* hook,
                                                   const Request& head, const std::string& peer,
                                                   Fn fn) {
    std::string why;
    try {
        return fn();
    } catch (const std::exception& e) {
        why = e.what();
    } catch (...) {
        why = "unknown exception";
    }
    impl.log->error("http: {} threw for {} {} from {}: {}", hook,
                    std::string(head.method_string()), std::string(path_only(head.target())), peer,
                    why);
    return std::nullopt;
}

// Why reading a request failed, as an answer; nullopt when there is nobody to answer (the
// client left, or shutdown closed the socket).
std::optional<Refusal> refusal_for(const Impl& impl, const TimedRead& r, std::size_t body_limit,
                                   milliseconds allowed) {
    using beast_http::status;
    if (r.timed_out)
        return Refusal(status::request_timeout, "request_timeout",
                       "the request did not arrive whole within " +
                           std::to_string(allowed.count()) + " ms");
    if (r.ec == beast_http::error::header_limit || r.ec == beast_http::error::buffer_overflow)
        return Refusal(status::request_header_fields_too_large, "headers_too_large",
                       "the request line and headers exceed " +
                           std::to_string(impl.options.max_header_bytes) + " bytes");
    if (r.ec == beast_http::error::body_limit)
        return Refusal(status::payload_too_large, "payload_too_large",
                       "the request body exceeds " + std::to_string(body_limit) + " bytes");
    if (r.ec == beast_http::error::end_of_stream || r.ec == beast_http::error::partial_message)
        return std::nullopt;
    if (r.ec.category() == beast_http::make_error_code(beast_http::error::bad_method).category())
        return Refusal(status::bad_request, "bad_request", "malformed request: " + r.ec.message());
    return std::nullopt;  // network errors: reset, closed by shutdown, ...
}

// Counts a connection as streaming while it lives.
class StreamingPhase {
  public:
    StreamingPhase(Impl& impl, ConnState& c) : impl_(impl) {
        c.phase = ConnState::Phase::streaming;
        ++impl_.streams;
    }
    ~StreamingPhase() { --impl_.streams; }
    StreamingPhase(const StreamingPhase&) = delete;
    StreamingPhase& operator=(const StreamingPhase&) = delete;

  private:
    Impl& impl_;
};

// Writes a streamed answer (see Reply in server.hpp): the head, then each chunk of the
// producer, until it ends, the peer closes (or sends anything), or shutdown closes the socket.
template <class Stream>
asio::awaitable<void> stream_answer(Impl& impl, ConnState& conn, Stream& stream, Response& head,
                                    StreamProducer producer, bool is_head,
                                    const std::string& what) {
    using asio::experimental::make_parallel_group;
    using asio::experimental::wait_for_one;
    const ServerOptions& o = impl.options;
    auto& tcp = beast::get_lowest_layer(stream);
    StreamingPhase streaming(impl, conn);
    beast_http::response<beast_http::empty_body> h(head.base());
    h.erase(beast_http::field::content_length);
    h.erase(beast_http::field::transfer_encoding);
    h.keep_alive(false);
    beast_http::response_serializer<beast_http::empty_body> sr(h);
    tcp.expires_after(o.write_timeout);
    auto [ec, n] = co_await beast_http::async_write_header(stream, sr, tuple_awaitable);
    (void)n;
    tcp.expires_never();
    if (ec) co_return;
    ++impl.served;
    impl.log->debug("http: {} from {}: {} (stream)", what, conn.peer, head.result_int());
    std::array<char, 512> sink;
    while (!is_head && !impl.stopping) {
        // The raw socket's read: the peer's close (or any byte: a stream carries no request)
        // ends the stream. Reading below TLS is fine: nothing is read from this stream again.
        auto [order, e_next, chunk, e_read, n_read] =
            co_await make_parallel_group(
                asio::co_spawn(co_await asio::this_coro::executor, producer(), asio::deferred),
                tcp.socket().async_read_some(asio::buffer(sink), asio::deferred))
                .async_wait(wait_for_one(), asio::use_awaitable);
        (void)n_read;
        if (order[0] == 1 || e_next || !chunk) {
            if (e_next && !is_cancellation(e_next))
                impl.log->error("http: stream of {} to {} failed: {}", what, conn.peer,
                                describe(e_next));
            break;
        }
        (void)e_read;
        tcp.expires_after(o.write_timeout);
        auto [ew, nw] = co_await asio::async_write(stream, asio::buffer(*chunk), tuple_awaitable);
        (void)nw;
        tcp.expires_never();
        if (ew) {
            impl.log->debug("http: stream of {} to {} ended: {}", what, conn.peer, ew.message());
            co_return;
        }
    }
    if (tcp.socket().is_open()) co_await close_gracefully(impl, conn, stream);
}

// The requests of one connection, one at a time, until either side closes.
template <class Stream>
asio::awaitable<void> serve_requests(Impl& impl, ConnState& conn, Stream& stream,
                                     Clock::time_point accepted) {
    using Phase = ConnState::Phase;
    const ServerOptions& o = impl.options;
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    auto& tcp = beast::get_lowest_layer(stream);
    asio::steady_timer timer(co_await asio::this_coro::executor);
    beast::flat_buffer buffer;
    bool first = true;
    for (;;) {
        if (impl.stopping) {
            co_await close_gracefully(impl, conn, stream);
            co_return;
        }
        // Wait for the first byte under the idle deadline (the first request: from accept).
        // Silence is no request: on timeout or EOF the connection just ends.
        if (buffer.size() == 0) {
            conn.phase = Phase::idle;
            if (first)
                tcp.expires_at(accepted + impl.first_head_timeout());
            else
                tcp.expires_after(o.idle_timeout);
            auto [ec, n] =
                co_await stream.async_read_some(buffer.prepare(first_read_size), tuple_awaitable);
            tcp.expires_never();
            if (ec) {
                if (ec == beast::error::timeout)
                    impl.log->debug("http: {} idle for too long, closed", conn.peer);
                if constexpr (is_tls<Stream>) {
                    // The peer's close_notify: answer with ours (immediate, nothing to wait for).
                    if (ec == asio::error::eof) {
                        tcp.expires_after(impl.linger());
                        auto [e] = co_await stream.async_shutdown(tuple_awaitable);
                        (void)e;
                    }
                }
                co_return;
            }
            buffer.commit(n);
        }
        conn.phase = Phase::reading;
        const auto deadline = first ? accepted + o.read_timeout : Clock::now() + o.read_timeout;
        // A connection that never had a request admitted gets little time for its head.
        const milliseconds head_allowed =
            conn.ever_admitted ? o.read_timeout : impl.first_head_timeout();
        const auto head_deadline =
            conn.ever_admitted ? deadline : std::min(deadline, accepted + head_allowed);
        first = false;

        beast_http::request_parser<beast_http::string_body> parser;
        prepare_request_parser(parser, o);
        auto head_read = co_await read_before(
            beast_http::async_read_header(stream, buffer, parser, asio::deferred), timer,
            head_deadline);
        if (head_read.ec) {
            if (auto r = refusal_for(impl, head_read, o.max_body_bytes, head_allowed))
                co_await refuse(impl, conn, stream, 11, std::move(*r));
            co_return;
        }
        const auto& head = parser.get();
        const unsigned version = head.version();
        if (head_too_large(head_read.bytes, o)) {
            co_await refuse(impl, conn, stream, version,
                            Refusal(beast_http::status::request_header_fields_too_large,
                                    "headers_too_large",
                                    "the request line and headers exceed " +
                                        std::to_string(o.max_header_bytes) + " bytes"));
            co_return;
        }

        // Admission (authentication) from the head alone: no body byte read, no 100-continue.
        std::optional<Response> refused;
        bool admit_failed = false;
        if (o.admit) {
            auto r = call_hook(impl, "admit", head, conn.peer, [&] { return o.admit(head); });
            admit_failed = !r;
            if (r) refused = std::move(*r);
        }
        if (admit_failed) {
            co_await refuse(impl, conn, stream, version,
                            Refusal(beast_http::status::internal_server_error, "internal_error",
                                    "internal error; see the server log"));
            co_return;
        }
        if (refused) {
            impl.log->debug("http: {} {} from {} not admitted: {}",
                            std::string(head.method_string()),
                            std::string(path_only(head.target())), conn.peer,
                            refused->result_int());
            ++impl.rejected;
            conn.phase = Phase::writing;
            refused->version(version == 10 ? 10 : 11);
            refused->keep_alive(false);
            refused->prepare_payload();
            if (head.method() == beast_http::verb::head) refused->body().clear();
            if (auto ec = co_await write_answer(stream, *refused, o.write_timeout)) co_return;
            co_await close_gracefully(impl, conn, stream);
            co_return;
        }
        conn.ever_admitted = true;
        conn.phase = Phase::body;

        std::size_t limit = o.max_body_bytes;
        bool limit_failed = false;
        if (o.body_limit_for) {
            auto l = call_hook(impl, "body_limit_for", head, conn.peer,
                               [&] { return o.body_limit_for(head); });
            limit_failed = !l;
            if (l && *l) limit = *l;
        }
        if (limit_failed) {
            co_await refuse(impl, conn, stream, version,
                            Refusal(beast_http::status::internal_server_error, "internal_error",
                                    "internal error; see the server log"));
            co_return;
        }
        if (const auto length = parser.content_length(); length && *length > limit) {
            // Known in advance: answer now, the body is never read.
            co_await refuse(
                impl, conn, stream, version,
                Refusal(beast_http::status::payload_too_large, "payload_too_large",
                        "the request body of " + std::to_string(*length) +
                            " bytes exceeds the limit of " + std::to_string(limit) + " bytes"));
            co_return;
        }
        parser.body_limit(limit);
        if (!parser.is_done()) {
            if (version == 11 && beast::iequals(head[beast_http::field::expect], "100-continue")) {
                beast_http::response<beast_http::empty_body> go_on{beast_http::status::continue_,
                                                                   11};
                tcp.expires_after(o.write_timeout);
                auto [ec, n] = co_await beast_http::async_write(stream, go_on, tuple_awaitable);
                (void)n;
                tcp.expires_never();
                if (ec) co_return;
            }
            auto body_read = co_await read_before(
                beast_http::async_read(stream, buffer, parser, asio::deferred), timer, deadline);
            if (body_read.ec) {
                if (auto r = refusal_for(impl, body_read, limit, o.read_timeout))
                    co_await refuse(impl, conn, stream, version, std::move(*r));
                co_return;
            }
        }

        conn.phase = Phase::handling;
        Request req = parser.release();
        const bool client_keeps_alive = req.keep_alive();
        const bool is_head = req.method() == beast_http::verb::head;
        const std::string what =
            std::string(req.method_string()) + " " + std::string(path_only(req.target()));
        std::optional<Response> res;
        StreamProducer producer;
        std::string failure;
        try {
            Reply reply = co_await impl.handler(std::move(req));
            res = std::move(reply.head);
            producer = std::move(reply.stream);
        } catch (const std::exception& e) {
            failure = e.what();
        } catch (...) {
            failure = "unknown exception";
        }
        // Shutdown's grace is over: the connection is being closed under us.
        if (cs.cancelled() != asio::cancellation_type::none) co_return;
        const bool threw = !res.has_value();
        if (!threw && producer) {
            co_await stream_answer(impl, conn, stream, *res, std::move(producer), is_head, what);
            co_return;
        }
        if (threw) {
            impl.log->error("http: handler failed on {} from {}: {}", what, conn.peer, failure);
            Request shape;
            shape.version(version);
            shape.keep_alive(client_keeps_alive);
            res = error_response(shape, beast_http::status::internal_server_error, "internal_error",
                                 "internal error; see the server log");
        }
        // Refusals of who or what the client is end the connection, as the server's own do.
        const unsigned status_code = res->result_int();
        const bool refusal = status_code == 401 || status_code == 413 || status_code == 431;
        const bool keep = client_keeps_alive && res->keep_alive() && !impl.stopping && !refusal;
        res->keep_alive(keep);
        if (is_head) {
            // The length a GET would have, and no body: Beast writes whatever the body holds.
            if (!res->has_content_length()) res->prepare_payload();
            res->body().clear();
        } else {
            res->prepare_payload();
        }

        conn.phase = Phase::writing;
        if (auto ec = co_await write_answer(stream, *res, o.write_timeout)) {
            impl.log->debug("http: writing the answer to {} from {} failed: {}", what, conn.peer,
                            ec.message());
            co_return;
        }
        if (threw)
            ++impl.rejected;
        else
            ++impl.served;
        impl.log->debug("http: {} from {}: {}", what, conn.peer, res->result_int());
        if (!keep) {
            co_await close_gracefully(impl, conn, stream);
            co_return;
        }
    }
}

template <class Stream>
asio::awaitable<void> serve(Impl& impl, ConnState& conn, Stream& stream, Clock::time_point accepted,
                            const std::optional<Refusal>& turn_away) {
    if (turn_away) {
        co_await refuse(impl, conn, stream, 11, *turn_away);
    } else {
        co_await serve_requests(impl, conn, stream, accepted);
    }
}

asio::awaitable<void> run_connection(std::shared_ptr<Impl> impl, ConnList::iterator it,
                                     tcp::socket socket, Clock::time_point accepted,
                                     std::optional<Refusal> turn_away) {
    ConnState& conn = *it;
    // shutdown began, or the connection was evicted, before this coroutine ran
    if (impl->stopping || conn.evicted) co_return;
    if (impl->tls) {
        TlsStream stream(std::move(socket), *impl->tls);
        Registration registered(conn, beast::get_lowest_layer(stream));
        beast::get_lowest_layer(stream).expires_at(accepted + impl->first_head_timeout());
        auto [e] = co_await stream.async_handshake(ssl::stream_base::server, tuple_awaitable);
        beast::get_lowest_layer(stream).expires_never();
        if (e) {
            impl->log->debug("http: TLS handshake with {} failed: {}", conn.peer, e.message());
            co_return;
        }
        co_await serve(*impl, conn, stream, accepted, turn_away);
    } else {
        PlainStream stream(std::move(socket));
        Registration registered(conn, stream);
        co_await serve(*impl, conn, stream, accepted, turn_away);
    }
}

// Every connection coroutine is owned: listed in `list`, cancellable through its entry, and
// removed from the list when it ends (which wakes shutdown()).
void spawn_connection(const std::shared_ptr<Impl>& impl, ConnList& list, tcp::socket socket,
                      const tcp::endpoint& peer, std::optional<Refusal> turn_away) {
    auto it = list.emplace(list.end());
    it->peer = format_endpoint(peer);
    it->address = peer.address();
    if (!turn_away) {
        ++impl->per_address[it->address];
        it->counted = true;
    }
    asio::co_spawn(
        impl->executor,
        run_connection(impl, it, std::move(socket), Clock::now(), std::move(turn_away)),
        asio::bind_cancellation_slot(it->cancel.slot(), [impl, &list, it](std::exception_ptr e) {
            if (e && is_cancellation(e))
                impl->log->debug("http: connection {} cancelled", it->peer);
            else if (e)
                impl->log->error("http: connection {} ended by an exception: {}", it->peer,
                                 describe(e));
            if (it->counted) {
                auto a = impl->per_address.find(it->address);
                if (a != impl->per_address.end() && --a->second == 0) impl->per_address.erase(a);
            }
            if (it->evicted) --impl->evicting;
            list.erase(it);
            impl->notify();
        }));
}

// Makes room for a new connection when every slot is taken (see server.hpp): closes the oldest
// connection that never had a request admitted, else the oldest other evictable one. False if
// every slot holds an admitted request.
bool evict_one(Impl& impl) {
    ConnState* victim = nullptr;
    for (ConnState& c : impl.sessions) {
        if (!c.evictable()) continue;
        if (!c.ever_admitted) {
            victim = &c;
            break;
        }
        if (!victim) victim = &c;
    }
    if (!victim) return false;
    victim->evicted = true;
    ++impl.evicting;
    ++impl.evicted;
    impl.log->debug("http: at {} connections: closing {} ({}) to make room",
                    impl.options.max_connections, victim->peer,
                    victim->ever_admitted ? "idle" : "never admitted");
    if (victim->tcp) victim->tcp->close();  // else its coroutine has not run: it ends at once
    return true;
}

asio::awaitable<void> accept_loop(std::shared_ptr<Impl> impl) {
    asio::steady_timer backoff(impl->executor);
    for (;;) {
        auto [ec, socket] = co_await impl->acceptor.async_accept(tuple_awaitable);
        if (impl->stopping || !impl->acceptor.is_open()) co_return;
        if (ec) {
            impl->log->warn("http: accept on {} failed: {}; retrying in {} ms",
                            format_endpoint(impl->endpoint), ec.message(), accept_backoff.count());
            backoff.expires_after(accept_backoff);
            co_await backoff.async_wait(tuple_awaitable);
            continue;
        }
        error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);  // small answers, sent at once
        const tcp::endpoint peer = socket.remote_endpoint(ignored);
        const ServerOptions& o = impl->options;
        std::optional<Refusal> refusal;
        if (const auto a = impl->per_address.find(peer.address());
            o.max_connections_per_address > 0 && a != impl->per_address.end() &&
            a->second >= o.max_connections_per_address) {
            refusal = Refusal(beast_http::status::service_unavailable, "too_many_connections",
                              "too many connections from " + peer.address().to_string() +
                                  " (at most " + std::to_string(o.max_connections_per_address) +
                                  " per client address); retry later");
        } else if (impl->live() >= o.max_connections && !evict_one(*impl)) {
            refusal = Refusal(beast_http::status::service_unavailable, "too_many_connections",
                              "the server already has " + std::to_string(o.max_connections) +
                                  " connections busy with requests; retry later");
        }
        if (!refusal) {
            spawn_connection(impl, impl->sessions, std::move(socket), peer, std::nullopt);
        } else if (impl->turning_away.size() < max_turning_away) {
            spawn_connection(impl, impl->turning_away, std::move(socket), peer, std::move(refusal));
        } else {
            impl->log->debug("http: too many connections, closing one without an answer");
            ++impl->rejected;
        }
    }
}

void close_all(Impl& impl) {
    for (ConnList* list : {&impl.sessions, &impl.turning_away}) {
        for (ConnState& c : *list) {
            c.cancel.emit(asio::cancellation_type::terminal);
            if (c.tcp) c.tcp->close();
        }
    }
}

// Registers a shutdown() timer for Impl::notify while it waits.
class Waiter {
  public:
    Waiter(Impl& impl, asio::steady_timer& t) : impl_(impl), t_(t) { impl_.waiters.push_back(&t_); }
    ~Waiter() { std::erase(impl_.waiters, &t_); }
    Waiter(const Waiter&) = delete;
    Waiter& operator=(const Waiter&) = delete;

  private:
    Impl& impl_;
    asio::steady_timer& t_;
};

Result<void> load_tls(ssl::context& ctx, const TlsFiles& files) {
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                    ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    if (SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION) != 1)
        return Error(errc::invalid_argument, "cannot require TLS 1.2 or later");
    error_code ec;
    ctx.use_certificate_chain_file(files.cert_file, ec);
    if (ec)
        return Error(errc::local_io_failed,
                     "cannot load the TLS certificate '" + files.cert_file + "': " + ec.message());
    ctx.use_private_key_file(files.key_file, ssl::context::pem, ec);
    if (ec)
        return Error(errc::local_io_failed,
                     "cannot load the TLS private key '" + files.key_file + "': " + ec.message());
    if (SSL_CTX_check_private_key(ctx.native_handle()) != 1)
        return Error(errc::invalid_argument, "the TLS private key '" + files.key_file +
                                                 "' does not match the certificate '" +
                                                 files.cert_file + "'");
    return {};
}

}  // namespace

// ------------------------------------------------------------------ Server

Server::Server(asio::any_io_executor executor, ServerOptions options, Handler handler) {
    if (!handler) throw std::invalid_argument("http::Server needs a handler");
    StreamingHandler wrapped = [h = std::move(handler)](Request req) -> asio::awaitable<Reply> {
        Response res = co_await h(std::move(req));
        co_return Reply(std::move(res));
    };
    impl_ = std::make_shared<Impl>(std::move(executor), std::move(options), std::move(wrapped));
}

Server::Server(asio::any_io_executor executor, ServerOptions options, StreamingHandler handler) {
    if (!handler) throw std::invalid_argument("http::Server needs a handler");
    impl_ = std::make_shared<Impl>(std::move(executor), std::move(options), std::move(handler));
}

Server::~Server() {
    // Connection coroutines hold the Impl and finish on their own once their sockets are
    // closed; nothing here waits or talks to a client.
    Impl& impl = *impl_;
    impl.stopping = true;
    error_code ec;
    impl.acceptor.close(ec);
    close_all(impl);
}

Result<void> Server::listen() {
    Impl& impl = *impl_;
    const ServerOptions& o = impl.options;
    if (impl.listening)
        return Error(errc::invalid_argument,
                     "the HTTP server already listens on " + format_endpoint(impl.endpoint));
    error_code ec;
    const auto address = asio::ip::make_address(o.address, ec);
    if (ec)
        return Error(errc::invalid_argument,
                     "cannot listen on '" + o.address + "': not a numeric IP address");
    const tcp::endpoint wanted(address, o.port);
    const std::string where = format_endpoint(wanted);
    if (o.tls) {
        ssl::context ctx(ssl::context::tls_server);
        if (auto r = load_tls(ctx, *o.tls); !r) return r.error();
        impl.tls.emplace(std::move(ctx));
    }
    auto fail = [&](const char* step) {
        error_code ignored;
        impl.acceptor.close(ignored);
        impl.tls.reset();
        return Error(ec, "cannot listen on " + where + " (" + step + "): " + ec.message());
    };
    impl.acceptor.open(wanted.protocol(), ec);
    if (ec) return fail("socket");
    impl.acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (ec) return fail("socket");
    impl.acceptor.bind(wanted, ec);
    if (ec) return fail("bind");
    impl.acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return fail("listen");
    impl.endpoint = impl.acceptor.local_endpoint(ec);
    if (ec) return fail("local address");
    impl.listening = true;
    impl.log->info("http: listening on {}://{}", impl.tls ? "https" : "http",
                   format_endpoint(impl.endpoint));
    return {};
}

tcp::endpoint Server::local_endpoint() const {
    return impl_->endpoint;
}

bool Server::uses_tls() const {
    return impl_->options.tls.has_value();
}

void Server::start() {
    Impl& impl = *impl_;
    if (!impl.listening)
        throw std::logic_error("http::Server::start() before a successful listen()");
    if (impl.started) return;
    impl.started = true;
    impl.accepting = true;
    asio::co_spawn(impl.executor, accept_loop(impl_), [impl = impl_](std::exception_ptr e) {
        if (e && !is_cancellation(e))
            impl->log->error("http: the accept loop ended by an exception: {}", describe(e));
        impl->accepting = false;
        impl->notify();
    });
}

asio::awaitable<void> Server::shutdown(milliseconds grace) {
    const std::shared_ptr<Impl> impl = impl_;
    const auto deadline = Clock::now() + grace;
    impl->stopping = true;
    error_code ec;
    impl->acceptor.close(ec);
    // Idle connections have nothing to finish. Those still in the TLS handshake have not
    // sent a request yet either.
    for (ConnList* list : {&impl->sessions, &impl->turning_away}) {
        for (ConnState& c : *list) {
            // Streams never finish on their own: they end now, not when the grace is over.
            const bool quiet = c.phase == ConnState::Phase::idle ||
                               c.phase == ConnState::Phase::starting ||
                               c.phase == ConnState::Phase::streaming;
            if (quiet && c.tcp) c.tcp->close();
        }
    }
    asio::steady_timer timer(impl->executor);
    Waiter waiting(*impl, timer);
    while (!impl->all_gone() && Clock::now() < deadline) {
        timer.expires_at(deadline);
        co_await timer.async_wait(tuple_awaitable);
    }
    if (!impl->all_gone()) {
        impl->log->info("http: shutdown grace of {} ms over, closing {} connection(s)",
                        grace.count(), impl->sessions.size() + impl->turning_away.size());
        close_all(*impl);
        while (!impl->all_gone()) {
            timer.expires_at(Clock::time_point::max());
            co_await timer.async_wait(tuple_awaitable);
        }
    }
    impl->log->info("http: stopped ({} requests served, {} rejected)", impl->served,
                    impl->rejected);
}

std::size_t Server::open_connections() const {
    return impl_->live();
}

std::uint64_t Server::requests_served() const {
    return impl_->served;
}

std::uint64_t Server::requests_rejected() const {
    return impl_->rejected;
}

std::uint64_t Server::connections_evicted() const {
    return impl_->evicted;
}

std::size_t Server::open_streams() const {
    return impl_->streams;
}

}  // namespace guardia::http
