#include "guardia/http/health_probe.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <doctest/doctest.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

using namespace guardia;
using namespace guardia::http;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace bhttp = boost::beast::http;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// What the test server does with one connection (the n-th connection follows step n; the
// last step repeats).
struct Step {
    enum class Act { answer, close_silently, never_answer };
    Act act = Act::answer;
    int status = 200;
    milliseconds delay{0};  // before answering
    std::size_t body_size = 2;
};

Step answer(int status) {
    Step s;
    s.status = status;
    return s;
}
Step slow(int status, milliseconds delay) {
    Step s = answer(status);
    s.delay = delay;
    return s;
}
Step close_silently() {
    Step s;
    s.act = Step::Act::close_silently;
    return s;
}
Step never_answer() {
    Step s;
    s.act = Step::Act::never_answer;
    return s;
}
Step big_body(std::size_t size) {
    Step s = answer(200);
    s.body_size = size;
    return s;
}
std::vector<Step> statuses(std::initializer_list<int> list) {
    std::vector<Step> out;
    for (int s : list) out.push_back(answer(s));
    return out;
}

// A scripted HTTP/1.1 server on 127.0.0.1, port 0. stop() closes the acceptor and releases
// every connection held open, so the io_context runs out of work.
class TestServer {
public:
    TestServer(asio::io_context& ioc, std::vector<Step> script)
        : ioc_(ioc), script_(std::move(script)), acceptor_(ioc), stop_(ioc) {
        tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
        acceptor_.open(ep.protocol());
        acceptor_.set_option(tcp::acceptor::reuse_address(true));
        acceptor_.bind(ep);
        acceptor_.listen();
        port_ = acceptor_.local_endpoint().port();
        stop_.expires_at(Clock::time_point::max());
        asio::co_spawn(ioc_, accept_loop(), [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);
        });
    }

    std::uint16_t port() const { return port_; }
    int requests() const { return requests_; }
    const std::string& last_target() const { return last_target_; }
    const std::string& last_host() const { return last_host_; }
    const std::string& last_connection() const { return last_connection_; }

    void stop() {
        boost::system::error_code ec;
        acceptor_.close(ec);
        stop_.cancel();
    }

private:
    asio::awaitable<void> accept_loop() {
        for (;;) {
            auto [ec, sock] = co_await acceptor_.async_accept(asio::as_tuple(asio::use_awaitable));
            if (ec) co_return;
            asio::co_spawn(ioc_, serve(std::move(sock)), [](std::exception_ptr e) {
                if (e) std::rethrow_exception(e);
            });
        }
    }

    asio::awaitable<void> serve(tcp::socket sock) {
        const auto index = static_cast<std::size_t>(requests_++);
        const Step step = script_[std::min(index, script_.size() - 1)];
        boost::beast::flat_buffer buffer;
        bhttp::request<bhttp::string_body> req;
        auto [e_r, n] = co_await bhttp::async_read(sock, buffer, req,
                                                   asio::as_tuple(asio::use_awaitable));
        (void)n;
        if (e_r) co_return;
        last_target_ = std::string(req.target());
        last_host_ = std::string(req[bhttp::field::host]);
        last_connection_ = std::string(req[bhttp::field::connection]);
        boost::system::error_code ec;
        if (step.act == Step::Act::close_silently) {
            sock.close(ec);
            co_return;
        }
        if (step.act == Step::Act::never_answer) {
            // Hold the connection open until the test ends.
            co_await stop_.async_wait(asio::as_tuple(asio::use_awaitable));
            co_return;
        }
        if (step.delay > 0ms) {
            asio::steady_timer t(ioc_, step.delay);
            co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
        }
        bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(step.status), 11};
        res.body() = std::string(step.body_size, 'x');
        res.keep_alive(false);
        res.prepare_payload();
        co_await bhttp::async_write(sock, res, asio::as_tuple(asio::use_awaitable));
        sock.shutdown(tcp::socket::shutdown_both, ec);
    }

    asio::io_context& ioc_;
    std::vector<Step> script_;
    tcp::acceptor acceptor_;
    asio::steady_timer stop_;
    std::uint16_t port_ = 0;
    int requests_ = 0;
    std::string last_target_;
    std::string last_host_;
    std::string last_connection_;
};

// A loopback port with nobody listening.
std::uint16_t closed_port() {
    asio::io_context ioc;
    tcp::acceptor a(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    return a.local_endpoint().port();
}

HealthCheck fast_check(std::uint16_t port) {
    HealthCheck c;
    c.host = "127.0.0.1";
    c.port = port;
    c.path = "/health";
    c.node = "web-07";
    c.interval = 20ms;
    c.request_timeout = 200ms;
    c.timeout = 2s;
    return c;
}

// Runs `task` to completion under a deadline, then stops the server.
template <class T>
std::optional<T> run(asio::io_context& ioc, TestServer* server, asio::awaitable<T> task,
                     milliseconds deadline = 5s) {
    std::optional<T> out;
    asio::co_spawn(ioc, std::move(task), [&](std::exception_ptr e, T v) {
        if (server) server->stop();
        if (e) std::rethrow_exception(e);
        out = std::move(v);
    });
    ioc.run_for(deadline);
    return out;
}

std::optional<Result<HealthOutcome>> run_check(asio::io_context& ioc, TestServer& server,
                                               const HealthCheck& check) {
    return run(ioc, &server, wait_healthy(check));
}

}  // namespace

TEST_SUITE("health_probe") {
    TEST_CASE("healthy at once: one GET with Host and Connection: close") {
        asio::io_context ioc;
        TestServer server(ioc, statuses({200}));
        auto r = run_check(ioc, server, fast_check(server.port()));
        REQUIRE(r.has_value());
        REQUIRE(r->has_value());
        CHECK((*r)->attempts == 1);
        CHECK((*r)->last_status == 200);
        CHECK((*r)->last_error.empty());
        CHECK((*r)->elapsed < 1s);
        CHECK(server.requests() == 1);
        CHECK(server.last_target() == "/health");
        CHECK(server.last_host() == "127.0.0.1:" + std::to_string(server.port()));
        CHECK(server.last_connection() == "close");
    }

    TEST_CASE("503 twice then 200") {
        asio::io_context ioc;
        TestServer server(ioc, statuses({503, 503, 200}));
        auto r = run_check(ioc, server, fast_check(server.port()));
        REQUIRE(r.has_value());
        REQUIRE(r->has_value());
        CHECK((*r)->attempts == 3);
        CHECK((*r)->last_status == 200);
        CHECK((*r)->last_error == "HTTP 503");
        // Two intervals of 20 ms at least.
        CHECK((*r)->elapsed >= 40ms);
    }

    TEST_CASE("strict mode needs consecutive 200s") {
        asio::io_context ioc;
        SUBCASE("three 200s in a row: three attempts") {
            TestServer server(ioc, statuses({200}));
            auto check = fast_check(server.port());
            check.required_consecutive = 3;
            auto r = run_check(ioc, server, check);
            REQUIRE(r.has_value());
            REQUIRE(r->has_value());
            CHECK((*r)->attempts == 3);
        }
        SUBCASE("200,200,503,200,200,200: six attempts") {
            TestServer server(ioc, statuses({200, 200, 503, 200, 200, 200}));
            auto check = fast_check(server.port());
            check.required_consecutive = 3;
            auto r = run_check(ioc, server, check);
            REQUIRE(r.has_value());
            REQUIRE(r->has_value());
            CHECK((*r)->attempts == 6);
            CHECK(server.requests() == 6);
        }
    }

    TEST_CASE("never 200: timeout naming node, URL, attempts and last status") {
        asio::io_context ioc;
        TestServer server(ioc, statuses({503}));
        auto check = fast_check(server.port());
        check.timeout = 300ms;
        check.interval = 50ms;
        const auto start = Clock::now();
        auto r = run_check(ioc, server, check);
        const auto took = Clock::now() - start;
        REQUIRE(r.has_value());
        REQUIRE_FALSE(r->has_value());
        const auto& e = r->error();
        CHECK(e.code == errc::timeout);
        const std::string url = "http://127.0.0.1:" + std::to_string(server.port()) + "/health";
        CHECK(e.message == "web-07: health check " + url + " not healthy after 0.3 s: " +
                               std::to_string(server.requests()) + " attempts, last: HTTP 503");
        // Attempts at 0, 50, ... 250 ms on an idle machine; under load the timer wakes late
        // and fewer fit, so only the bounds that hold on any machine are checked: never more
        // than the interval allows, and the loop goes on until the next attempt would start
        // after the deadline (the last one started at 250 ms or later).
        CHECK(server.requests() >= 1);
        CHECK(server.requests() <= 6);
        CHECK(took >= 250ms);
        CHECK(took < 10s);
    }

    TEST_CASE("a server that never answers: per-request timeouts, then the overall timeout") {
        asio::io_context ioc;
        TestServer server(ioc, {never_answer()});
        auto check = fast_check(server.port());
        check.request_timeout = 100ms;
        check.timeout = 350ms;
        const auto start = Clock::now();
        auto r = run_check(ioc, server, check);
        const auto took = Clock::now() - start;
        REQUIRE(r.has_value());
        REQUIRE_FALSE(r->has_value());
        CHECK(r->error().code == errc::timeout);
        CHECK(r->error().message.find("last: no answer within") != std::string::npos);
        // Attempts start at about 0, 100, 200 and 300 ms; the last one is capped at 350 ms.
        CHECK(server.requests() >= 3);
        CHECK(server.requests() <= 4);
        CHECK(took >= 300ms);
        CHECK(took < 800ms);
    }

    TEST_CASE("a slow answer counts as a failed attempt") {
        asio::io_context ioc;
        TestServer server(ioc, {slow(200, 300ms), answer(200)});
        auto check = fast_check(server.port());
        check.request_timeout = 100ms;
        auto r = run_check(ioc, server, check);
        REQUIRE(r.has_value());
        REQUIRE(r->has_value());
        CHECK((*r)->attempts == 2);
        CHECK((*r)->last_error == "no answer within 0.1 s");
    }

    TEST_CASE("a connection closed without an answer is a failed attempt") {
        asio::io_context ioc;
        TestServer server(ioc, {close_silently(), answer(200)});
        auto r = run_check(ioc, server, fast_check(server.port()));
        REQUIRE(r.has_value());
        REQUIRE(r->has_value());
        CHECK((*r)->attempts == 2);
        CHECK((*r)->last_error == "connection closed without an answer");
    }

    TEST_CASE("connection refused") {
        asio::io_context ioc;
        const auto port = closed_port();
        SUBCASE("wait_healthy says so") {
            auto check = fast_check(port);
            check.timeout = 150ms;
            auto r = run(ioc, nullptr, wait_healthy(check));
            REQUIRE(r.has_value());
            REQUIRE_FALSE(r->has_value());
            CHECK(r->error().code == errc::timeout);
            CHECK(r->error().message.find("last: connection refused") != std::string::npos);
        }
        SUBCASE("http_get_status: connect_failed") {
            auto r = run(ioc, nullptr, http_get_status("127.0.0.1", port, "/", 500ms));
            REQUIRE(r.has_value());
            REQUIRE_FALSE(r->has_value());
            CHECK(r->error().code == errc::connect_failed);
            CHECK(r->error().message ==
                  "GET http://127.0.0.1:" + std::to_string(port) + "/: connection refused");
        }
    }

    TEST_CASE("cancellation completes promptly") {
        using namespace asio::experimental::awaitable_operators;
        asio::io_context ioc;
        SUBCASE("operator || with a timer, the probe waiting for an answer") {
            TestServer server(ioc, {never_answer()});
            auto check = fast_check(server.port());
            check.timeout = 10s;
            check.request_timeout = 5s;
            const auto start = Clock::now();
            auto r = run(ioc, &server, [](HealthCheck c) -> asio::awaitable<std::size_t> {
                asio::steady_timer t(co_await asio::this_coro::executor, 100ms);
                auto v = co_await (wait_healthy(c) || t.async_wait(asio::use_awaitable));
                co_return v.index();
            }(check));
            const auto took = Clock::now() - start;
            REQUIRE(r.has_value());
            CHECK(*r == 1);
            CHECK(took < 1s);
        }
        SUBCASE("the cancelled probe reports errc::cancelled, mid-request and mid-interval") {
            // Mid-request: the server never answers. Mid-interval: 503 with a long interval.
            for (bool mid_request : {true, false}) {
                asio::io_context ctx;
                TestServer server(ctx, {mid_request ? never_answer() : answer(503)});
                auto check = fast_check(server.port());
                check.timeout = 10s;
                check.interval = 5s;
                check.request_timeout = 5s;
                const auto start = Clock::now();
                auto r = run(ctx, &server, [](HealthCheck c) -> asio::awaitable<Result<HealthOutcome>> {
                    auto ex = co_await asio::this_coro::executor;
                    asio::steady_timer t(ex, 100ms);
                    auto [order, e, probe, e_t] =
                        co_await asio::experimental::make_parallel_group(
                            asio::co_spawn(ex, wait_healthy(c), asio::deferred),
                            t.async_wait(asio::deferred))
                            .async_wait(asio::experimental::wait_for_one(), asio::use_awaitable);
                    (void)order;
                    (void)e_t;
                    if (e) std::rethrow_exception(e);
                    co_return probe;
                }(check));
                const auto took = Clock::now() - start;
                REQUIRE(r.has_value());
                REQUIRE_FALSE(r->has_value());
                CHECK(r->error().code == errc::cancelled);
                CHECK(r->error().message.find("web-07: health check") == 0);
                CHECK(r->error().message.find("cancelled after 1 attempts") != std::string::npos);
                CHECK(took < 1s);
            }
        }
    }

    TEST_CASE("flapping server") {
        asio::io_context ioc;
        SUBCASE("strict mode never sees three 200s in a row: timeout") {
            TestServer server(ioc, statuses({200, 503, 200, 200, 503, 200, 503, 200, 200, 503,
                                             200, 503, 200, 200, 503, 200, 503, 200, 200, 503}));
            auto check = fast_check(server.port());
            check.required_consecutive = 3;
            check.timeout = 250ms;
            auto r = run_check(ioc, server, check);
            REQUIRE(r.has_value());
            REQUIRE_FALSE(r->has_value());
            CHECK(r->error().code == errc::timeout);
            const auto& m = r->error().message;
            const bool last_ok = m.find("last: HTTP 200 (") != std::string::npos &&
                                 m.find(" of 3 consecutive)") != std::string::npos;
            CHECK((last_ok || m.find("last: HTTP 503") != std::string::npos));
        }
        SUBCASE("then stable: healthy on the third 200 in a row") {
            TestServer server(ioc, statuses({200, 503, 200, 200, 503, 200, 200, 200}));
            auto check = fast_check(server.port());
            check.required_consecutive = 3;
            auto r = run_check(ioc, server, check);
            REQUIRE(r.has_value());
            REQUIRE(r->has_value());
            CHECK((*r)->attempts == 8);
            CHECK((*r)->last_error == "HTTP 503");
        }
        SUBCASE("non-strict mode takes the first 200") {
            TestServer server(ioc, statuses({503, 200, 503}));
            auto r = run_check(ioc, server, fast_check(server.port()));
            REQUIRE(r.has_value());
            REQUIRE(r->has_value());
            CHECK((*r)->attempts == 2);
        }
    }

    TEST_CASE("http_get_status returns any status as a value") {
        asio::io_context ioc;
        TestServer server(ioc, statuses({404}));
        auto r = run(ioc, &server, http_get_status("127.0.0.1", server.port(), "/x?y=1", 1s));
        REQUIRE(r.has_value());
        REQUIRE(r->has_value());
        CHECK(**r == 404);
        CHECK(server.last_target() == "/x?y=1");
    }

    TEST_CASE("an oversized answer body is refused, not read") {
        asio::io_context ioc;
        TestServer server(ioc, {big_body(max_response_body + 1)});
        auto r = run(ioc, &server, http_get_status("127.0.0.1", server.port(), "/", 1s));
        REQUIRE(r.has_value());
        REQUIRE_FALSE(r->has_value());
        CHECK(r->error().code == bhttp::error::body_limit);
        CHECK(r->error().message.find("answer body over 64 KiB") != std::string::npos);
    }

    TEST_CASE("unusable checks are refused before any I/O") {
        asio::io_context ioc;
        auto check = fast_check(8080);
        SUBCASE("path without a leading slash") { check.path = "health"; }
        SUBCASE("path with a newline") { check.path = "/h\r\nX: y"; }
        SUBCASE("port 0") { check.port = 0; }
        SUBCASE("zero interval") { check.interval = 0ms; }
        SUBCASE("required_consecutive 0") { check.required_consecutive = 0; }
        auto r = run(ioc, nullptr, wait_healthy(check));
        REQUIRE(r.has_value());
        REQUIRE_FALSE(r->has_value());
        CHECK(r->error().code == errc::invalid_argument);
        CHECK(r->error().message.find("web-07") == 0);
    }

    TEST_CASE("status sets: entries, ranges, matching and refusals") {
        StatusSet set;
        CHECK(set.is_default());
        CHECK(set.contains(200));
        CHECK_FALSE(set.contains(204));
        CHECK(set.describe() == "200");

        REQUIRE(add_status_entry(set, std::int64_t{204}).has_value());
        CHECK_FALSE(set.is_default());
        CHECK_FALSE(set.contains(200));  // the first entry replaces the default
        CHECK(set.contains(204));
        REQUIRE(add_status_entry(set, "300-399").has_value());
        REQUIRE(add_status_entry(set, "200").has_value());
        CHECK(set.contains(200));
        CHECK(set.contains(300));
        CHECK(set.contains(399));
        CHECK_FALSE(set.contains(400));
        CHECK_FALSE(set.contains(299));
        CHECK(set.describe() == "204, 300-399, 200");

        struct Bad {
            const char* text;
            const char* problem;
        };
        for (auto [text, problem] :
             {Bad{"99", "from 100 to 599"}, Bad{"600", "from 100 to 599"},
              Bad{"2xx", "a status (\"204\") or a range"}, Bad{"", "a status"},
              Bad{"200-", "a status"}, Bad{"-200", "a status"}, Bad{"299-200", "LOW <= HIGH"},
              Bad{"050-200", "within 100-599"}, Bad{"200-700", "within 100-599"},
              Bad{" 200", "a status"}, Bad{"200-299-300", "a status"}}) {
            CAPTURE(text);
            StatusSet s;
            auto r = add_status_entry(s, std::string_view(text));
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().message.find(problem) != std::string::npos);
            CHECK(s.is_default());
        }
        StatusSet s;
        CHECK_FALSE(add_status_entry(s, std::int64_t{1000}).has_value());
    }

    TEST_CASE("answers: status set and body condition, with the reason of a refusal") {
        HealthCheck c;
        std::string why;
        CHECK(answer_accepted(c, 200, "anything", why));
        CHECK(why == "HTTP 200");
        CHECK_FALSE(answer_accepted(c, 503, "", why));
        CHECK(why == "HTTP 503");  // the default set: no "(expected ...)" noise

        REQUIRE(add_status_entry(c.expect_status, std::int64_t{204}).has_value());
        CHECK_FALSE(answer_accepted(c, 200, "", why));
        CHECK(why == "HTTP 200 (expected 204)");
        CHECK(answer_accepted(c, 204, "", why));

        HealthCheck b;
        b.body_contains = "\"status\":\"UP\"";
        CHECK(answer_accepted(b, 200, R"({"status":"UP","version":"7"})", why));
        CHECK_FALSE(answer_accepted(b, 200, R"({"status":"DOWN"})", why));
        CHECK(why == "HTTP 200 but the body does not contain '\"status\":\"UP\"'");
        CHECK_FALSE(answer_accepted(b, 503, R"({"status":"UP"})", why));
        CHECK(why == "HTTP 503");
    }

    TEST_CASE("probe kinds: names and targets") {
        ProbeKind k = ProbeKind::http;
        CHECK(parse_probe_kind("https", k));
        CHECK(k == ProbeKind::https);
        CHECK(parse_probe_kind("tcp", k));
        CHECK(parse_probe_kind("command", k));
        CHECK(k == ProbeKind::command);
        CHECK_FALSE(parse_probe_kind("HTTP", k));
        CHECK_FALSE(parse_probe_kind("", k));
        HealthCheck c = fast_check(8443);
        CHECK(describe_target(c) == "http://127.0.0.1:8443/health");
        c.kind = ProbeKind::https;
        CHECK(describe_target(c) == "https://127.0.0.1:8443/health");
        c.kind = ProbeKind::tcp;
        CHECK(describe_target(c) == "tcp://127.0.0.1:8443");
        c.kind = ProbeKind::command;
        c.command = "test -f /app/x";
        CHECK(describe_target(c) == "command 'test -f /app/x'");
    }

    TEST_CASE("expect_status: a 503 can be what is expected, a 200 then is not") {
        asio::io_context ioc;
        TestServer server(ioc, statuses({200, 503}));
        auto check = fast_check(server.port());
        REQUIRE(add_status_entry(check.expect_status, "500-503").has_value());
        auto r = run_check(ioc, server, check);
        REQUIRE(r.has_value());
        REQUIRE(r->has_value());
        CHECK((*r)->attempts == 2);
        CHECK((*r)->last_status == 503);
        CHECK((*r)->last_error == "HTTP 200 (expected 500-503)");
    }

    TEST_CASE("body_contains: a body without the text is never healthy") {
        asio::io_context ioc;
        TestServer server(ioc, statuses({200}));
        auto check = fast_check(server.port());
        check.timeout = 300ms;
        SUBCASE("present") {
            check.body_contains = "xx";  // the test server's body is "xx"
            auto r = run_check(ioc, server, check);
            REQUIRE(r.has_value());
            REQUIRE(r->has_value());
            CHECK((*r)->attempts == 1);
        }
        SUBCASE("absent") {
            check.body_contains = "UP";
            auto r = run_check(ioc, server, check);
            REQUIRE(r.has_value());
            REQUIRE_FALSE(r->has_value());
            CHECK(r->error().code == errc::timeout);
            CAPTURE(r->error().message);
            CHECK(r->error().message.find("web-07: health check http://127.0.0.1:") == 0);
            CHECK(r->error().message.ends_with("last: HTTP 200 but the body does not contain 'UP'"));
        }
    }

    TEST_CASE("tcp: a connect is healthy, a closed port is not") {
        asio::io_context ioc;
        SUBCASE("listening") {
            TestServer server(ioc, statuses({200}));
            auto check = fast_check(server.port());
            check.kind = ProbeKind::tcp;
            auto r = run_check(ioc, server, check);
            REQUIRE(r.has_value());
            REQUIRE(r->has_value());
            CHECK((*r)->attempts == 1);
        }
        SUBCASE("closed") {
            const auto port = closed_port();
            auto check = fast_check(port);
            check.kind = ProbeKind::tcp;
            check.timeout = 200ms;
            auto r = run(ioc, nullptr, wait_healthy(check));
            REQUIRE(r.has_value());
            REQUIRE_FALSE(r->has_value());
            CHECK(r->error().code == errc::timeout);
            CHECK(r->error().message.find("web-07: health check tcp://127.0.0.1:" +
                                          std::to_string(port) + " not healthy after") == 0);
            CHECK(r->error().message.ends_with("last: connection refused"));
        }
    }

    TEST_CASE("a caller's attempts (command checks): strict mode, per-attempt limit, message") {
        asio::io_context ioc;
        auto check = fast_check(0);
        check.kind = ProbeKind::command;
        check.command = "test -f /app/app.bin";
        check.required_consecutive = 2;
        std::vector<int> exits{1, 0, 1, 0, 0};
        std::size_t calls = 0;
        std::vector<milliseconds> limits;
        AttemptFn attempt = [&](milliseconds limit) -> asio::awaitable<Attempt> {
            limits.push_back(limit);
            Attempt a;
            a.status = exits[std::min(calls++, exits.size() - 1)];
            a.ok = a.status == 0;
            a.reason = "exit " + std::to_string(a.status);
            co_return a;
        };
        SUBCASE("healthy after two consecutive successes") {
            auto r = run(ioc, nullptr, wait_healthy(check, attempt));
            REQUIRE(r.has_value());
            REQUIRE(r->has_value());
            CHECK((*r)->attempts == 5);
            CHECK((*r)->last_error == "exit 1");
            for (auto l : limits) CHECK(l <= check.request_timeout);
        }
        SUBCASE("never: the message names the command and the last failure") {
            exits = {3};
            check.timeout = 100ms;
            auto r = run(ioc, nullptr, wait_healthy(check, attempt));
            REQUIRE(r.has_value());
            REQUIRE_FALSE(r->has_value());
            CHECK(r->error().code == errc::timeout);
            CAPTURE(r->error().message);
            CHECK(r->error().message.find(
                      "web-07: health check command 'test -f /app/app.bin' not healthy after") == 0);
            CHECK(r->error().message.ends_with("last: exit 3"));
        }
        SUBCASE("without a runner, a command check is refused") {
            auto r = run(ioc, nullptr, wait_healthy(check));
            REQUIRE(r.has_value());
            REQUIRE_FALSE(r->has_value());
            CHECK(r->error().code == errc::invalid_argument);
        }
    }
}
