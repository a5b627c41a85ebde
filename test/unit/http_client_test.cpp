// The outgoing HTTP client (guardia/http/client.hpp) against real loopback servers, plain and
// TLS (a throw-away self-signed certificate made here).
#include "guardia/http/client.hpp"
#include "guardia/http/health_probe.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <unistd.h>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>

using namespace guardia;
using namespace guardia::http;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace bhttp = boost::beast::http;
using asio::ip::tcp;
using std::chrono::milliseconds;

namespace {

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

// ------------------------------------------------------------------ a self-signed certificate

struct TestCert {
    std::string cert_pem;
    std::string key_pem;
};

std::string drain(BIO* bio) {
    std::string out(BIO_ctrl_pending(bio), '\0');
    REQUIRE(BIO_read(bio, out.data(), static_cast<int>(out.size())) ==
            static_cast<int>(out.size()));
    return out;
}

// A P-256 certificate for `san` ("IP:127.0.0.1,DNS:localhost"), its own issuer.
TestCert make_cert(const char* san) {
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
        EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"), EVP_PKEY_free);
    REQUIRE(key);
    std::unique_ptr<X509, decltype(&X509_free)> x(X509_new(), X509_free);
    REQUIRE(X509_set_version(x.get(), 2) == 1);
    ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 1);
    X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x.get()), 24 * 3600);
    REQUIRE(X509_set_pubkey(x.get(), key.get()) == 1);
    X509_NAME* name = X509_get_subject_name(x.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("guardia-test"), -1, -1, 0);
    REQUIRE(X509_set_issuer_name(x.get(), name) == 1);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x.get(), x.get(), nullptr, nullptr, 0);
    for (auto [nid, value] : {std::pair{NID_subject_alt_name, san},
                              std::pair{NID_basic_constraints, "critical,CA:TRUE"}}) {
        X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
        REQUIRE(ext != nullptr);
        X509_add_ext(x.get(), ext, -1);
        X509_EXTENSION_free(ext);
    }
    REQUIRE(X509_sign(x.get(), key.get(), EVP_sha256()) > 0);
    std::unique_ptr<BIO, decltype(&BIO_free)> c(BIO_new(BIO_s_mem()), BIO_free);
    std::unique_ptr<BIO, decltype(&BIO_free)> k(BIO_new(BIO_s_mem()), BIO_free);
    REQUIRE(PEM_write_bio_X509(c.get(), x.get()) == 1);
    REQUIRE(PEM_write_bio_PrivateKey(k.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) ==
            1);
    return TestCert{drain(c.get()), drain(k.get())};
}

struct TempFile {
    explicit TempFile(const std::string& content) {
        char tmpl[] = "/tmp/guardia-http-client-XXXXXX";
        const int fd = ::mkstemp(tmpl);
        REQUIRE(fd >= 0);
        ::close(fd);
        path = tmpl;
        std::ofstream(path) << content;
    }
    ~TempFile() { std::filesystem::remove(path); }
    std::string path;
};

// ------------------------------------------------------------------ a scripted server

struct Seen {
    std::string method, target, body;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string sni;
};

enum class Act { answer, never_answer, close };

// Answers every connection with the same script on 127.0.0.1, plain or TLS.
class Server {
  public:
    Server(asio::io_context& ioc, const TestCert* cert = nullptr)
        : ioc_(ioc),
          acceptor_(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
          hold_(ioc) {
        hold_.expires_at(std::chrono::steady_clock::time_point::max());
        if (cert) {
            tls_ = std::make_unique<ssl::context>(ssl::context::tls_server);
            tls_->use_certificate_chain(asio::buffer(cert->cert_pem));
            tls_->use_private_key(asio::buffer(cert->key_pem), ssl::context::pem);
        }
        asio::co_spawn(ioc_, accept_loop(), [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);
        });
    }
    std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
    void stop() {
        boost::system::error_code ec;
        acceptor_.close(ec);
        hold_.cancel();
    }

    Act act = Act::answer;
    int status = 200;
    std::string answer_body = "ok";
    int connections = 0;
    int handshake_failures = 0;
    Seen seen;

  private:
    asio::awaitable<void> accept_loop() {
        for (;;) {
            auto [ec, sock] = co_await acceptor_.async_accept(tuple_awaitable);
            if (ec) co_return;
            ++connections;
            asio::co_spawn(ioc_, serve(std::move(sock)), [](std::exception_ptr e) {
                if (e) std::rethrow_exception(e);
            });
        }
    }

    asio::awaitable<void> serve(tcp::socket sock) {
        if (!tls_) {
            co_await exchange(sock);
            co_return;
        }
        ssl::stream<tcp::socket> stream(std::move(sock), *tls_);
        auto [ec] = co_await stream.async_handshake(ssl::stream_base::server, tuple_awaitable);
        if (ec) {
            ++handshake_failures;
            co_return;
        }
        const char* sni = SSL_get_servername(stream.native_handle(), TLSEXT_NAMETYPE_host_name);
        seen.sni = sni ? sni : "";
        co_await exchange(stream);
    }

    template <class Stream>
    asio::awaitable<void> exchange(Stream& stream) {
        boost::beast::flat_buffer buffer;
        bhttp::request<bhttp::string_body> req;
        auto [e_r, n] = co_await bhttp::async_read(stream, buffer, req, tuple_awaitable);
        (void)n;
        if (e_r) co_return;
        seen.method = std::string(req.method_string());
        seen.target = std::string(req.target());
        seen.body = req.body();
        seen.headers.clear();
        for (const auto& f : req) {
            std::string name(f.name_string());
            for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            seen.headers[name] = std::string(f.value());
        }
        if (act == Act::close) co_return;
        if (act == Act::never_answer) {
            co_await hold_.async_wait(tuple_awaitable);
            co_return;
        }
        bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(status), 11};
        res.body() = answer_body;
        res.prepare_payload();
        co_await bhttp::async_write(stream, res, tuple_awaitable);
    }

    asio::io_context& ioc_;
    tcp::acceptor acceptor_;
    asio::steady_timer hold_;
    std::unique_ptr<ssl::context> tls_;
};

// Runs `body` to completion on `ioc` under a deadline; rethrows what it threw.
void run(asio::io_context& ioc, std::function<asio::awaitable<void>()> body) {
    bool done = false;
    std::exception_ptr error;
    asio::co_spawn(ioc, body(), [&](std::exception_ptr e) {
        done = true;
        error = e;
        ioc.stop();  // whatever the servers still hold is destroyed with the io_context
    });
    ioc.run_for(20s);
    REQUIRE(done);
    if (error) std::rethrow_exception(error);
}

}  // namespace

TEST_CASE("parse_url splits scheme, host, port and target; refuses what it cannot use") {
    auto u = parse_url("http://127.0.0.1:9000/hooks/pm?token=x");
    REQUIRE(u.has_value());
    CHECK_FALSE(u->https);
    CHECK(u->host == "127.0.0.1");
    CHECK(u->port == 9000);
    CHECK(u->target == "/hooks/pm?token=x");
    CHECK(u->display() == "http://127.0.0.1:9000/hooks/pm");  // never the query

    u = parse_url("HTTPS://Hooks.Example.com");
    REQUIRE(u.has_value());
    CHECK(u->https);
    CHECK(u->host == "hooks.example.com");
    CHECK(u->port == 443);
    CHECK(u->target == "/");
    CHECK(u->host_header() == "hooks.example.com:443");

    u = parse_url("http://[::1]:8080?x=1");
    REQUIRE(u.has_value());
    CHECK(u->host == "::1");
    CHECK(u->target == "/?x=1");
    CHECK(u->host_header() == "[::1]:8080");

    for (const char* bad :
         {"", "127.0.0.1:80/x", "ftp://host/", "http://", "http://:80/", "http://user:pw@host/",
          "http://host:0/", "http://host:65536/", "http://host:8o/", "http://host/a b",
          "http://host/#frag", "http://[::1/", "http://ho$t/"}) {
        CAPTURE(bad);
        auto r = parse_url(bad);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::invalid_argument);
    }
    auto creds = parse_url("http://user:secret@host/");
    REQUIRE_FALSE(creds.has_value());
    CHECK(creds.error().message.find("secret") == std::string::npos);
}

TEST_CASE("http_post sends the body and headers and returns any status as a value") {
    asio::io_context ioc;
    Server server(ioc);
    server.status = 500;
    server.answer_body = "boom";
    run(ioc, [&]() -> asio::awaitable<void> {
        HeaderList headers;
        headers.emplace_back("Content-Type", "application/json");
        headers.emplace_back("X-Token", "abc");
        auto r = co_await http_post(
            "http://127.0.0.1:" + std::to_string(server.port()) + "/hooks/pm?a=1", R"({"x":1})",
            headers, 5s);
        REQUIRE(r.has_value());
        CHECK(r->status == 500);
        CHECK(r->body == "boom");
        CHECK_FALSE(r->body_truncated);
        CHECK(server.seen.method == "POST");
        CHECK(server.seen.target == "/hooks/pm?a=1");
        CHECK(server.seen.body == R"({"x":1})");
        CHECK(server.seen.headers["content-type"] == "application/json");
        CHECK(server.seen.headers["x-token"] == "abc");
        CHECK(server.seen.headers["host"] == "127.0.0.1:" + std::to_string(server.port()));
        CHECK(server.seen.headers["connection"] == "close");
        CHECK(server.seen.headers["content-length"] == "7");

        // A long body is not read, the status still counts.
        server.status = 200;
        server.answer_body = std::string(100 * 1024, 'x');
        ClientOptions small;
        small.max_body = 1024;
        r = co_await http_post("http://127.0.0.1:" + std::to_string(server.port()) + "/", "", {},
                               5s, small);
        REQUIRE(r.has_value());
        CHECK(r->status == 200);
        CHECK(r->body_truncated);
        server.stop();
    });
}

TEST_CASE("http_post refuses bad headers without echoing their values") {
    asio::io_context ioc;
    run(ioc, [&]() -> asio::awaitable<void> {
        // Named lists, not braced temporaries: GCC 12 miscompiles those as coroutine arguments.
        HeaderList injected;
        injected.emplace_back("X-A", "Bearer s3cret\r\nX: y");
        HeaderList host;
        host.emplace_back("Host", "evil");
        HeaderList bad_name;
        bad_name.emplace_back("Bad Name", "v");
        auto r = co_await http_post("http://127.0.0.1:9/", "", injected, 1s);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::invalid_argument);
        CHECK(r.error().message.find("s3cret") == std::string::npos);
        r = co_await http_post("http://127.0.0.1:9/", "", host, 1s);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::invalid_argument);
        r = co_await http_post("http://127.0.0.1:9/", "", bad_name, 1s);
        REQUIRE_FALSE(r.has_value());
        r = co_await http_post("http://127.0.0.1:9/", "", {}, 0ms);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::invalid_argument);
    });
}

TEST_CASE("http_post failures name the URL without its query: refused, timeout, closed") {
    asio::io_context ioc;
    // A bound socket that does not listen: connections are refused, and the port is ours.
    tcp::acceptor closed(ioc);
    closed.open(tcp::v4());
    closed.bind(tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    const auto closed_port = std::to_string(closed.local_endpoint().port());
    Server server(ioc);
    const auto port = std::to_string(server.port());
    run(ioc, [&]() -> asio::awaitable<void> {
        auto r = co_await http_post("http://127.0.0.1:" + closed_port + "/x?key=k", "", {}, 2s);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::connect_failed);
        CHECK(r.error().message ==
              "POST http://127.0.0.1:" + closed_port + "/x: connection refused");

        server.act = Act::never_answer;
        const auto start = std::chrono::steady_clock::now();
        r = co_await http_post("http://127.0.0.1:" + port + "/slow", "", {}, 200ms);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::timeout);
        CHECK(std::chrono::steady_clock::now() - start < 2s);
        CHECK(r.error().message.find("POST http://127.0.0.1:" + port + "/slow: ") == 0);

        server.act = Act::close;
        r = co_await http_post("http://127.0.0.1:" + port + "/closed", "", {}, 2s);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::connection_lost);

        r = co_await http_post("http://no-such-host.invalid:80/", "", {}, 2s);
        REQUIRE_FALSE(r.has_value());
        CHECK((r.error().code == errc::connect_failed || r.error().code == errc::timeout));
        server.stop();
    });
}

TEST_CASE("http_post is cancellable: `post || timer` ends at the timer") {
    using namespace asio::experimental::awaitable_operators;
    asio::io_context ioc;
    Server server(ioc);
    server.act = Act::never_answer;
    run(ioc, [&]() -> asio::awaitable<void> {
        asio::steady_timer timer(ioc, 100ms);
        const auto start = std::chrono::steady_clock::now();
        auto v = co_await (
            http_post("http://127.0.0.1:" + std::to_string(server.port()) + "/", "", {}, 10s) ||
            timer.async_wait(tuple_awaitable));
        CHECK(v.index() == 1);
        CHECK(std::chrono::steady_clock::now() - start < 2s);
        server.stop();
    });
}

TEST_CASE("https: the peer must present a certificate trusted and naming the host") {
    const TestCert cert = make_cert("IP:127.0.0.1,DNS:localhost");
    const TempFile ca(cert.cert_pem);
    const TestCert other = make_cert("DNS:other.example");
    const TempFile other_ca(other.cert_pem);
    asio::io_context ioc;
    Server server(ioc, &cert);
    Server other_server(ioc, &other);
    const auto port = std::to_string(server.port());
    run(ioc, [&]() -> asio::awaitable<void> {
        auto trusted = make_tls_client_context(ca.path);
        REQUIRE(trusted.has_value());
        ClientOptions options;
        options.tls = *trusted;

        auto r = co_await http_post("https://127.0.0.1:" + port + "/tls", "{}", {}, 5s, options);
        REQUIRE(r.has_value());
        CHECK(r->status == 200);
        CHECK(server.seen.target == "/tls");
        CHECK(server.seen.sni.empty());  // no SNI for an address

        r = co_await http_post("https://localhost:" + port + "/named", "{}", {}, 5s, options);
        REQUIRE(r.has_value());
        CHECK(r->status == 200);
        CHECK(server.seen.sni == "localhost");

        // The system CA store does not know this certificate.
        r = co_await http_post("https://127.0.0.1:" + port + "/", "{}", {}, 5s);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::handshake_failed);
        CHECK(r.error().message.find("certificate") != std::string::npos);

        // Trusted, but for another name.
        auto wrong = make_tls_client_context(other_ca.path);
        REQUIRE(wrong.has_value());
        ClientOptions wrong_options;
        wrong_options.tls = *wrong;
        r = co_await http_post("https://127.0.0.1:" + std::to_string(other_server.port()) + "/",
                               "{}", {}, 5s, wrong_options);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::handshake_failed);
        other_server.stop();
        server.stop();
    });

    auto missing = make_tls_client_context("/nonexistent/ca.pem");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().message.find("/nonexistent/ca.pem") != std::string::npos);
}

// The HTTPS health probe shares the TLS setup above; here it meets the same TLS test server.
TEST_CASE("https health checks: CA file, server name, verification failures, insecure") {
    const TestCert cert = make_cert("IP:127.0.0.1,DNS:localhost");
    const TempFile ca(cert.cert_pem);
    asio::io_context ioc;
    Server server(ioc, &cert);
    server.answer_body = R"({"status":"UP"})";
    run(ioc, [&]() -> asio::awaitable<void> {
        HealthCheck c;
        c.kind = ProbeKind::https;
        c.host = "127.0.0.1";
        c.port = server.port();
        c.path = "/health";
        c.node = "web-07";
        c.interval = 20ms;
        c.request_timeout = 1s;
        c.timeout = 2s;
        c.ca_file = ca.path;
        c.body_contains = "UP";
        auto r = co_await wait_healthy(c);
        REQUIRE(r.has_value());
        CHECK(r->attempts == 1);
        CHECK(r->last_status == 200);
        CHECK(server.seen.target == "/health");
        CHECK(server.seen.sni.empty());  // no SNI for an address

        c.tls_server_name = "localhost";  // sent as SNI, and the name verified
        r = co_await wait_healthy(c);
        REQUIRE(r.has_value());
        CHECK(server.seen.sni == "localhost");

        // The failing checks make a single attempt (the interval is the whole timeout), so the
        // message names that attempt's outcome and not an attempt the deadline cut short: with
        // a short interval, a last attempt started just before the deadline ends in "no answer
        // within" on a loaded machine.
        const std::string prefix =
            "web-07: health check https://127.0.0.1:" + std::to_string(server.port()) +
            "/health not healthy after 30 s: 1 attempts, ";
        c.timeout = 30s;
        c.interval = 30s;
        c.request_timeout = 30s;
        c.tls_server_name = "other.example";
        r = co_await wait_healthy(c);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::timeout);
        CAPTURE(r.error().message);
        CHECK(r.error().message.starts_with(prefix));
        CHECK(r.error().message.ends_with(
            "last: TLS handshake failed: certificate rejected: hostname mismatch"));

        c.tls_server_name.clear();
        c.ca_file.clear();  // the system store alone does not know the test certificate
        r = co_await wait_healthy(c);
        REQUIRE_FALSE(r.has_value());
        CAPTURE(r.error().message);
        CHECK(r.error().message.find("last: TLS handshake failed: certificate rejected: "
                                     "self-signed certificate") != std::string::npos);

        c.insecure_skip_verify = true;  // asked for by name: no verification at all
        r = co_await wait_healthy(c);
        REQUIRE(r.has_value());
        CHECK(r->last_status == 200);

        c.body_contains = "DOWN";  // still a real answer that must pass the body check
        r = co_await wait_healthy(c);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message ==
              prefix + "last: HTTP 200 but the body does not contain 'DOWN'");
        server.stop();
    });
}
