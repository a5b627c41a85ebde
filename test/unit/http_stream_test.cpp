// Streamed answers of the embedded HTTP server (Reply with a producer, server.hpp): the head,
// chunks as they come, close-delimited; the stream ends when the producer ends, the peer goes
// away, or shutdown begins (at once, not after the grace).
#include "guardia/http/server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>

using namespace guardia::http;
using namespace std::chrono_literals;
namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

struct Seen {
    int producers_cancelled = 0;
};

asio::awaitable<void> pause(milliseconds d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

// /short: three chunks "c0" "c1" "c2", then the end. /endless: a chunk every 20 ms, forever.
StreamingHandler stream_handler(Seen& seen) {
    return [&seen](Request req) -> asio::awaitable<Reply> {
        Response head{beast_http::status::ok, req.version()};
        head.set(beast_http::field::content_type, "text/event-stream");
        head.set(beast_http::field::cache_control, "no-cache");
        const bool endless = req.target() == "/endless";
        auto n = std::make_shared<int>(0);
        StreamProducer next = [&seen, n, endless]() -> asio::awaitable<std::optional<std::string>> {
            if (!endless && *n == 3) co_return std::nullopt;
            asio::steady_timer t(co_await asio::this_coro::executor, endless ? 20ms : 1ms);
            auto [ec] = co_await t.async_wait(tuple_awaitable);
            if (ec) {
                ++seen.producers_cancelled;
                throw boost::system::system_error(ec);
            }
            std::string chunk = "c";  // not "c" + std::to_string: GCC bug 105329 at -O3
            chunk += std::to_string((*n)++);
            co_return chunk;
        };
        co_return Reply(std::move(head), std::move(next));
    };
}

struct Harness {
    Harness() {
        ServerOptions o;
        o.write_timeout = 1s;
        server = std::make_unique<Server>(ioc.get_executor(), o, stream_handler(seen));
        auto r = server->listen();
        REQUIRE(r.has_value());
        server->start();
    }
    void run(std::function<asio::awaitable<void>()> test) {
        bool done = false;
        std::exception_ptr failure;
        asio::co_spawn(ioc, test(), [&](std::exception_ptr e) {
            done = true;
            failure = e;
        });
        ioc.run_for(5s);
        if (failure) std::rethrow_exception(failure);
        REQUIRE_MESSAGE(done, "the test did not finish in time");
    }
    asio::io_context ioc;
    Seen seen;
    std::unique_ptr<Server> server;
};

// Sends a GET and reads the head; returns the head text, leaves the rest in `buf`.
asio::awaitable<std::string> open(tcp::socket& s, tcp::endpoint ep, const std::string& target,
                                  std::string& buf) {
    co_await s.async_connect(ep, asio::use_awaitable);
    const std::string req = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    co_await asio::async_write(s, asio::buffer(req), asio::use_awaitable);
    const auto n = co_await asio::async_read_until(s, asio::dynamic_buffer(buf), "\r\n\r\n",
                                                   asio::use_awaitable);
    std::string head = buf.substr(0, n);
    buf.erase(0, n);
    co_return head;
}

}  // namespace

TEST_CASE("http stream: head without length, chunks as they come, close at the end") {
    Harness h;
    h.run([&]() -> asio::awaitable<void> {
        tcp::socket s(h.ioc);
        std::string buf;
        const std::string head = co_await open(s, h.server->local_endpoint(), "/short", buf);
        CHECK(head.rfind("HTTP/1.1 200", 0) == 0);
        CHECK(head.find("Content-Type: text/event-stream") != std::string::npos);
        CHECK(head.find("Cache-Control: no-cache") != std::string::npos);
        CHECK(head.find("Content-Length") == std::string::npos);
        CHECK(head.find("Connection: close") != std::string::npos);
        auto [ec, n] = co_await asio::async_read(s, asio::dynamic_buffer(buf), tuple_awaitable);
        (void)n;
        CHECK(ec == asio::error::eof);
        CHECK(buf == "c0c1c2");
        s.close();
        for (int i = 0; i < 100 && h.server->open_connections() > 0; ++i) co_await pause(10ms);
        CHECK(h.server->open_streams() == 0);
        co_await h.server->shutdown(1s);
    });
}

TEST_CASE("http stream: the peer going away stops the producer") {
    Harness h;
    h.run([&]() -> asio::awaitable<void> {
        std::string buf;
        {
            tcp::socket s(h.ioc);
            (void)co_await open(s, h.server->local_endpoint(), "/endless", buf);
            while (buf.find("c1") == std::string::npos)
                co_await asio::async_read(s, asio::dynamic_buffer(buf), asio::transfer_at_least(1),
                                          asio::use_awaitable);
            CHECK(h.server->open_streams() == 1);
        }  // closed here
        for (int i = 0; i < 100 && h.server->open_connections() > 0; ++i) co_await pause(10ms);
        CHECK(h.server->open_connections() == 0);
        CHECK(h.server->open_streams() == 0);
        CHECK(h.seen.producers_cancelled == 1);
        co_await h.server->shutdown(1s);
    });
}

TEST_CASE("http stream: shutdown ends streams at once, not after the grace") {
    Harness h;
    h.run([&]() -> asio::awaitable<void> {
        tcp::socket s(h.ioc);
        std::string buf;
        (void)co_await open(s, h.server->local_endpoint(), "/endless", buf);
        while (buf.find("c0") == std::string::npos)
            co_await asio::async_read(s, asio::dynamic_buffer(buf), asio::transfer_at_least(1),
                                      asio::use_awaitable);
        const auto start = Clock::now();
        co_await h.server->shutdown(3s);
        CHECK(Clock::now() - start < 500ms);
        auto [ec, n] = co_await asio::async_read(s, asio::dynamic_buffer(buf), tuple_awaitable);
        (void)n;
        CHECK((ec == asio::error::eof || ec == asio::error::connection_reset));
        CHECK(h.server->open_streams() == 0);
        CHECK(h.seen.producers_cancelled == 1);
    });
}
