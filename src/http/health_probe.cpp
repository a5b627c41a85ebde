#include "guardia/http/health_probe.hpp"

#include "detail/deadline.hpp"
#include "detail/tls.hpp"

#include "guardia/core/local_io.hpp"
#include "guardia/http/client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <memory>
#include <optional>
#include <vector>

namespace guardia::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using detail::format_duration;
using detail::is_cancelled;
using std::chrono::milliseconds;

namespace {

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

milliseconds since(Clock::time_point start) {
    return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

// What the request goes to, validated once and formatted once.
struct Target {
    std::string host;
    std::uint16_t port = 0;
    std::string path;
    std::string host_header;  // "host:port", IPv6 literals bracketed
    std::string url;          // for messages
};

bool printable_token(std::string_view s) {
    // No spaces or control characters: they would break (or inject into) the request line
    // and headers.
    return std::none_of(s.begin(), s.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u <= 0x20 || u == 0x7f;
    });
}

Result<Target> make_target(std::string host, std::uint16_t port, std::string path,
                           std::string_view scheme = "http") {
    if (host.empty() || !printable_token(host) || host.find('/') != std::string::npos)
        return Error(errc::invalid_argument, "health check: bad host '" + host + "'");
    if (port == 0) return Error(errc::invalid_argument, "health check: port 0 for " + host);
    if (path.empty() || path.front() != '/' || !printable_token(path))
        return Error(errc::invalid_argument,
                     "health check: path must start with '/' and hold no spaces: '" + path + "'");
    Target t;
    const bool v6 = host.find(':') != std::string::npos;
    const std::string authority = (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
    t.host_header = authority;
    t.url = std::string(scheme) + "://" + authority + (scheme == "tcp" ? std::string() : path);
    t.host = std::move(host);
    t.port = port;
    t.path = std::move(path);
    return t;
}

Attempt failed(boost::system::error_code code, std::string reason) {
    Attempt a;
    a.code = code;
    a.reason = std::move(reason);
    return a;
}

Attempt failed(errc kind, std::string reason) {
    return failed(make_error_code(kind), std::move(reason));
}

Attempt answered(int status) {
    Attempt a;
    a.status = status;
    return a;
}

asio::awaitable<Attempt> resolve(const Target& t, Clock::time_point deadline, milliseconds limit,
                               std::vector<tcp::endpoint>& endpoints) {
    auto r = co_await detail::resolve_before(t.host, t.port, deadline, limit);
    if (!r) co_return failed(r.error().code, r.error().message);
    endpoints = std::move(*r);
    co_return Attempt{};
}

// Connects to the first endpoint that answers, under `deadline`.
asio::awaitable<Attempt> connect(beast::tcp_stream& stream, const Target& t,
                                 Clock::time_point deadline, milliseconds limit) {
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    std::vector<tcp::endpoint> endpoints;
    if (auto r = co_await resolve(t, deadline, limit, endpoints); r.code) co_return r;
    stream.expires_at(deadline);
    auto [e_c, ep] = co_await stream.async_connect(endpoints, tuple_awaitable);
    (void)ep;
    if (e_c) {
        if (is_cancelled(cs)) co_return failed(errc::cancelled, "cancelled");
        if (e_c == beast::error::timeout)
            co_return failed(errc::timeout, "no connection within " + format_duration(limit));
        if (e_c == asio::error::connection_refused)
            co_return failed(errc::connect_failed, "connection refused");
        co_return failed(errc::connect_failed, "connect failed: " + e_c.message());
    }
    co_return Attempt{};
}

// One GET on a connected (and, for https, handshaken) stream, under `deadline`. The answer's
// status, and its body in `body`.
template <class Stream>
asio::awaitable<Attempt> exchange(Stream& stream, const Target& t, Clock::time_point deadline,
                                  milliseconds limit, std::string& body) {
    const std::string no_answer = "no answer within " + format_duration(limit);
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    auto& lowest = beast::get_lowest_layer(stream);

    bhttp::request<bhttp::empty_body> req{bhttp::verb::get, t.path, 11};
    req.set(bhttp::field::host, t.host_header);
    req.set(bhttp::field::user_agent, "guardia-health");
    req.set(bhttp::field::connection, "close");
    lowest.expires_at(deadline);
    auto [e_w, written] = co_await bhttp::async_write(stream, req, tuple_awaitable);
    (void)written;
    if (e_w) {
        if (is_cancelled(cs)) co_return failed(errc::cancelled, "cancelled");
        if (e_w == beast::error::timeout) co_return failed(errc::timeout, no_answer);
        co_return failed(errc::connection_lost, "sending the request failed: " + e_w.message());
    }

    // The buffer holds at most a full header plus some body in flight; the body itself is
    // bounded by the parser.
    beast::flat_buffer buffer(max_response_header + 8 * 1024);
    bhttp::response_parser<bhttp::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(max_response_header));
    parser.body_limit(max_response_body);
    lowest.expires_at(deadline);  // Beast habit: a deadline before every read
    auto [e_r, got] = co_await bhttp::async_read(stream, buffer, parser, tuple_awaitable);
    (void)got;
    if (e_r) {
        if (is_cancelled(cs)) co_return failed(errc::cancelled, "cancelled");
        if (e_r == beast::error::timeout) co_return failed(errc::timeout, no_answer);
        if (e_r == bhttp::error::end_of_stream)
            co_return failed(errc::connection_lost, "connection closed without an answer");
        if (e_r == bhttp::error::partial_message || e_r == asio::error::eof ||
            e_r == ssl::error::stream_truncated)
            co_return failed(errc::connection_lost, "connection closed mid-answer");
        if (e_r == asio::error::connection_reset)
            co_return failed(errc::connection_lost, "connection reset");
        if (e_r == bhttp::error::body_limit)
            co_return failed(
                e_r, "answer body over " + std::to_string(max_response_body / 1024) + " KiB");
        if (e_r == bhttp::error::header_limit || e_r == bhttp::error::buffer_overflow)
            co_return failed(
                e_r, "answer header over " + std::to_string(max_response_header / 1024) + " KiB");
        co_return failed(e_r, "bad HTTP answer: " + e_r.message());
    }
    body = std::move(parser.get().body());
    co_return answered(static_cast<int>(parser.get().result_int()));
}

// How an https attempt reaches its peer: a client context (the system store or the CA file),
// the name sent and verified, or no verification at all.
struct TlsPlan {
    std::shared_ptr<ssl::context> context;
    std::string peer_name;  // tls_server_name, else the host
    bool verify = true;
};

// One GET with every step under `deadline` (plain HTTP when `tls` is null). Never throws for
// network failures; a cancellation shows as errc::cancelled (or, on the next co_await, as a
// system_error that the public functions catch).
// `limit` is the time the caller granted (deadline - attempt start), for messages.
asio::awaitable<Attempt> probe_once(const Target& t, Clock::time_point deadline, milliseconds limit,
                                    const TlsPlan* tls, std::string& body) {
    auto ex = co_await asio::this_coro::executor;
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    if (tls == nullptr) {
        beast::tcp_stream stream(ex);
        if (auto c = co_await connect(stream, t, deadline, limit); c.code) co_return c;
        auto a = co_await exchange(stream, t, deadline, limit, body);
        // Connection: close, so nothing more to say; closing does not wait.
        boost::system::error_code ec;
        stream.socket().shutdown(tcp::socket::shutdown_both, ec);
        stream.close();
        co_return a;
    }
    beast::ssl_stream<beast::tcp_stream> stream(ex, *tls->context);
    if (tls->verify) {
        if (auto peer = detail::expect_peer(stream.native_handle(), tls->peer_name); !peer)
            co_return failed(errc::invalid_argument, peer.error().message);
        stream.set_verify_mode(ssl::verify_peer);
    } else {
        stream.set_verify_mode(ssl::verify_none);
    }
    if (auto c = co_await connect(beast::get_lowest_layer(stream), t, deadline, limit); c.code)
        co_return c;
    beast::get_lowest_layer(stream).expires_at(deadline);
    auto [e_hs] = co_await stream.async_handshake(ssl::stream_base::client, tuple_awaitable);
    if (e_hs) {
        if (is_cancelled(cs)) co_return failed(errc::cancelled, "cancelled");
        if (e_hs == beast::error::timeout)
            co_return failed(errc::timeout, "no TLS handshake within " + format_duration(limit));
        co_return failed(errc::handshake_failed, detail::tls_failure(e_hs, stream.native_handle()));
    }
    auto a = co_await exchange(stream, t, deadline, limit, body);
    // No TLS close_notify exchange: the answer is complete (or the attempt failed anyway).
    beast::get_lowest_layer(stream).close();
    co_return a;
}

asio::awaitable<Attempt> tcp_once(const Target& t, Clock::time_point deadline, milliseconds limit) {
    beast::tcp_stream stream(co_await asio::this_coro::executor);
    auto c = co_await connect(stream, t, deadline, limit);
    stream.close();
    c.ok = !c.code;
    co_return c;
}

std::string describe_check(const HealthCheck& c, const std::string& url) {
    return (c.node.empty() ? std::string() : c.node + ": ") + "health check " + url;
}

}  // namespace

asio::awaitable<Result<int>> http_get_status(std::string host, std::uint16_t port, std::string path,
                                             milliseconds timeout) {
    auto target = make_target(std::move(host), port, std::move(path));
    if (!target) co_return target.error();
    if (timeout <= milliseconds(0))
        co_return Error(errc::invalid_argument,
                        "GET " + target->url + ": timeout must be positive");
    try {
        std::string body;
        auto p = co_await probe_once(*target, Clock::now() + timeout, timeout, nullptr, body);
        if (p.code) co_return Error(p.code, "GET " + target->url + ": " + p.reason);
        co_return p.status;
    } catch (const boost::system::system_error& e) {
        // Thrown by co_await when the coroutine was cancelled (Asio's throw_if_cancelled).
        co_return Error(errc::cancelled, "GET " + target->url + " cancelled (" + e.what() + ")");
    }
}

namespace {

Error with_node(const HealthCheck& check, Error e) {
    if (!check.node.empty()) e.message = check.node + ": " + e.message;
    return e;
}

asio::awaitable<Result<HealthOutcome>> poll(const HealthCheck& check, const std::string& what,
                                            const AttemptFn& attempt) {
    if (check.timeout <= milliseconds(0) || check.interval <= milliseconds(0) ||
        check.request_timeout <= milliseconds(0) || check.required_consecutive < 1)
        co_return Error(errc::invalid_argument,
                        what +
                            ": timeout, interval and request_timeout must be positive and "
                            "required_consecutive at least 1");

    const auto start = Clock::now();
    const auto deadline = start + check.timeout;
    asio::steady_timer timer(co_await asio::this_coro::executor);
    HealthOutcome out;
    int consecutive = 0;
    std::string last;  // the last attempt, for the failure message
    try {
        for (;;) {
            const auto attempt_start = Clock::now();
            ++out.attempts;
            const auto attempt_deadline = std::min(attempt_start + check.request_timeout, deadline);
            auto p = co_await attempt(
                std::chrono::ceil<milliseconds>(attempt_deadline - attempt_start));
            if (p.code == errc::cancelled) {
                out.elapsed = since(start);
                co_return Error(errc::cancelled, what + " cancelled after " +
                                                     std::to_string(out.attempts) + " attempts");
            }
            out.last_status = p.status;
            if (p.ok) {
                if (++consecutive >= check.required_consecutive) {
                    out.elapsed = since(start);
                    co_return out;
                }
                last = p.reason + " (" + std::to_string(consecutive) + " of " +
                       std::to_string(check.required_consecutive) + " consecutive)";
            } else {
                consecutive = 0;
                last = p.reason;
                out.last_error = last;
            }
            // Fixed rate from attempt start, but no burst to catch up after a slow attempt.
            const auto next = std::max(attempt_start + check.interval, Clock::now());
            if (next >= deadline) break;
            timer.expires_at(next);
            co_await timer.async_wait(asio::use_awaitable);
        }
    } catch (const boost::system::system_error& e) {
        // Thrown by co_await when the coroutine was cancelled (Asio's throw_if_cancelled).
        co_return Error(errc::cancelled, what + " cancelled after " + std::to_string(out.attempts) +
                                             " attempts (" + e.what() + ")");
    }
    co_return Error(errc::timeout, what + " not healthy after " + format_duration(check.timeout) +
                                       ": " + std::to_string(out.attempts) +
                                       " attempts, last: " + last);
}

std::string_view scheme_of(ProbeKind kind) {
    return probe_kind_name(kind == ProbeKind::command ? ProbeKind::http : kind);
}

}  // namespace

bool answer_accepted(const HealthCheck& check, int status, std::string_view body,
                     std::string& reason) {
    reason = "HTTP " + std::to_string(status);
    if (!check.expect_status.contains(status)) {
        if (!check.expect_status.is_default())
            reason += " (expected " + check.expect_status.describe() + ")";
        return false;
    }
    if (!check.body_contains.empty() && body.find(check.body_contains) == std::string_view::npos) {
        reason += " but the body does not contain '" + check.body_contains + "'";
        return false;
    }
    return true;
}

std::string describe_target(const HealthCheck& c) {
    if (c.kind == ProbeKind::command) return "command '" + c.command + "'";
    auto t = make_target(c.host, c.port, c.path, scheme_of(c.kind));
    if (!t) return std::string(probe_kind_name(c.kind)) + "://" + c.host;
    return t->url;
}

asio::awaitable<Result<HealthOutcome>> wait_healthy(HealthCheck check, AttemptFn attempt) {
    const std::string what = describe_check(check, describe_target(check));
    co_return co_await poll(check, what, attempt);
}

asio::awaitable<Result<HealthOutcome>> wait_healthy(HealthCheck check) {
    if (check.kind == ProbeKind::command)
        co_return with_node(check, Error(errc::invalid_argument,
                                         "health check: a command check needs its runner"));
    auto target = make_target(check.host, check.port, check.path, scheme_of(check.kind));
    if (!target) co_return with_node(check, target.error());
    const std::string what = describe_check(check, target->url);

    TlsPlan tls;
    if (check.kind == ProbeKind::https) {
        // Named, capturing only a pointer: GCC 12 destroys a temporary lambda with a
        // non-trivial capture twice when it is an argument of a co_await'ed call. `check`
        // lives in this frame, which waits for the call.
        const std::string* ca = &check.ca_file;
        auto load = [ca] { return make_tls_client_context(*ca, /*system_store=*/false); };
        auto made = co_await run_blocking(load);
        if (!made) co_return Error(made.error().code, what + ": " + made.error().message);
        tls.context = *made;
        tls.peer_name = check.tls_server_name.empty() ? check.host : check.tls_server_name;
        tls.verify = !check.insecure_skip_verify;
    }
    const TlsPlan* plan = check.kind == ProbeKind::https ? &tls : nullptr;
    const Target& t = *target;
    AttemptFn attempt = [&t, &check, plan](milliseconds limit) -> asio::awaitable<Attempt> {
        const auto deadline = Clock::now() + limit;
        if (check.kind == ProbeKind::tcp) {
            auto a = co_await tcp_once(t, deadline, limit);
            if (a.ok) a.reason = "connected";
            co_return a;
        }
        std::string body;
        auto a = co_await probe_once(t, deadline, limit, plan, body);
        if (!a.code) a.ok = answer_accepted(check, a.status, body, a.reason);
        co_return a;
    };
    co_return co_await poll(check, what, attempt);
}

}  // namespace guardia::http
