// The embedded HTTP server against real loopback sockets (127.0.0.1, port 0): a Beast client
// for well-formed traffic, raw writes for what no decent client sends. Timeouts are cut to
// fractions of a second so that the whole file runs in a few seconds.
#include "../support/captured_log.hpp"
#include "../support/fleet.hpp"
#include "guardia/http/server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <doctest/doctest.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

using namespace guardia;
using namespace guardia::http;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace json = boost::json;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using Status = beast_http::status;

using guardia::test::CapturedLog;
using guardia::test::TempDir;

namespace {

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

milliseconds since(Clock::time_point t) {
    return std::chrono::duration_cast<milliseconds>(Clock::now() - t);
}

asio::awaitable<void> sleep_for(milliseconds d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

// What the test handler saw.
struct Seen {
    int calls = 0;
    int cancelled = 0;  // handlers that saw their wait cancelled
    std::string last_body;
};

// /echo: parses a JSON object body (POST) and returns it with the method and target;
// /size: the body's size, whatever its type; /boom: throws; /slow: answers after 300 ms;
// /forever: waits 10 s (shutdown must cut it).
Handler test_handler(Seen& seen) {
    return [&seen](Request req) -> asio::awaitable<Response> {
        ++seen.calls;
        seen.last_body = req.body();
        const auto segments = path_segments(req.target());
        const std::string first = segments && !segments->empty() ? segments->front() : "";
        if (first == "boom") throw std::runtime_error("kaboom-internal-detail");
        if (first == "slow" || first == "forever") {
            asio::steady_timer t(co_await asio::this_coro::executor,
                                 first == "slow" ? milliseconds(300) : milliseconds(10s));
            auto [ec] = co_await t.async_wait(tuple_awaitable);
            if (ec) {
                ++seen.cancelled;
                throw boost::system::system_error(ec);
            }
        }
        if (first == "size")
            co_return json_response(req, Status::ok, {{"bytes", req.body().size()}});
        if (first == "deny") co_return error_response(req, Status::unauthorized, "unauthorized", "no");
        json::object out;
        out["method"] = std::string(req.method_string());
        out["target"] = std::string(req.target());
        if (req.method() == beast_http::verb::post) {
            auto parsed = parse_json_object(req, 8);
            if (auto* error = std::get_if<Response>(&parsed)) co_return std::move(*error);
            out["echo"] = std::get<json::object>(std::move(parsed));
        }
        co_return json_response(req, Status::ok, out);
    };
}

ServerOptions fast_options(const CapturedLog& log) {
    ServerOptions o;
    o.read_timeout = 300ms;
    o.idle_timeout = 1s;
    o.write_timeout = 1s;
    o.logger = log.logger;
    return o;
}

// A listening, started server on its own io_context. The io_context is declared first so
// that it outlives the server.
struct Harness {
    explicit Harness(ServerOptions o)
        : server(ioc.get_executor(), std::move(o), test_handler(seen)) {
        auto r = server.listen();
        REQUIRE_MESSAGE(r.has_value(), (r.has_value() ? std::string() : r.error().describe()));
        server.start();
    }

    tcp::endpoint endpoint() const { return server.local_endpoint(); }

    // Runs `test`, then a graceful shutdown; everything must be over within `limit`.
    void run(std::function<asio::awaitable<void>()> test, milliseconds limit = 4s) {
        bool done = false;
        std::exception_ptr failure;
        asio::co_spawn(
            ioc,
            [&]() -> asio::awaitable<void> {
                co_await test();
                co_await server.shutdown(1s);
            },
            [&](std::exception_ptr e) {
                done = true;
                failure = e;
            });
        ioc.run_for(limit);
        if (failure) std::rethrow_exception(failure);
        REQUIRE_MESSAGE(done, "the test did not finish in time");
        CHECK(server.open_connections() == 0);
    }

    asio::io_context ioc;
    Seen seen;
    Server server;
};

Request make_request(beast_http::verb verb, std::string target, std::string body = {},
                     std::string content_type = "application/json") {
    Request req{verb, target, 11};
    req.set(beast_http::field::host, "127.0.0.1");
    if (!body.empty() || verb == beast_http::verb::post) {
        req.set(beast_http::field::content_type, content_type);
        req.body() = std::move(body);
    }
    req.prepare_payload();
    return req;
}

// One client connection.
struct Client {
    explicit Client(asio::any_io_executor ex) : stream(std::move(ex)) {}

    asio::awaitable<void> connect(tcp::endpoint ep) {
        stream.expires_after(2s);
        co_await stream.async_connect(ep, asio::use_awaitable);
    }
    asio::awaitable<void> send(Request req) {
        stream.expires_after(2s);
        co_await beast_http::async_write(stream, req, asio::use_awaitable);
    }
    asio::awaitable<Response> receive() {
        stream.expires_after(2s);
        Response res;
        co_await beast_http::async_read(stream, buffer, res, asio::use_awaitable);
        co_return res;
    }
    asio::awaitable<Response> round_trip(Request req) {
        co_await send(std::move(req));
        co_return co_await receive();
    }
    // True when the server closed the connection within `wait` (nothing else arriving).
    asio::awaitable<bool> sees_close(milliseconds wait) {
        stream.expires_after(wait);
        char byte;
        auto [ec, n] = co_await stream.async_read_some(asio::buffer(&byte, 1), tuple_awaitable);
        (void)n;
        co_return ec == asio::error::eof || ec == asio::error::connection_reset;
    }

    beast::tcp_stream stream;
    beast::flat_buffer buffer;
};

json::value body_json(const Response& res) {
    return json::parse(res.body());
}

std::string error_code_of(const Response& res) {
    return std::string(body_json(res).as_object().at("error").as_string());
}

struct RawOutcome {
    RawOutcome() {}
    std::string answer;       // everything the server sent
    bool closed = false;      // the server closed (EOF or reset) before `wait` elapsed
    milliseconds elapsed{0};  // from the end of our write to the close
};

// Writes `bytes` on a fresh connection, then reads until the server closes or `wait` elapses.
asio::awaitable<RawOutcome> raw_exchange(tcp::endpoint ep, std::string bytes,
                                         milliseconds wait = 2s) {
    beast::tcp_stream s(co_await asio::this_coro::executor);
    s.expires_after(2s);
    co_await s.async_connect(ep, asio::use_awaitable);
    if (!bytes.empty()) co_await asio::async_write(s, asio::buffer(bytes), asio::use_awaitable);
    const auto start = Clock::now();
    RawOutcome out;
    s.expires_after(wait);
    std::array<char, 4096> buf;
    for (;;) {
        auto [ec, n] = co_await s.async_read_some(asio::buffer(buf), tuple_awaitable);
        out.answer.append(buf.data(), n);
        if (ec) {
            out.closed = ec == asio::error::eof || ec == asio::error::connection_reset;
            break;
        }
    }
    out.elapsed = since(start);
    co_return out;
}

// The JSON error code of a raw answer's body ("" when there is none).
std::string raw_error_code(const std::string& answer) {
    const auto at = answer.find("\r\n\r\n");
    if (at == std::string::npos) return "";
    json::error_code ec;
    auto v = json::parse(answer.substr(at + 4), ec);
    if (ec || !v.is_object() || !v.as_object().contains("error")) return "";
    return std::string(v.as_object().at("error").as_string());
}

// ------------------------------------------------------------------ self-signed certificate

struct PkeyFree {
    void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
    void operator()(X509* p) const { X509_free(p); }
};
struct X509ExtFree {
    void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
struct FileClose {
    void operator()(std::FILE* f) const { std::fclose(f); }
};

void add_extension(X509* cert, int nid, const char* value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
    std::unique_ptr<X509_EXTENSION, X509ExtFree> ext(
        X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
    REQUIRE(ext);
    REQUIRE(X509_add_ext(cert, ext.get(), -1) == 1);
}

// A P-256 key and a self-signed certificate for "localhost" / 127.0.0.1, valid for an hour,
// written as PEM into `dir`.
TlsFiles make_self_signed(const TempDir& dir) {
    std::unique_ptr<EVP_PKEY, PkeyFree> key(EVP_EC_gen("P-256"));
    REQUIRE(key);
    std::unique_ptr<X509, X509Free> cert(X509_new());
    REQUIRE(cert);
    REQUIRE(X509_set_version(cert.get(), 2) == 1);
    REQUIRE(ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1) == 1);
    REQUIRE(X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60));
    REQUIRE(X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600));
    REQUIRE(X509_set_pubkey(cert.get(), key.get()) == 1);
    X509_NAME* name = X509_get_subject_name(cert.get());
    REQUIRE(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                       reinterpret_cast<const unsigned char*>("localhost"), -1, -1,
                                       0) == 1);
    REQUIRE(X509_set_issuer_name(cert.get(), name) == 1);
    add_extension(cert.get(), NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert.get(), NID_key_usage, "critical,digitalSignature,keyCertSign");
    add_extension(cert.get(), NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
    REQUIRE(X509_sign(cert.get(), key.get(), EVP_sha256()) > 0);

    TlsFiles files;
    files.cert_file = dir.file("cert.pem");
    files.key_file = dir.file("key.pem");
    {
        std::unique_ptr<std::FILE, FileClose> f(std::fopen(files.cert_file.c_str(), "w"));
        REQUIRE(f);
        REQUIRE(PEM_write_X509(f.get(), cert.get()) == 1);
    }
    {
        std::unique_ptr<std::FILE, FileClose> f(std::fopen(files.key_file.c_str(), "w"));
        REQUIRE(f);
        REQUIRE(PEM_write_PrivateKey(f.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) ==
                1);
    }
    return files;
}

}  // namespace

// ------------------------------------------------------------------ server behaviour

TEST_CASE("http server: JSON round trip, counted as served") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        auto res = co_await c.round_trip(
            make_request(beast_http::verb::post, "/echo?x=1", R"({"name":"web","n":[1,2]})"));
        CHECK(res.result() == Status::ok);
        CHECK(res[beast_http::field::content_type] == "application/json");
        const auto body = body_json(res).as_object();
        CHECK(body.at("method").as_string() == "POST");
        CHECK(body.at("target").as_string() == "/echo?x=1");
        CHECK(json::serialize(body.at("echo")) == R"({"name":"web","n":[1,2]})");
        CHECK(h.server.requests_served() == 1);
        CHECK(h.server.requests_rejected() == 0);
    });
    CHECK(h.seen.calls == 1);
}

TEST_CASE("http server: keep-alive carries two requests on one connection") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        auto first = co_await c.round_trip(make_request(beast_http::verb::get, "/one"));
        CHECK(first.result() == Status::ok);
        CHECK(first.keep_alive());
        auto second = co_await c.round_trip(make_request(beast_http::verb::get, "/two"));
        CHECK(second.result() == Status::ok);
        CHECK(body_json(second).as_object().at("target").as_string() == "/two");
        CHECK(h.server.open_connections() == 1);
        CHECK(h.server.requests_served() == 2);

        // A client asking for close gets it, and the server closes.
        auto req = make_request(beast_http::verb::get, "/three");
        req.keep_alive(false);
        auto third = co_await c.round_trip(std::move(req));
        CHECK(third.result() == Status::ok);
        CHECK_FALSE(third.keep_alive());
        const bool closed = co_await c.sees_close(1s);
        CHECK(closed);
    });
}

TEST_CASE("http server: Expect: 100-continue gets a 100 before the body is sent") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        const std::string head =
            "POST /size HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        co_await asio::async_write(c.stream, asio::buffer(head), asio::use_awaitable);
        std::string interim;
        co_await asio::async_read_until(c.stream, asio::dynamic_buffer(interim), "\r\n\r\n",
                                        asio::use_awaitable);
        CHECK(interim.starts_with("HTTP/1.1 100 Continue\r\n"));
        CHECK(h.seen.calls == 0);
        co_await asio::async_write(c.stream, asio::buffer(std::string("hello")),
                                   asio::use_awaitable);
        auto res = co_await c.receive();
        CHECK(res.result() == Status::ok);
        CHECK(body_json(res).as_object().at("bytes").as_int64() == 5);
    });
}

TEST_CASE("http server: HEAD gets the length of the answer but no body") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        auto r = co_await raw_exchange(
            h.endpoint(), "HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        CHECK(r.answer.starts_with("HTTP/1.1 200 "));
        const auto end = r.answer.find("\r\n\r\n");
        REQUIRE(end != std::string::npos);
        CHECK(r.answer.size() == end + 4);  // nothing after the head
        const std::string expected = R"({"method":"HEAD","target":"/echo"})";
        CHECK(r.answer.find("Content-Length: " + std::to_string(expected.size())) !=
              std::string::npos);
        CHECK(r.closed);
    });
}

TEST_CASE("http server: oversized Content-Length is answered 413 before the body is read") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        // Only the head is sent: an answer proves the server did not wait for the body
        // (waiting would end in a 408 after read_timeout).
        auto r = co_await raw_exchange(h.endpoint(),
                                       "POST /echo HTTP/1.1\r\nHost: x\r\n"
                                       "Content-Type: application/json\r\n"
                                       "Content-Length: 10000000\r\n\r\n");
        CHECK(r.answer.starts_with("HTTP/1.1 413 "));
        CHECK(raw_error_code(r.answer) == "payload_too_large");
        CHECK(r.closed);
        CHECK(r.elapsed < 250ms);
        CHECK(h.seen.calls == 0);

        // The next connection is served normally.
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        auto res = co_await c.round_trip(make_request(beast_http::verb::post, "/echo", "{}"));
        CHECK(res.result() == Status::ok);
        CHECK(h.server.requests_rejected() == 1);
    });
}

TEST_CASE("http server: a chunked body is cut with 413 once over the limit") {
    CapturedLog log;
    auto o = fast_options(log);
    o.max_body_bytes = 100;
    Harness h(o);
    h.run([&]() -> asio::awaitable<void> {
        const std::string chunk(80, 'a');
        auto r = co_await raw_exchange(h.endpoint(),
                                       "POST /size HTTP/1.1\r\nHost: x\r\n"
                                       "Transfer-Encoding: chunked\r\n\r\n"
                                       "50\r\n" +
                                           chunk + "\r\n50\r\n" + chunk + "\r\n0\r\n\r\n");
        CHECK(r.answer.starts_with("HTTP/1.1 413 "));
        CHECK(raw_error_code(r.answer) == "payload_too_large");
        CHECK(r.closed);
        // Under the limit, chunked is fine.
        auto ok = co_await raw_exchange(h.endpoint(),
                                        "POST /size HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                        "Transfer-Encoding: chunked\r\n\r\n"
                                        "50\r\n" +
                                            chunk + "\r\n0\r\n\r\n");
        CHECK(ok.answer.starts_with("HTTP/1.1 200 "));
        CHECK(ok.answer.find(R"({"bytes":80})") != std::string::npos);
        CHECK(h.seen.calls == 1);
    });
}

TEST_CASE("http server: a header block over max_header_bytes is answered 431") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        auto r = co_await raw_exchange(h.endpoint(), "GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " +
                                                         std::string(20000, 'b') + "\r\n\r\n");
        CHECK(r.answer.starts_with("HTTP/1.1 431 "));
        CHECK(raw_error_code(r.answer) == "headers_too_large");
        CHECK(r.closed);
        // Just under the limit passes.
        auto ok = co_await raw_exchange(h.endpoint(),
                                        "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                        "X-Big: " +
                                            std::string(15000, 'b') + "\r\n\r\n");
        CHECK(ok.answer.starts_with("HTTP/1.1 200 "));
        CHECK(h.server.requests_rejected() == 1);
    });
}

TEST_CASE("http server: the limit holds for the request line and headers together (431)") {
    // Beast 1.81 applies header_limit to the request line and to the fields separately: each
    // of these is under 16 KiB, both together are not. Found by test/fuzz/fuzz_http_request
    // (test/fuzz/regressions/http_request/head-over-limit-line-plus-fields).
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        auto r = co_await raw_exchange(h.endpoint(), "GET /echo?" + std::string(10000, 'q') +
                                                         " HTTP/1.1\r\nHost: x\r\nX-Big: " +
                                                         std::string(10000, 'b') + "\r\n\r\n");
        CHECK(r.answer.starts_with("HTTP/1.1 431 "));
        CHECK(raw_error_code(r.answer) == "headers_too_large");
        CHECK(r.closed);
        CHECK(h.seen.calls == 0);
    });
}

TEST_CASE("http server: garbage is answered 400 bad_request and the server keeps serving") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        auto r = co_await raw_exchange(h.endpoint(), "this is not http\r\n\r\n");
        CHECK(r.answer.starts_with("HTTP/1.1 400 "));
        CHECK(raw_error_code(r.answer) == "bad_request");
        CHECK(r.closed);
        auto r2 = co_await raw_exchange(h.endpoint(), "GET /x HTTP/1.1\r\nHost x\r\n\r\n");
        CHECK(r2.answer.starts_with("HTTP/1.1 400 "));
        CHECK(h.seen.calls == 0);
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        auto res = co_await c.round_trip(make_request(beast_http::verb::get, "/echo"));
        CHECK(res.result() == Status::ok);
        CHECK(h.server.requests_rejected() == 2);
    });
}

TEST_CASE("http server: at max_connections a new connection evicts an idle one; 503 only when all are busy") {
    CapturedLog log;
    auto o = fast_options(log);
    o.max_connections = 2;
    Harness h(o);
    h.run([&]() -> asio::awaitable<void> {
        auto ex = h.ioc.get_executor();
        Client a(ex), b(ex), c(ex), d(ex);
        // Both slots hold a request whose handler runs: nothing may be evicted.
        co_await a.connect(h.endpoint());
        co_await a.send(make_request(beast_http::verb::get, "/slow"));
        co_await b.connect(h.endpoint());
        co_await b.send(make_request(beast_http::verb::get, "/slow"));
        for (int i = 0; i < 200 && h.seen.calls < 2; ++i) co_await sleep_for(5ms);
        REQUIRE(h.seen.calls == 2);
        CHECK(h.server.open_connections() == 2);

        co_await c.connect(h.endpoint());
        auto refused = co_await c.round_trip(make_request(beast_http::verb::get, "/c"));
        CHECK(refused.result() == Status::service_unavailable);
        CHECK(error_code_of(refused) == "too_many_connections");
        CHECK_FALSE(refused.keep_alive());
        const bool c_closed = co_await c.sees_close(1s);
        CHECK(c_closed);
        CHECK(h.seen.calls == 2);
        CHECK((co_await a.receive()).result() == Status::ok);
        CHECK((co_await b.receive()).result() == Status::ok);

        // a and b are now idle keep-alive connections: the oldest, a, makes room for d.
        co_await d.connect(h.endpoint());
        const auto rd = co_await d.round_trip(make_request(beast_http::verb::get, "/d"));
        CHECK(rd.result() == Status::ok);
        const bool a_closed = co_await a.sees_close(1s);
        CHECK(a_closed);
        CHECK(h.server.connections_evicted() == 1);
        CHECK(h.server.requests_rejected() == 1);
        CHECK(h.server.open_connections() == 2);
    });
}

TEST_CASE("http server: connections that never had a request admitted are evicted first") {
    CapturedLog log;
    auto o = fast_options(log);
    o.max_connections = 3;
    o.read_timeout = 2s;  // the silent ones would otherwise be dropped by the deadline
    Harness h(o);
    h.run([&]() -> asio::awaitable<void> {
        auto ex = h.ioc.get_executor();
        Client served(ex), silent1(ex), silent2(ex), late(ex);
        co_await served.connect(h.endpoint());
        CHECK((co_await served.round_trip(make_request(beast_http::verb::get, "/a"))).result() ==
              Status::ok);
        co_await silent1.connect(h.endpoint());
        co_await silent2.connect(h.endpoint());
        for (int i = 0; i < 200 && h.server.open_connections() < 3; ++i) co_await sleep_for(5ms);
        REQUIRE(h.server.open_connections() == 3);
        // At capacity: the oldest silent one goes, not the older but admitted keep-alive one.
        co_await late.connect(h.endpoint());
        CHECK((co_await late.round_trip(make_request(beast_http::verb::get, "/late"))).result() ==
              Status::ok);
        const bool silent1_closed = co_await silent1.sees_close(1s);
        CHECK(silent1_closed);
        CHECK((co_await served.round_trip(make_request(beast_http::verb::get, "/again")))
                  .result() == Status::ok);
        CHECK(h.server.connections_evicted() == 1);
        silent2.stream.close();
    });
}

TEST_CASE("http server: admit refuses from the head alone, before 100-continue and the body") {
    CapturedLog log;
    auto o = fast_options(log);
    o.read_timeout = 2s;
    int admits = 0;
    o.admit = [&admits](const Request& head) -> std::optional<Response> {
        ++admits;
        const std::string_view target(head.target().data(), head.target().size());
        if (target.starts_with("/throw")) throw std::runtime_error("admit-bug");
        if (!target.starts_with("/secret") || head[beast_http::field::authorization] == "ok")
            return std::nullopt;
        auto r = error_response(head, Status::unauthorized, "unauthorized", "who are you");
        r.set(beast_http::field::www_authenticate, "Bearer");
        return r;
    };
    Harness h(o);
    h.run([&]() -> asio::awaitable<void> {
        // A head announcing a large body, none of which is ever sent: answered at once, closed.
        const auto start = Clock::now();
        auto out = co_await raw_exchange(h.endpoint(),
                                         "POST /secret HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                         "Content-Type: application/json\r\n"
                                         "Content-Length: 100000000\r\n\r\n");
        CHECK(out.answer.starts_with("HTTP/1.1 401 "));
        CHECK(out.answer.find("100 Continue") == std::string::npos);
        CHECK(out.answer.find("WWW-Authenticate: Bearer") != std::string::npos);
        CHECK(out.answer.find("Connection: close") != std::string::npos);
        CHECK(raw_error_code(out.answer) == "unauthorized");
        CHECK(out.closed);
        CHECK(since(start) < 1500ms);  // not the 2 s read deadline: nothing was waited for
        CHECK(h.seen.calls == 0);

        // Admitted: the handler gets the request as usual.
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        auto req = make_request(beast_http::verb::post, "/secret/x", R"({"k": 1})");
        req.set(beast_http::field::authorization, "ok");
        auto res = co_await c.round_trip(req);
        CHECK(res.result() == Status::ok);
        CHECK(h.seen.calls == 1);

        // admit throwing is a 500, closed, logged
        auto boom = co_await raw_exchange(h.endpoint(), "GET /throw HTTP/1.1\r\nHost: x\r\n\r\n");
        CHECK(boom.answer.starts_with("HTTP/1.1 500 "));
        CHECK(boom.closed);
        CHECK(log.text().find("admit-bug") != std::string::npos);
        CHECK(admits == 3);
        CHECK(h.seen.calls == 1);
    });
}

TEST_CASE("http server: a handler's 401 closes the connection") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        auto res = co_await c.round_trip(make_request(beast_http::verb::get, "/deny"));
        CHECK(res.result() == Status::unauthorized);
        CHECK_FALSE(res.keep_alive());
        const bool closed = co_await c.sees_close(1s);
        CHECK(closed);
    });
}

TEST_CASE("http server: connections per client address are capped") {
    CapturedLog log;
    auto o = fast_options(log);
    o.read_timeout = 2s;
    o.max_connections_per_address = 2;
    Harness h(o);
    h.run([&]() -> asio::awaitable<void> {
        auto ex = h.ioc.get_executor();
        Client a(ex), b(ex), other(ex);
        co_await a.connect(h.endpoint());
        co_await b.connect(h.endpoint());
        for (int i = 0; i < 200 && h.server.open_connections() < 2; ++i) co_await sleep_for(5ms);
        REQUIRE(h.server.open_connections() == 2);
        auto third = co_await raw_exchange(h.endpoint(), "");
        CHECK(third.answer.starts_with("HTTP/1.1 503 "));
        CHECK(raw_error_code(third.answer) == "too_many_connections");
        CHECK(third.answer.find("127.0.0.1") != std::string::npos);
        CHECK(third.closed);
        // Another address is not affected.
        other.stream.socket().open(tcp::v4());
        other.stream.socket().bind(tcp::endpoint(asio::ip::make_address("127.0.0.2"), 0));
        co_await other.connect(h.endpoint());
        CHECK((co_await other.round_trip(make_request(beast_http::verb::get, "/o"))).result() ==
              Status::ok);
        // A freed slot can be used again.
        a.stream.close();
        for (int i = 0; i < 200 && h.server.open_connections() > 2; ++i) co_await sleep_for(5ms);
        Client again(ex);
        co_await again.connect(h.endpoint());
        CHECK((co_await again.round_trip(make_request(beast_http::verb::get, "/x"))).result() ==
              Status::ok);
        b.stream.close();
    });
}

TEST_CASE("http server: the first head has first_head_timeout, later ones read_timeout") {
    CapturedLog log;
    auto o = fast_options(log);
    o.read_timeout = 3s;
    o.first_head_timeout = 150ms;
    Harness h(o);
    h.run([&]() -> asio::awaitable<void> {
        auto half = co_await raw_exchange(h.endpoint(), "GET /echo HTTP/1.1\r\nHost: x\r\n");
        CHECK(half.answer.starts_with("HTTP/1.1 408 "));
        CHECK(half.closed);
        CHECK(half.elapsed >= 140ms);
        CHECK(half.elapsed < 1s);
        auto silent = co_await raw_exchange(h.endpoint(), "");
        CHECK(silent.closed);
        CHECK(silent.elapsed < 1s);
        // An admitted connection's next head is not held to the short deadline.
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        CHECK((co_await c.round_trip(make_request(beast_http::verb::get, "/a"))).result() ==
              Status::ok);
        co_await sleep_for(50ms);
        co_await asio::async_write(c.stream, asio::buffer(std::string_view("GET /b HTTP/1.1\r\n")),
                                   asio::use_awaitable);
        co_await sleep_for(300ms);  // past first_head_timeout, within read_timeout
        co_await asio::async_write(c.stream, asio::buffer(std::string_view("Host: x\r\n\r\n")),
                                   asio::use_awaitable);
        CHECK((co_await c.receive()).result() == Status::ok);
    }, 8s);
}

TEST_CASE("http server: body_limit_for raises the limit for one path only") {
    CapturedLog log;
    auto o = fast_options(log);
    o.max_body_bytes = 1024;
    o.body_limit_for = [](const Request& head) -> std::size_t {
        const std::string_view target(head.target().data(), head.target().size());
        return target.starts_with("/size/upload") ? 64 * 1024 : 0;
    };
    Harness h(o);
    h.run([&]() -> asio::awaitable<void> {
        const std::string body(10 * 1024, 'z');
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        auto res = co_await c.round_trip(
            make_request(beast_http::verb::post, "/size/upload", body, "application/octet-stream"));
        CHECK(res.result() == Status::ok);
        CHECK(body_json(res).as_object().at("bytes").as_int64() == 10 * 1024);

        Client d(h.ioc.get_executor());
        co_await d.connect(h.endpoint());
        auto refused = co_await d.round_trip(
            make_request(beast_http::verb::post, "/size/other", body, "application/octet-stream"));
        CHECK(refused.result() == Status::payload_too_large);
        CHECK(error_code_of(refused) == "payload_too_large");
        CHECK(h.seen.calls == 1);
    });
}

TEST_CASE("http server: a throwing handler gets a 500, logged, and the connection goes on") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        auto res = co_await c.round_trip(make_request(beast_http::verb::get, "/boom"));
        CHECK(res.result() == Status::internal_server_error);
        CHECK(error_code_of(res) == "internal_error");
        // The exception's text stays in the log, not in the answer.
        CHECK(res.body().find("kaboom") == std::string::npos);
        CHECK(log.text().find("kaboom-internal-detail") != std::string::npos);
        auto next = co_await c.round_trip(make_request(beast_http::verb::get, "/echo"));
        CHECK(next.result() == Status::ok);
        CHECK(h.server.requests_rejected() == 1);
        CHECK(h.server.requests_served() == 1);
    });
}

TEST_CASE("http server: a long handler is not cut by read_timeout") {
    CapturedLog log;
    auto o = fast_options(log);
    o.read_timeout = 100ms;
    Harness h(o);
    h.run([&]() -> asio::awaitable<void> {
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        const auto start = Clock::now();
        auto res = co_await c.round_trip(make_request(beast_http::verb::get, "/slow"));
        CHECK(res.result() == Status::ok);
        CHECK(since(start) >= 300ms);
    });
}

TEST_CASE("http server: slow or silent clients are dropped after read_timeout") {
    CapturedLog log;
    auto o = fast_options(log);
    o.read_timeout = 150ms;
    Harness h(o);
    h.run([&]() -> asio::awaitable<void> {
        // Half a request: 408, then closed.
        auto half = co_await raw_exchange(h.endpoint(), "GET /echo HTTP/1.1\r\nHost: x\r\n");
        CHECK(half.answer.starts_with("HTTP/1.1 408 "));
        CHECK(raw_error_code(half.answer) == "request_timeout");
        CHECK(half.closed);
        CHECK(half.elapsed >= 140ms);
        CHECK(half.elapsed < 1s);
        // Nothing at all: closed without a word.
        auto silent = co_await raw_exchange(h.endpoint(), "");
        CHECK(silent.answer.empty());
        CHECK(silent.closed);
        CHECK(silent.elapsed >= 140ms);
        CHECK(silent.elapsed < 1s);
        CHECK(h.seen.calls == 0);
        CHECK(h.server.requests_rejected() == 1);
    });
}

TEST_CASE("http server: shutdown lets a running handler answer, closes idle ones, refuses new") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        auto ex = h.ioc.get_executor();
        Client idle(ex), busy(ex);
        co_await idle.connect(h.endpoint());
        const auto first = co_await idle.round_trip(make_request(beast_http::verb::get, "/echo"));
        CHECK(first.result() == Status::ok);
        co_await busy.connect(h.endpoint());
        co_await busy.send(make_request(beast_http::verb::get, "/slow"));
        co_await sleep_for(50ms);  // the handler is running now
        REQUIRE(h.seen.calls == 2);

        bool stopped = false;
        asio::co_spawn(ex, h.server.shutdown(2s), [&](std::exception_ptr) { stopped = true; });
        const bool idle_closed = co_await idle.sees_close(200ms);
        CHECK(idle_closed);
        CHECK_FALSE(stopped);

        beast::tcp_stream late(ex);
        late.expires_after(1s);
        auto [e_late] = co_await late.async_connect(h.endpoint(), tuple_awaitable);
        CHECK(e_late == asio::error::connection_refused);

        auto res = co_await busy.receive();
        CHECK(res.result() == Status::ok);
        CHECK_FALSE(res.keep_alive());
        busy.stream.close();
        for (int i = 0; i < 100 && !stopped; ++i) co_await sleep_for(5ms);
        CHECK(stopped);
        CHECK(h.server.open_connections() == 0);
        CHECK(h.seen.cancelled == 0);
    });
}

TEST_CASE("http server: after the grace period, shutdown cancels the handler and completes") {
    CapturedLog log;
    Harness h(fast_options(log));
    h.run([&]() -> asio::awaitable<void> {
        Client c(h.ioc.get_executor());
        co_await c.connect(h.endpoint());
        co_await c.send(make_request(beast_http::verb::get, "/forever"));
        co_await sleep_for(50ms);
        const auto start = Clock::now();
        co_await h.server.shutdown(100ms);
        CHECK(since(start) >= 90ms);
        CHECK(since(start) < 1s);
        CHECK(h.server.open_connections() == 0);
        CHECK(h.seen.cancelled == 1);
        const bool closed = co_await c.sees_close(200ms);  // no answer, just closed
        CHECK(closed);
        CHECK(log.text().find("grace of 100 ms over") != std::string::npos);
    });
}

TEST_CASE("http server: destroyed mid-request without shutdown, connections just end") {
    asio::io_context ioc;
    CapturedLog log;
    Seen seen;
    std::optional<Server> server;
    server.emplace(ioc.get_executor(), fast_options(log), test_handler(seen));
    REQUIRE(server->listen().has_value());
    server->start();
    const auto ep = server->local_endpoint();
    bool done = false;
    bool busy_closed = false, idle_closed = false;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            Client busy(ex), idle(ex);
            co_await busy.connect(ep);
            co_await busy.send(make_request(beast_http::verb::get, "/forever"));
            co_await idle.connect(ep);
            co_await sleep_for(50ms);
            server.reset();  // no goodbye: sockets closed, the running handler cancelled
            busy_closed = co_await busy.sees_close(1s);
            idle_closed = co_await idle.sees_close(1s);
            done = true;
        },
        [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);
        });
    ioc.run_for(3s);
    CHECK(done);
    CHECK(busy_closed);
    CHECK(idle_closed);
    CHECK(seen.cancelled == 1);
    CHECK(ioc.stopped());  // nothing of the server left running
}

TEST_CASE("http server: TLS round trip, verified against a self-signed certificate") {
    TempDir dir;
    const TlsFiles files = make_self_signed(dir);
    CapturedLog log;
    auto o = fast_options(log);
    o.tls = files;
    Harness h(o);
    CHECK(h.server.uses_tls());
    using TlsClient = beast::ssl_stream<beast::tcp_stream>;
    asio::ssl::context ctx(asio::ssl::context::tls_client);
    ctx.load_verify_file(files.cert_file);
    ctx.set_verify_mode(asio::ssl::verify_peer);
    // Connected, verified against the certificate as the only trust anchor, for "localhost".
    auto open = [&](TlsClient& s) -> asio::awaitable<void> {
        s.set_verify_callback(asio::ssl::host_name_verification("localhost"));
        // SNI (SSL_set_tlsext_host_name, without its C cast).
        char host[] = "localhost";
        REQUIRE(SSL_ctrl(s.native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                         host) == 1);
        beast::get_lowest_layer(s).expires_after(2s);
        co_await beast::get_lowest_layer(s).async_connect(h.endpoint(), asio::use_awaitable);
        co_await s.async_handshake(asio::ssl::stream_base::client, asio::use_awaitable);
    };
    h.run([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        TlsClient s(ex, ctx);
        co_await open(s);
        const std::string version = SSL_get_version(s.native_handle());
        CHECK((version == "TLSv1.2" || version == "TLSv1.3"));
        auto req = make_request(beast_http::verb::post, "/echo", R"({"secure":true})");
        co_await beast_http::async_write(s, req, asio::use_awaitable);
        beast::flat_buffer buffer;
        Response res;
        co_await beast_http::async_read(s, buffer, res, asio::use_awaitable);
        CHECK(res.result() == Status::ok);
        CHECK(json::serialize(body_json(res).as_object().at("echo")) == R"({"secure":true})");
        // Our close_notify is answered with the server's.
        auto [e_shut] = co_await s.async_shutdown(tuple_awaitable);
        CHECK_MESSAGE(!e_shut, e_shut.message());

        // Half a request over TLS: 408 as well (the deadline cancels the TLS read without
        // closing the connection).
        TlsClient slow(ex, ctx);
        co_await open(slow);
        const std::string half = "GET /echo HTTP/1.1\r\nHost: x\r\n";
        co_await asio::async_write(slow, asio::buffer(half), asio::use_awaitable);
        beast::flat_buffer slow_buffer;
        Response timed_out;
        co_await beast_http::async_read(slow, slow_buffer, timed_out, asio::use_awaitable);
        CHECK(timed_out.result() == Status::request_timeout);

        // Plain HTTP on the TLS port gets no HTTP answer.
        auto plain = co_await raw_exchange(h.endpoint(), "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
        CHECK_FALSE(plain.answer.starts_with("HTTP/"));
        CHECK(h.seen.calls == 1);
    });
}

TEST_CASE("http server: listen errors name the address or the file") {
    asio::io_context ioc;
    CapturedLog log;
    Seen seen;
    ServerOptions first_options = fast_options(log);
    Server first(ioc.get_executor(), first_options, test_handler(seen));
    REQUIRE(first.listen().has_value());
    const auto port = first.local_endpoint().port();
    CHECK(port != 0);
    CHECK_FALSE(first.listen().has_value());  // twice

    ServerOptions same = fast_options(log);
    same.port = port;
    Server second(ioc.get_executor(), same, test_handler(seen));
    auto r = second.listen();
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == boost::system::errc::address_in_use);
    CHECK(r.error().message.find("127.0.0.1:" + std::to_string(port)) != std::string::npos);

    ServerOptions bad_address = fast_options(log);
    bad_address.address = "localhost";
    Server third(ioc.get_executor(), bad_address, test_handler(seen));
    auto r3 = third.listen();
    REQUIRE_FALSE(r3.has_value());
    CHECK(r3.error().code == errc::invalid_argument);

    TempDir dir;
    ServerOptions missing = fast_options(log);
    missing.tls = TlsFiles();
    missing.tls->cert_file = dir.file("nope.pem");
    missing.tls->key_file = dir.file("nope.key");
    Server fourth(ioc.get_executor(), missing, test_handler(seen));
    auto r4 = fourth.listen();
    REQUIRE_FALSE(r4.has_value());
    CHECK(r4.error().code == errc::local_io_failed);
    CHECK(r4.error().message.find(dir.file("nope.pem")) != std::string::npos);

    CHECK_THROWS_AS(Server(ioc.get_executor(), ServerOptions(), Handler()), std::invalid_argument);
    Server never(ioc.get_executor(), fast_options(log), test_handler(seen));
    CHECK_THROWS_AS(never.start(), std::logic_error);
}

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
