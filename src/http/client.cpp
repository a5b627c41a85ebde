#include "guardia/http/client.hpp"

#include "detail/deadline.hpp"
#include "detail/tls.hpp"

#include "guardia/core/local_io.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <mutex>

namespace guardia::http {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using detail::format_duration;
using detail::is_cancelled;
using std::chrono::milliseconds;

namespace {

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t header_limit = 8 * 1024;
constexpr std::size_t max_url_length = 2048;

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

bool visible_ascii(std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u > 0x20 && u < 0x7f;
    });
}

bool valid_host_name(std::string_view h) {
    return !h.empty() && h.size() <= 253 && std::all_of(h.begin(), h.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
    });
}

Error invalid(std::string what) {
    return Error(errc::invalid_argument, std::move(what));
}

// --------------------------------------------------------------------------- TLS contexts

std::mutex default_tls_mutex;
std::shared_ptr<ssl::context> default_tls;  // guarded by default_tls_mutex

Result<std::shared_ptr<ssl::context>> default_tls_context() {
    std::lock_guard lock(default_tls_mutex);
    if (default_tls) return default_tls;
    auto made = make_tls_client_context("");
    if (made) default_tls = *made;
    return made;
}

// --------------------------------------------------------------------------- one exchange

// Sends the request and reads the answer on a connected (and, for https, handshaken) stream.
template <class Stream>
asio::awaitable<Result<ClientResponse>> exchange(Stream& stream,
                                                 bhttp::request<bhttp::string_body>& req,
                                                 Clock::time_point deadline, milliseconds limit,
                                                 std::size_t max_body) {
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    const std::string no_answer = "no answer within " + format_duration(limit);
    auto& lowest = beast::get_lowest_layer(stream);

    lowest.expires_at(deadline);
    auto [e_w, written] = co_await bhttp::async_write(stream, req, tuple_awaitable);
    (void)written;
    if (e_w) {
        if (is_cancelled(cs)) co_return Error(errc::cancelled, "cancelled");
        if (e_w == beast::error::timeout) co_return Error(errc::timeout, no_answer);
        co_return Error(errc::connection_lost, "sending the request failed: " + e_w.message());
    }

    beast::flat_buffer buffer(header_limit + 8 * 1024);
    bhttp::response_parser<bhttp::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(header_limit));
    // No limit while the header is read, so that a long Content-Length still lets us see the
    // status; the body is bounded below.
    parser.body_limit(boost::none);
    auto read_error = [&](const boost::system::error_code& e) -> Error {
        if (is_cancelled(cs)) return Error(errc::cancelled, "cancelled");
        if (e == beast::error::timeout) return Error(errc::timeout, no_answer);
        if (e == bhttp::error::end_of_stream)
            return Error(errc::connection_lost, "connection closed without an answer");
        if (e == bhttp::error::partial_message || e == asio::error::eof ||
            e == ssl::error::stream_truncated)
            return Error(errc::connection_lost, "connection closed mid-answer");
        if (e == asio::error::connection_reset)
            return Error(errc::connection_lost, "connection reset");
        if (e == bhttp::error::header_limit || e == bhttp::error::buffer_overflow)
            return Error(e, "answer header over " + std::to_string(header_limit / 1024) + " KiB");
        return Error(e, "bad HTTP answer: " + e.message());
    };

    lowest.expires_at(deadline);
    auto [e_h, got_h] = co_await bhttp::async_read_header(stream, buffer, parser, tuple_awaitable);
    (void)got_h;
    if (e_h) co_return read_error(e_h);

    ClientResponse out;
    out.status = static_cast<int>(parser.get().result_int());
    // The parser checks a Content-Length against the limit only while reading the header;
    // chunked and read-to-close bodies are checked as they come.
    if (const auto length = parser.content_length(); length && *length > max_body) {
        out.body_truncated = true;
        co_return out;
    }
    parser.body_limit(max_body);
    lowest.expires_at(deadline);
    auto [e_b, got_b] = co_await bhttp::async_read(stream, buffer, parser, tuple_awaitable);
    (void)got_b;
    if (e_b == bhttp::error::body_limit) {
        out.body_truncated = true;
    } else if (e_b) {
        co_return read_error(e_b);
    } else {
        out.body = std::move(parser.get().body());
    }
    co_return out;
}

asio::awaitable<Result<void>> connect(beast::tcp_stream& tcp,
                                      const std::vector<tcp::endpoint>& endpoints,
                                      Clock::time_point deadline, milliseconds limit) {
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    tcp.expires_at(deadline);
    auto [e_c, ep] = co_await tcp.async_connect(endpoints, tuple_awaitable);
    (void)ep;
    if (!e_c) co_return Result<void>();
    if (is_cancelled(cs)) co_return Error(errc::cancelled, "cancelled");
    if (e_c == beast::error::timeout)
        co_return Error(errc::timeout, "no connection within " + format_duration(limit));
    if (e_c == asio::error::connection_refused)
        co_return Error(errc::connect_failed, "connection refused");
    co_return Error(errc::connect_failed, "connect failed: " + e_c.message());
}

asio::awaitable<Result<ClientResponse>> post_once(const Url& url,
                                                  bhttp::request<bhttp::string_body>& req,
                                                  milliseconds timeout,
                                                  const ClientOptions& options) {
    const auto deadline = Clock::now() + timeout;
    auto ex = co_await asio::this_coro::executor;
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;

    std::shared_ptr<ssl::context> tls = options.tls;
    if (url.https && !tls) {
        auto made = co_await run_blocking([] { return default_tls_context(); });
        if (!made) co_return made.error();
        tls = *made;
    }

    auto endpoints = co_await detail::resolve_before(url.host, url.port, deadline, timeout);
    if (!endpoints) co_return endpoints.error();

    if (!url.https) {
        beast::tcp_stream stream(ex);
        if (auto c = co_await connect(stream, *endpoints, deadline, timeout); !c)
            co_return c.error();
        auto r = co_await exchange(stream, req, deadline, timeout, options.max_body);
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
        stream.close();
        co_return r;
    }

    beast::ssl_stream<beast::tcp_stream> stream(ex, *tls);
    SSL* ssl_handle = stream.native_handle();
    if (auto peer = detail::expect_peer(ssl_handle, url.host); !peer) co_return peer.error();
    stream.set_verify_mode(ssl::verify_peer);

    if (auto c = co_await connect(beast::get_lowest_layer(stream), *endpoints, deadline, timeout);
        !c)
        co_return c.error();
    beast::get_lowest_layer(stream).expires_at(deadline);
    auto [e_hs] = co_await stream.async_handshake(ssl::stream_base::client, tuple_awaitable);
    if (e_hs) {
        if (is_cancelled(cs)) co_return Error(errc::cancelled, "cancelled");
        if (e_hs == beast::error::timeout)
            co_return Error(errc::timeout, "no TLS handshake within " + format_duration(timeout));
        co_return Error(errc::handshake_failed, detail::tls_failure(e_hs, ssl_handle));
    }
    auto r = co_await exchange(stream, req, deadline, timeout, options.max_body);
    // Connection: close. No TLS close_notify exchange: it would cost a round trip under the
    // deadline for nothing, the answer is complete (or the attempt failed anyway).
    beast::get_lowest_layer(stream).close();
    co_return r;
}

}  // namespace

// ------------------------------------------------------------------------------ URL

std::string Url::host_header() const {
    const bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string Url::display() const {
    const auto q = target.find('?');
    return std::string(https ? "https://" : "http://") + host_header() +
           (q == std::string::npos ? target : target.substr(0, q));
}

Result<Url> parse_url(std::string_view text) {
    if (text.size() > max_url_length)
        return invalid("URL longer than " + std::to_string(max_url_length) + " characters");
    if (!visible_ascii(text)) return invalid("URL holds spaces or control characters");
    Url url;
    const auto sep = text.find("://");
    if (sep == std::string_view::npos) return invalid("URL must start with http:// or https://");
    const std::string scheme = lower(text.substr(0, sep));
    if (scheme == "https")
        url.https = true;
    else if (scheme != "http")
        return invalid("URL scheme must be http or https, not '" + scheme + "'");
    std::string_view rest = text.substr(sep + 3);
    if (rest.find('#') != std::string_view::npos) return invalid("URL must not hold a fragment");
    const auto slash = rest.find_first_of("/?");
    std::string_view authority = rest.substr(0, slash);
    std::string target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
    if (target.front() == '?') target.insert(0, "/");
    if (authority.find('@') != std::string_view::npos)
        return invalid("URL must not hold credentials (user@host): use headers");
    std::string_view port_text;
    if (!authority.empty() && authority.front() == '[') {
        const auto close = authority.find(']');
        if (close == std::string_view::npos) return invalid("URL has an unterminated '[' host");
        url.host = std::string(authority.substr(1, close - 1));
        boost::system::error_code ec;
        (void)asio::ip::make_address_v6(url.host, ec);
        if (ec) return invalid("URL host '[" + url.host + "]' is not an IPv6 address");
        std::string_view after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return invalid("URL has junk after ']'");
            port_text = after.substr(1);
            if (port_text.empty()) return invalid("URL has an empty port");
        }
    } else {
        const auto colon = authority.rfind(':');
        if (colon != std::string_view::npos) {
            port_text = authority.substr(colon + 1);
            if (port_text.empty()) return invalid("URL has an empty port");
            authority = authority.substr(0, colon);
        }
        url.host = lower(authority);
        if (url.host.empty()) return invalid("URL has no host");
        if (!valid_host_name(url.host)) return invalid("URL host '" + url.host + "' is not valid");
    }
    if (port_text.empty()) {
        url.port = url.https ? 443 : 80;
    } else {
        unsigned long port = 0;
        if (port_text.size() > 5 || !std::all_of(port_text.begin(), port_text.end(),
                                                 [](char c) { return c >= '0' && c <= '9'; }))
            return invalid("URL port must be a number between 1 and 65535");
        port = std::stoul(std::string(port_text));
        if (port == 0 || port > 65535)
            return invalid("URL port must be a number between 1 and 65535");
        url.port = static_cast<std::uint16_t>(port);
    }
    url.target = std::move(target);
    return url;
}

// ------------------------------------------------------------------------------ TLS

Result<std::shared_ptr<ssl::context>> make_tls_client_context(const std::string& ca_file) {
    return make_tls_client_context(ca_file, true);
}

Result<std::shared_ptr<ssl::context>> make_tls_client_context(const std::string& ca_file,
                                                              bool system_store) {
    try {
        auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
        if (SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION) != 1)
            return invalid("TLS: cannot require TLS 1.2");
        boost::system::error_code ec;
        if (system_store || ca_file.empty()) ctx->set_default_verify_paths(ec);
        if (ec) return invalid("TLS: cannot load the system CA store: " + ec.message());
        if (!ca_file.empty()) {
            ctx->load_verify_file(ca_file, ec);
            if (ec) return invalid("TLS: cannot load CA file '" + ca_file + "': " + ec.message());
        }
        ctx->set_verify_mode(ssl::verify_peer);
        return ctx;
    } catch (const boost::system::system_error& e) {
        return invalid(std::string("TLS: cannot create a client context: ") + e.what());
    }
}

// ------------------------------------------------------------------------------ POST

asio::awaitable<Result<ClientResponse>> http_post(std::string url_text, std::string body,
                                                  HeaderList headers, milliseconds timeout,
                                                  ClientOptions options) {
    auto url = parse_url(url_text);
    if (!url) co_return Error(errc::invalid_argument, "POST: " + url.error().message);
    const std::string what = "POST " + url->display();
    if (timeout <= milliseconds(0))
        co_return Error(errc::invalid_argument, what + ": timeout must be positive");

    bhttp::request<bhttp::string_body> req{bhttp::verb::post, url->target, 11};
    req.set(bhttp::field::host, url->host_header());
    req.set(bhttp::field::user_agent, options.user_agent);
    req.set(bhttp::field::connection, "close");
    for (const auto& [name, value] : headers) {
        const std::string n = lower(name);
        if (!is_header_name(name))
            co_return Error(errc::invalid_argument, what + ": bad header name '" + name + "'");
        if (n == "host" || n == "content-length" || n == "connection" || n == "transfer-encoding" ||
            n == "user-agent")
            co_return Error(errc::invalid_argument,
                            what + ": header '" + name + "' is set by the client");
        // The value is never echoed: it may be a secret.
        if (!is_header_value(value))
            co_return Error(errc::invalid_argument,
                            what + ": header '" + name + "' holds a control character");
        req.insert(name, value);
    }
    req.body() = std::move(body);
    req.prepare_payload();

    try {
        auto r = co_await post_once(*url, req, timeout, options);
        if (!r) co_return Error(r.error().code, what + ": " + r.error().message);
        co_return r;
    } catch (const boost::system::system_error& e) {
        // Thrown by co_await when the coroutine was cancelled (Asio's throw_if_cancelled).
        co_return Error(errc::cancelled, what + ": cancelled (" + e.what() + ")");
    }
}

}  // namespace guardia::http
