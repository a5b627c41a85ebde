// The webhook notifier (guardia/service/notifier.hpp): configuration, rendering, and
// delivery from the store's outbox to a real receiver on 127.0.0.1, with retries, give-up,
// restart and shutdown. Delays are tens of milliseconds, so the file runs in a few seconds.
#include "guardia/service/notifier.hpp"
#include "guardia/service/webhook_signature.hpp"
#include "../support/captured_log.hpp"
#include "../support/fleet.hpp"

#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <doctest/doctest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <chrono>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <sys/stat.h>

using namespace guardia;
using namespace guardia::service;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace json = boost::json;
namespace bhttp = boost::beast::http;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

using guardia::test::CapturedLog;
using guardia::test::TempDir;

namespace {

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);
constexpr std::string_view secret = "Bearer s3cret-7f3a9c";

std::string file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// ------------------------------------------------------------------ the test receiver

struct Request {
    std::string target, body;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string header(const std::string& name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    }
};

struct Answer {
    int status = 200;
    std::string body = "ok";
    bool hold = false;  // never answer (until the test ends)
};

Answer status(int s, std::string body = "ok") {
    Answer a;
    a.status = s;
    a.body = std::move(body);
    return a;
}

// A webhook receiver on 127.0.0.1. Down = the port is bound but not listening (connections
// refused, and nobody else can take the port); up = it accepts and answers from `script`
// (then `otherwise`), recording every request.
class Receiver {
  public:
    explicit Receiver(asio::io_context& ioc) : ioc_(ioc), acceptor_(ioc), hold_(ioc) {
        hold_.expires_at(Clock::time_point::max());
        bind(0);
        port_ = acceptor_.local_endpoint().port();
    }
    std::uint16_t port() const { return port_; }
    std::string url(const std::string& path) const {
        return "http://127.0.0.1:" + std::to_string(port_) + path;
    }

    void up() {
        acceptor_.listen();
        asio::co_spawn(ioc_, accept_loop(), [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);
        });
    }
    void down() {
        boost::system::error_code ec;
        acceptor_.close(ec);
        bind(port_);
    }
    void stop() {
        boost::system::error_code ec;
        acceptor_.close(ec);
        hold_.cancel();
    }

    std::deque<Answer> script;
    Answer otherwise;
    std::vector<Request> requests;

    std::size_t count_delivery(const std::string& id) const {
        std::size_t n = 0;
        for (const auto& r : requests) n += r.header("x-guardia-delivery") == id;
        return n;
    }

  private:
    void bind(std::uint16_t port) {
        tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), port);
        acceptor_.open(ep.protocol());
        acceptor_.set_option(tcp::acceptor::reuse_address(true));
        acceptor_.bind(ep);
    }

    asio::awaitable<void> accept_loop() {
        for (;;) {
            auto [ec, sock] = co_await acceptor_.async_accept(tuple_awaitable);
            if (ec) co_return;
            asio::co_spawn(ioc_, serve(std::move(sock)), [](std::exception_ptr e) {
                if (e) std::rethrow_exception(e);
            });
        }
    }

    asio::awaitable<void> serve(tcp::socket sock) {
        boost::beast::flat_buffer buffer;
        bhttp::request<bhttp::string_body> req;
        auto [e_r, n] = co_await bhttp::async_read(sock, buffer, req, tuple_awaitable);
        (void)n;
        if (e_r) co_return;
        Request r;
        r.target = std::string(req.target());
        r.body = req.body();
        for (const auto& f : req) {
            std::string name(f.name_string());
            for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            r.headers[name] = std::string(f.value());
        }
        requests.push_back(std::move(r));
        Answer a = otherwise;
        if (!script.empty()) {
            a = script.front();
            script.pop_front();
        }
        if (a.hold) {
            co_await hold_.async_wait(tuple_awaitable);
            co_return;
        }
        bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(a.status), 11};
        res.body() = a.body;
        res.prepare_payload();
        co_await bhttp::async_write(sock, res, tuple_awaitable);
    }

    asio::io_context& ioc_;
    tcp::acceptor acceptor_;
    asio::steady_timer hold_;
    std::uint16_t port_ = 0;
};

// ------------------------------------------------------------------ helpers

// Runs `body` on `ioc` under a deadline and rethrows what it threw. What is still pending
// when it ends (servers' loops) is destroyed with the io_context.
void run(asio::io_context& ioc, std::function<asio::awaitable<void>()> body) {
    bool done = false;
    std::exception_ptr error;
    asio::co_spawn(ioc, body(), [&](std::exception_ptr e) {
        done = true;
        error = e;
        ioc.stop();
    });
    ioc.restart();
    ioc.run_for(30s);
    REQUIRE(done);
    if (error) std::rethrow_exception(error);
}

asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(tuple_awaitable);
}

// Polls `done` every 10 ms for up to `limit`; the test's own loop, not the notifier's.
// A template, not std::function: GCC 12 copies a by-value temporary bitwise into a
// coroutine frame; a closure of references survives that.
template <class Done>
asio::awaitable<bool> eventually(Done done, std::chrono::milliseconds limit = 10s) {
    const auto until = Clock::now() + limit;
    while (!done()) {
        if (Clock::now() >= until) co_return false;
        co_await sleep_for(10ms);
    }
    co_return true;
}

NotifierConfig parse(const std::string& text) {
    auto cfg = parse_notifier_config(json::parse(text), "guardia.json");
    if (!cfg) FAIL(cfg.error().message);
    return *cfg;
}

// One webhook for pm_review_needed to `url`, with the secret header and fast retries.
std::string one_hook(const std::string& url, const std::string& extra = "",
                     const std::string& retry = "") {
    return R"({"webhooks": [{"name": "pm-review", "event": "pm_review_needed", "url": ")" + url +
           R"(", "headers": {"Authorization": ")" + std::string(secret) +
           R"("}, "timeout_ms": 2000)" + extra +
           R"(}], "retry": {"initial_delay_ms": 50, "max_delay_ms": 200)" + retry + "}}";
}

json::object review_fields(const std::string& sr) {
    return json::object{{"sr_id", sr},
                        {"rollout_id", "R-" + sr},
                        {"status", "PENDING_PM_VALIDATION"},
                        {"counts", json::object{{"succeeded", 9}, {"failed", 1}}}};
}

store::AuditWriterOptions writer_options(const CapturedLog& log) {
    store::AuditWriterOptions o;
    o.logger = log.logger;
    return o;
}

std::vector<store::OutboxRecord> outbox(const std::string& db, const std::string& sr) {
    store::Database d(db);
    auto rows = d.outbox_for(sr);
    REQUIRE(rows.has_value());
    return *rows;
}

void check_error(const std::string& text, const std::string& expected_prefix) {
    auto cfg = parse_notifier_config(json::parse(text), "guardia.json");
    CAPTURE(text);
    REQUIRE_FALSE(cfg.has_value());
    CHECK(cfg.error().code == errc::invalid_argument);
    CHECK(cfg.error().message.rfind(expected_prefix, 0) == 0);
    CAPTURE(cfg.error().message);
    CHECK(cfg.error().message.find("s3cret") == std::string::npos);
}

}  // namespace

// ================================================================== configuration

TEST_CASE("notifier config: a full section parses; null means no webhooks") {
    auto none = parse_notifier_config(json::value(nullptr), "guardia.json");
    REQUIRE(none.has_value());
    CHECK(none->webhooks.empty());

    const auto cfg = parse(R"({
      "webhooks": [
        { "name": "pm-review", "event": "pm_review_needed", "url": "http://127.0.0.1:9000/hooks/pm",
          "headers": { "Authorization": "Bearer s3cret" },
          "template": { "text": "SR {{sr_id}} is deployed", "sr": "{{sr_id}}" },
          "timeout_ms": 10000 },
        { "event": "deployment_failed", "url": "https://hooks.example.com/x", "ca_file": "/etc/ca.pem" },
        { "event": "pm_review_needed", "url": "http://127.0.0.1:9001/" }
      ],
      "retry": { "initial_delay_ms": 1000, "max_delay_ms": 300000, "max_attempts": 0 }
    })");
    REQUIRE(cfg.webhooks.size() == 3);
    CHECK(cfg.webhooks[0].name == "pm-review");
    CHECK(cfg.webhooks[0].headers.size() == 1);
    CHECK(cfg.webhooks[0].headers[0].first == "Authorization");
    CHECK(cfg.webhooks[0].timeout == 10000ms);
    CHECK(cfg.webhooks[0].body_template.is_object());
    CHECK(cfg.webhooks[1].name == "deployment_failed-1");  // default: <event>-<index>
    CHECK(cfg.webhooks[1].ca_file == "/etc/ca.pem");
    CHECK(cfg.webhooks[1].body_template.is_null());
    CHECK(cfg.webhooks[2].name == "pm_review_needed-2");
    CHECK(cfg.retry.initial_delay == 1000ms);
    CHECK(cfg.retry.max_delay == 300000ms);
    CHECK(cfg.retry.max_attempts == 0);
}

TEST_CASE("notifier config: errors name the field") {
    const std::string ok = R"({"event": "pm_review_needed", "url": "http://127.0.0.1:9/"})";
    check_error(R"([1])", "guardia.json: notifications: must be an object");
    check_error(R"({"hooks": []})", "guardia.json: notifications.hooks: unknown field");
    check_error(R"({"webhooks": {}})", "guardia.json: notifications.webhooks: must be an array");
    check_error(
        R"({"webhooks": [)" + ok + R"(, {"event": "pm_review_needed", "url": "ftp://x/"}]})",
        "guardia.json: notifications.webhooks[1].url: URL scheme must be http or https");
    check_error(R"({"webhooks": [{"event": "pm_review_needed", "url": "http://u:pw@h/"}]})",
                "guardia.json: notifications.webhooks[0].url: URL must not hold credentials");
    check_error(R"({"webhooks": [{"event": "pm_review_needed", "url": 80}]})",
                "guardia.json: notifications.webhooks[0].url: must be a string");
    check_error(R"({"webhooks": [{"event": "pm_review_needed"}]})",
                "guardia.json: notifications.webhooks[0].url: is required");
    check_error(R"({"webhooks": [)" + ok + R"(, {"event": "deployed", "url": "http://h/"}]})",
                "guardia.json: notifications.webhooks[1].event: unknown event 'deployed'");
    check_error(R"({"webhooks": [{"url": "http://h/"}]})",
                "guardia.json: notifications.webhooks[0].event: is required");
    check_error(R"({"webhooks": [{"name": "a", "event": "pm_review_needed", "url": "http://h/"},
                                 {"name": "a", "event": "rollback_failed", "url": "http://h/"}]})",
                "guardia.json: notifications.webhooks[1].name: duplicate webhook name 'a'");
    check_error(
        R"({"webhooks": [{"name": "a b", "event": "pm_review_needed", "url": "http://h/"}]})",
        "guardia.json: notifications.webhooks[0].name: must be");
    check_error(
        R"({"webhooks": [{"event": "pm_review_needed", "url": "http://h/", "retries": 3}]})",
        "guardia.json: notifications.webhooks[0].retries: unknown field");
    check_error(
        R"({"webhooks": [{"event": "pm_review_needed", "url": "http://h/", "timeout_ms": "5"}]})",
        "guardia.json: notifications.webhooks[0].timeout_ms: must be an integer");
    check_error(
        R"({"webhooks": [{"event": "pm_review_needed", "url": "http://h/", "timeout_ms": 0}]})",
        "guardia.json: notifications.webhooks[0].timeout_ms: must be between 1 and");
    check_error(
        R"({"webhooks": [{"event": "pm_review_needed", "url": "http://h/", "headers": []}]})",
        "guardia.json: notifications.webhooks[0].headers: must be an object");
    check_error(
        R"({"webhooks": [{"event": "pm_review_needed", "url": "http://h/", "headers": {"X-A": 1}}]})",
        "guardia.json: notifications.webhooks[0].headers.X-A: must be a string");
    check_error(
        R"({"webhooks": [{"event": "pm_review_needed", "url": "http://h/", "headers": {"Authorization": "Bearer s3cret\nX: 1"}}]})",
        "guardia.json: notifications.webhooks[0].headers.Authorization: must not hold control");
    check_error(
        R"({"webhooks": [{"event": "pm_review_needed", "url": "http://h/", "headers": {"X-Guardia-Delivery": "1"}}]})",
        "guardia.json: notifications.webhooks[0].headers.X-Guardia-Delivery: is set by Guardia");
    check_error(
        R"({"webhooks": [{"event": "pm_review_needed", "url": "http://h/", "headers": {"a": "1", "A": "2"}}]})",
        "guardia.json: notifications.webhooks[0].headers.A: duplicate header");
    check_error(
        R"({"webhooks": [{"event": "pm_review_needed", "url": "http://h/", "ca_file": "/ca.pem"}]})",
        "guardia.json: notifications.webhooks[0].ca_file: only for https URLs");
    check_error(
        R"({"webhooks": [{"event": "pm_review_needed", "url": "https://h/", "ca_file": "ca.pem"}]})",
        "guardia.json: notifications.webhooks[0].ca_file: must be an absolute path");
    check_error(R"({"retry": {"max_attempts": -1}})",
                "guardia.json: notifications.retry.max_attempts: must be between 0 and");
    check_error(
        R"({"retry": {"initial_delay_ms": 500, "max_delay_ms": 100}})",
        "guardia.json: notifications.retry.max_delay_ms: must be at least initial_delay_ms");
    check_error(R"({"retry": {"jitter": true}})",
                "guardia.json: notifications.retry.jitter: unknown field");
    check_error(R"({"retry": 5})", "guardia.json: notifications.retry: must be an object");
}

// ================================================================== rendering

TEST_CASE("templates: inline text, whole values, nested fields, missing fields") {
    const json::object context{{"sr_id", "SR-1"},
                               {"n", 3},
                               {"counts", json::object{{"ok", 9}, {"failed", 1}}},
                               {"none", nullptr}};
    const auto tmpl = json::parse(R"({
        "text": "SR {{sr_id}} has {{ n }} nodes, {{counts.failed}} failed {{counts}}",
        "sr": "{{sr_id}}", "n": "{{n}}", "counts": "{{counts}}", "failed": "{{counts.failed}}",
        "missing_whole": "{{nope}}", "missing_inline": "[{{nope}}]", "null_inline": "[{{none}}]",
        "not_a_placeholder": "{{ a b }} {{x", "list": ["{{n}}", "#{{sr_id}}", 7, true, null],
        "nested": {"deep": "{{counts.ok}}"}
    })");
    const auto out = render_template(tmpl, context);
    const auto& o = out.as_object();
    CHECK(o.at("text").as_string() == "SR SR-1 has 3 nodes, 1 failed {\"ok\":9,\"failed\":1}");
    CHECK(o.at("sr").as_string() == "SR-1");
    CHECK(o.at("n").as_int64() == 3);  // the field's value, not its text
    CHECK(o.at("counts") == json::parse(R"({"ok": 9, "failed": 1})"));
    CHECK(o.at("failed").as_int64() == 1);
    CHECK(o.at("missing_whole").is_null());
    CHECK(o.at("missing_inline").as_string() == "[]");
    CHECK(o.at("null_inline").as_string() == "[]");
    CHECK(o.at("not_a_placeholder").as_string() == "{{ a b }} {{x");
    CHECK(o.at("list") == json::parse(R"([3, "#SR-1", 7, true, null])"));
    CHECK(o.at("nested").at("deep").as_int64() == 9);
}

TEST_CASE("render_body: the default body holds event, delivery id, time and every field") {
    WebhookConfig hook;
    json::object fields = review_fields("SR-9");
    fields["event"] = "spoofed";  // cannot override the notifier's own fields
    const auto body = json::parse(render_body(hook, "pm_review_needed", "d-1", 1234, fields));
    CHECK(body.at("event").as_string() == "pm_review_needed");
    CHECK(body.at("delivery_id").as_string() == "d-1");
    CHECK(body.at("ts_ms").as_int64() == 1234);
    CHECK(body.at("sr_id").as_string() == "SR-9");
    CHECK(body.at("counts").at("failed").as_int64() == 1);

    hook.body_template = json::parse(R"({"text": "{{event}} {{sr_id}}", "id": "{{delivery_id}}"})");
    CHECK(json::parse(render_body(hook, "pm_review_needed", "d-2", 1, fields)) ==
          json::parse(R"({"text": "pm_review_needed SR-9", "id": "d-2"})"));
}

// ================================================================== delivery

TEST_CASE("an enqueued event is POSTed with its headers and marked delivered in the store") {
    TempDir dir;
    CapturedLog log;
    const std::string db = dir.file("guardia.db");
    asio::io_context ioc;
    Receiver receiver(ioc);
    Receiver other(ioc);
    receiver.up();
    other.up();
    store::AuditWriter writer(db, writer_options(log));
    writer.start();
    auto cfg = parse(R"({"webhooks": [
        {"name": "pm-review", "event": "pm_review_needed", "url": ")" +
                     receiver.url("/hooks/pm?k=v") + R"(",
         "headers": {"Authorization": ")" +
                     std::string(secret) + R"(", "X-Team": "ops"},
         "template": {"text": "SR {{sr_id}} is deployed and awaits your review", "sr": "{{sr_id}}",
                      "counts": "{{counts}}"}},
        {"name": "audit-copy", "event": "pm_review_needed", "url": ")" +
                     other.url("/all") + R"("},
        {"name": "failures", "event": "deployment_failed", "url": ")" +
                     other.url("/failed") + R"("}],
        "retry": {"initial_delay_ms": 50, "max_delay_ms": 200}})");
    Notifier notifier(ioc.get_executor(), cfg, writer, db, log.logger);
    notifier.start();

    run(ioc, [&]() -> asio::awaitable<void> {
        auto n = co_await notifier.enqueue("pm_review_needed", review_fields("SR-1"));
        REQUIRE(n.has_value());
        CHECK(*n == 2);  // two webhooks subscribe
        auto none = co_await notifier.enqueue("rollback_completed", review_fields("SR-1"));
        REQUIRE(none.has_value());
        CHECK(*none == 0);
        auto bad = co_await notifier.enqueue("deployed", review_fields("SR-1"));
        REQUIRE_FALSE(bad.has_value());
        CHECK(bad.error().code == errc::invalid_argument);

        {
            const bool ok_ = co_await eventually([&] { return notifier.delivered() == 2; });
            CHECK(ok_);
        }
        CHECK(notifier.pending() == 0);
        CHECK(notifier.failed_attempts() == 0);
        co_await notifier.stop();
    });

    REQUIRE(receiver.requests.size() == 1);
    REQUIRE(other.requests.size() == 1);
    const Request& req = receiver.requests[0];
    CHECK(req.target == "/hooks/pm?k=v");
    CHECK(req.header("authorization") == secret);
    CHECK(req.header("x-team") == "ops");
    CHECK(req.header("content-type") == "application/json");
    CHECK(req.header("x-guardia-event") == "pm_review_needed");
    CHECK(json::parse(req.body) ==
          json::parse(R"({"text": "SR SR-1 is deployed and awaits your review", "sr": "SR-1",
                          "counts": {"succeeded": 9, "failed": 1}})"));
    // The other webhook got the default body, with its own delivery id.
    const Request& copy = other.requests[0];
    CHECK(copy.header("authorization").empty());
    const auto body = json::parse(copy.body);
    CHECK(body.at("event").as_string() == "pm_review_needed");
    CHECK(body.at("delivery_id").as_string() == copy.header("x-guardia-delivery"));
    CHECK(body.at("rollout_id").as_string() == "R-SR-1");
    CHECK(copy.header("x-guardia-delivery") != req.header("x-guardia-delivery"));

    const auto rows = outbox(db, "SR-1");
    REQUIRE(rows.size() == 2);
    for (const auto& row : rows) {
        CHECK(row.delivered_ms.has_value());
        CHECK_FALSE(row.gave_up_ms.has_value());
        CHECK(row.attempts == 1);
        CHECK(row.event == "pm_review_needed");
        CHECK((row.id == req.header("x-guardia-delivery") ||
               row.id == copy.header("x-guardia-delivery")));
    }
    const auto& pm_row = rows[0].id == req.header("x-guardia-delivery") ? rows[0] : rows[1];
    CHECK(pm_row.headers == R"({"webhook":"pm-review"})");
    CHECK(pm_row.url == receiver.url("/hooks/pm?k=v"));

    // The secret header value is nowhere in the store's files (WAL included, before and
    // after the checkpoint at close) nor in the log.
    auto check_files = [&] {
        for (const auto* suffix : {"", "-wal", "-shm", "-journal"}) {
            const auto bytes = file_bytes(db + suffix);
            CAPTURE(suffix);
            CHECK(bytes.find("s3cret") == std::string::npos);
        }
    };
    CHECK(file_bytes(db + "-wal").find("pm-review") != std::string::npos);  // the rows are there
    check_files();
    writer.stop();
    check_files();
    CHECK(log.text().find("s3cret") == std::string::npos);
    CHECK(log.text().find("answered HTTP 200") != std::string::npos);
}

TEST_CASE("a receiver answering 500 then 200 gets the delivery again until it takes it, once") {
    TempDir dir;
    CapturedLog log;
    const std::string db = dir.file("guardia.db");
    asio::io_context ioc;
    Receiver receiver(ioc);
    // The second 500 echoes the secret back: it must not reach the store or the log.
    receiver.script = {status(500, "overloaded"), status(503, "echo: " + std::string(secret)),
                       status(200)};
    receiver.otherwise = status(500);
    receiver.up();
    store::AuditWriter writer(db, writer_options(log));
    writer.start();
    Notifier notifier(ioc.get_executor(), parse(one_hook(receiver.url("/pm"))), writer, db,
                      log.logger);
    notifier.start();

    run(ioc, [&]() -> asio::awaitable<void> {
        auto n = co_await notifier.enqueue("pm_review_needed", review_fields("SR-2"));
        REQUIRE(n.has_value());
        {
            const bool ok_ = co_await eventually([&] { return notifier.delivered() == 1; });
            CHECK(ok_);
        }
        co_await sleep_for(400ms);  // nothing more is sent
        co_await notifier.stop();
    });

    REQUIRE(receiver.requests.size() == 3);
    const auto id = receiver.requests[0].header("x-guardia-delivery");
    CHECK(receiver.count_delivery(id) == 3);  // the same delivery each time
    CHECK(notifier.failed_attempts() == 2);
    const auto rows = outbox(db, "SR-2");
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].attempts == 3);
    CHECK(rows[0].delivered_ms.has_value());
    CHECK(rows[0].last_error.find("HTTP 503: echo: ***") == 0);  // the last failure, scrubbed
    writer.stop();
    CHECK(file_bytes(db).find("s3cret") == std::string::npos);
    CHECK(file_bytes(db + "-wal").find("s3cret") == std::string::npos);
    CHECK(log.text().find("s3cret") == std::string::npos);
    CHECK(log.text().find("failed (attempt 1): HTTP 500: overloaded") != std::string::npos);
}

TEST_CASE("a receiver down for a while gets the delivery exactly once when it comes up") {
    TempDir dir;
    CapturedLog log;
    const std::string db = dir.file("guardia.db");
    asio::io_context ioc;
    Receiver receiver(ioc);  // down: the port refuses connections
    store::AuditWriter writer(db, writer_options(log));
    writer.start();
    Notifier notifier(ioc.get_executor(), parse(one_hook(receiver.url("/pm"))), writer, db,
                      log.logger);
    notifier.start();

    run(ioc, [&]() -> asio::awaitable<void> {
        auto n = co_await notifier.enqueue("pm_review_needed", review_fields("SR-3"));
        REQUIRE(n.has_value());
        {
            const bool ok_ = co_await eventually([&] { return notifier.failed_attempts() >= 3; });
            CHECK(ok_);
        }
        CHECK(notifier.pending() == 1);
        receiver.up();
        {
            const bool ok_ = co_await eventually([&] { return notifier.delivered() == 1; });
            CHECK(ok_);
        }
        co_await sleep_for(300ms);
        co_await notifier.stop();
    });

    CHECK(receiver.requests.size() == 1);
    const auto rows = outbox(db, "SR-3");
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].attempts >= 4);
    CHECK(rows[0].delivered_ms.has_value());
    CHECK(rows[0].last_error.find("connection refused") != std::string::npos);
}

TEST_CASE("after max_attempts the delivery gives up: gave_up_ms set, no more attempts") {
    TempDir dir;
    CapturedLog log;
    const std::string db = dir.file("guardia.db");
    asio::io_context ioc;
    Receiver receiver(ioc);
    receiver.otherwise = status(500, "nope");
    receiver.up();
    store::AuditWriter writer(db, writer_options(log));
    writer.start();
    Notifier notifier(ioc.get_executor(),
                      parse(one_hook(receiver.url("/pm"), "", R"(, "max_attempts": 3)")), writer,
                      db, log.logger);
    notifier.start();

    run(ioc, [&]() -> asio::awaitable<void> {
        auto n = co_await notifier.enqueue("pm_review_needed", review_fields("SR-4"));
        REQUIRE(n.has_value());
        {
            const bool ok_ = co_await eventually([&] { return notifier.gave_up() == 1; });
            CHECK(ok_);
        }
        co_await sleep_for(500ms);  // more than twice the largest delay
        CHECK(notifier.pending() == 0);
        co_await notifier.stop();
    });

    CHECK(receiver.requests.size() == 3);
    CHECK(notifier.failed_attempts() == 3);
    CHECK(notifier.delivered() == 0);
    const auto rows = outbox(db, "SR-4");
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].attempts == 3);
    CHECK(rows[0].gave_up_ms.has_value());
    CHECK_FALSE(rows[0].delivered_ms.has_value());
    CHECK(rows[0].last_error == "HTTP 500: nope");
    store::Database d(db);
    CHECK(d.outbox_pending(10)->empty());
    CHECK(log.text().find("[error] notifier: giving up delivery " + rows[0].id) !=
          std::string::npos);
}

TEST_CASE("a restart delivers what was left pending and never resends what was delivered") {
    TempDir dir;
    CapturedLog log;
    const std::string db = dir.file("guardia.db");
    asio::io_context ioc;
    Receiver receiver(ioc);
    receiver.up();
    const auto cfg = parse(one_hook(receiver.url("/pm")));
    std::string delivered_id;
    {
        store::AuditWriter writer(db, writer_options(log));
        writer.start();
        Notifier first(ioc.get_executor(), cfg, writer, db, log.logger);
        first.start();
        run(ioc, [&]() -> asio::awaitable<void> {
            auto a = co_await first.enqueue("pm_review_needed", review_fields("SR-5"));
            REQUIRE(a.has_value());
            {
                const bool ok_ = co_await eventually([&] { return first.delivered() == 1; });
                CHECK(ok_);
            }
            receiver.down();
            auto b = co_await first.enqueue("pm_review_needed", review_fields("SR-6"));
            REQUIRE(b.has_value());
            {
                const bool ok_ = co_await eventually([&] { return first.failed_attempts() >= 1; });
                CHECK(ok_);
            }
            co_await first.stop();
        });
        delivered_id = receiver.requests.at(0).header("x-guardia-delivery");
        // A row as a crash right after enqueue() would leave it, for a webhook since removed.
        store::OutboxRecord orphan;
        orphan.id = "orphan-1";
        orphan.event = "pm_review_needed";
        orphan.sr_id = "SR-7";
        orphan.url = receiver.url("/gone");
        orphan.headers = R"({"webhook":"removed-hook"})";
        orphan.body = "{}";
        orphan.created_ms = 1;
        orphan.next_attempt_ms = 1;
        writer.upsert_outbox(orphan);
    }  // the writer stops: everything is committed
    REQUIRE(receiver.requests.size() == 1);
    CHECK(outbox(db, "SR-6").at(0).attempts >= 1);
    CHECK_FALSE(outbox(db, "SR-6").at(0).delivered_ms.has_value());

    store::AuditWriter writer(db, writer_options(log));
    writer.start();
    Notifier second(ioc.get_executor(), cfg, writer, db, log.logger);
    receiver.up();
    second.start();
    run(ioc, [&]() -> asio::awaitable<void> {
        {
            const bool ok_ = co_await eventually(
                [&] { return second.delivered() == 1 && second.gave_up() == 1; });
            CHECK(ok_);
        }
        co_await sleep_for(300ms);
        co_await second.stop();
    });

    REQUIRE(receiver.requests.size() == 2);
    CHECK(receiver.count_delivery(delivered_id) == 1);  // not resent
    const auto pending_id = outbox(db, "SR-6").at(0).id;
    CHECK(receiver.count_delivery(pending_id) == 1);
    CHECK(receiver.count_delivery("orphan-1") == 0);
    writer.stop();
    CHECK(outbox(db, "SR-6").at(0).delivered_ms.has_value());
    const auto orphan = outbox(db, "SR-7").at(0);
    CHECK(orphan.gave_up_ms.has_value());
    CHECK(orphan.last_error == "webhook 'removed-hook' is no longer configured");
}

TEST_CASE("stop() cuts an attempt that outlives the grace period; the row stays pending") {
    TempDir dir;
    CapturedLog log;
    const std::string db = dir.file("guardia.db");
    asio::io_context ioc;
    Receiver stuck(ioc);
    stuck.otherwise.hold = true;
    stuck.up();
    Receiver fine(ioc);
    fine.up();
    store::AuditWriter writer(db, writer_options(log));
    writer.start();
    auto cfg = parse(R"({"webhooks": [
        {"name": "stuck", "event": "deployment_failed", "url": ")" +
                     stuck.url("/") + R"(", "timeout_ms": 20000},
        {"name": "fine", "event": "deployment_failed", "url": ")" +
                     fine.url("/") + R"("}]})");
    Notifier notifier(ioc.get_executor(), cfg, writer, db, log.logger);
    notifier.start();

    run(ioc, [&]() -> asio::awaitable<void> {
        json::object fields{{"sr_id", "SR-8"}, {"reason", "3 of 10 nodes failed"}};
        auto n = co_await notifier.enqueue("deployment_failed", fields);
        REQUIRE(n.has_value());
        CHECK(*n == 2);
        // One receiver hanging does not hold back the other.
        {
            const bool ok_ = co_await eventually([&] { return notifier.delivered() == 1; });
            CHECK(ok_);
        }
        CHECK(stuck.requests.size() == 1);
        const auto start = Clock::now();
        co_await notifier.stop(100ms);
        CHECK(Clock::now() - start < 2s);
        co_await notifier.stop();  // again: nothing to do
        stuck.stop();
    });

    CHECK(notifier.failed_attempts() == 0);
    CHECK(notifier.pending() == 1);
    writer.stop();
    store::Database d(db);
    auto pending = d.outbox_pending(10);
    REQUIRE(pending.has_value());
    REQUIRE(pending->size() == 1);
    CHECK(pending->at(0).attempts == 0);  // cut, not failed: sent again at the next start
    CHECK(pending->at(0).headers == R"({"webhook":"stuck"})");
    CHECK(log.text().find("cut by shutdown") != std::string::npos);
}

TEST_CASE("the loop sleeps until the next attempt is due: no polling while idle") {
    TempDir dir;
    CapturedLog log;
    const std::string db = dir.file("guardia.db");
    asio::io_context ioc;
    Receiver receiver(ioc);  // down
    store::AuditWriter writer(db, writer_options(log));
    writer.start();
    auto cfg = parse(R"({"webhooks": [{"event": "rollback_failed", "url": ")" + receiver.url("/") +
                     R"("}], "retry": {"initial_delay_ms": 5000, "max_delay_ms": 5000}})");
    Notifier notifier(ioc.get_executor(), cfg, writer, db, log.logger);
    notifier.start();
    json::object fields{{"sr_id", "SR-10"}};
    asio::co_spawn(ioc, notifier.enqueue("rollback_failed", fields), asio::detached);
    const auto until = Clock::now() + 10s;
    while (notifier.failed_attempts() == 0 && Clock::now() < until) ioc.run_one_for(100ms);
    REQUIRE(notifier.failed_attempts() == 1);
    // The next attempt is 4.5 to 5 s away: half a second passes with (almost) nothing to run.
    const auto handlers = ioc.run_for(500ms);
    CHECK(handlers < 5);
    CHECK(notifier.failed_attempts() == 1);

    bool stopped = false;
    asio::co_spawn(ioc, notifier.stop(), [&](std::exception_ptr) { stopped = true; });
    while (!stopped && Clock::now() < until) ioc.run_one_for(100ms);
    CHECK(stopped);
    CHECK(notifier.pending() == 1);
}

// ================================================================== signatures, events, links

namespace {

constexpr std::string_view signing_secret = "whsec-9d41c0b7e2f8a6";

std::string write_secret(const TempDir& dir, const std::string& name, const std::string& text,
                         unsigned mode = 0600) {
    const std::string path = dir.file(name);
    {
        std::ofstream out(path, std::ios::binary);
        out << text;
    }
    ::chmod(path.c_str(), mode);
    return path;
}

std::int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

TEST_CASE("notifier config: events lists, secret files and their errors") {
    const auto cfg = parse(R"({
      "signing_secret_file": "/etc/guardia/webhook.secret",
      "webhooks": [
        { "name": "chat", "events": ["rollout_started", "tier_finished", "gate_tripped"],
          "url": "http://127.0.0.1:9000/", "secret_file": "/etc/guardia/chat.secret" },
        { "event": "tier_gate", "url": "http://127.0.0.1:9001/" }
      ]})");
    CHECK(cfg.signing_secret_file == "/etc/guardia/webhook.secret");
    REQUIRE(cfg.webhooks.size() == 2);
    CHECK(cfg.webhooks[0].event == "rollout_started");
    CHECK(cfg.webhooks[0].subscribes("gate_tripped"));
    CHECK(cfg.webhooks[0].subscribes("tier_finished"));
    CHECK_FALSE(cfg.webhooks[0].subscribes("tier_gate"));
    CHECK(cfg.webhooks[0].secret_file == "/etc/guardia/chat.secret");
    CHECK(cfg.webhooks[1].subscribes("tier_gate"));
    CHECK(cfg.webhooks[1].secret_file.empty());
    CHECK(cfg.webhooks[1].name == "tier_gate-1");
    for (const auto ev : known_events()) CHECK(is_known_event(ev));
    CHECK(known_events().size() == 11);

    check_error(R"({"webhooks": [{"event": "tier_gate", "events": ["tier_gate"], "url": "http://h/"}]})",
                "guardia.json: notifications.webhooks[0].events: give event or events, not both");
    check_error(R"({"webhooks": [{"events": [], "url": "http://h/"}]})",
                "guardia.json: notifications.webhooks[0].events: must be a non-empty array");
    check_error(R"({"webhooks": [{"events": ["tier_gate", "nope"], "url": "http://h/"}]})",
                "guardia.json: notifications.webhooks[0].events[1]: unknown event 'nope' (known: "
                "rollout_started, tier_finished, gate_tripped,");
    check_error(R"({"webhooks": [{"events": ["tier_gate", "tier_gate"], "url": "http://h/"}]})",
                "guardia.json: notifications.webhooks[0].events[1]: duplicate event 'tier_gate'");
    check_error(R"({"webhooks": [{"event": "tier_gate", "url": "http://h/", "secret_file": "s"}]})",
                "guardia.json: notifications.webhooks[0].secret_file: must be an absolute path");
    check_error(R"({"signing_secret_file": 3})",
                "guardia.json: notifications.signing_secret_file: must be a string");
}

TEST_CASE("load_webhook_secrets: per webhook, else the section's; loose modes and empty files refused") {
    TempDir dir;
    const auto global = write_secret(dir, "global.secret", std::string(signing_secret) + "\n");
    const auto own = write_secret(dir, "own.secret", "own-secret-value");
    auto cfg = parse(R"({"signing_secret_file": ")" + global + R"(", "webhooks": [
        {"event": "tier_gate", "url": "http://127.0.0.1:9/"},
        {"event": "tier_gate", "url": "http://127.0.0.1:9/", "secret_file": ")" + own + R"("}]})");
    REQUIRE(load_webhook_secrets(cfg, "guardia.json").has_value());
    CHECK(cfg.webhooks[0].secret.reveal() == signing_secret);  // the trailing newline dropped
    CHECK(cfg.webhooks[1].secret.reveal() == "own-secret-value");

    auto unsigned_cfg = parse(R"({"webhooks": [{"event": "tier_gate", "url": "http://h/"}]})");
    REQUIRE(load_webhook_secrets(unsigned_cfg, "guardia.json").has_value());
    CHECK(unsigned_cfg.webhooks[0].secret.empty());

    const auto loose = write_secret(dir, "loose.secret", "loose-secret-value", 0644);
    auto bad = parse(R"({"webhooks": [{"event": "tier_gate", "url": "http://h/"},
        {"event": "tier_gate", "url": "http://h/", "secret_file": ")" + loose + R"("}]})");
    auto r = load_webhook_secrets(bad, "guardia.json");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.rfind("guardia.json: notifications.webhooks[1].secret_file: secret file " +
                                      loose + ": readable by group or others",
                                  0) == 0);
    CHECK(r.error().message.find("loose-secret-value") == std::string::npos);

    const auto empty = write_secret(dir, "empty.secret", "\n");
    auto none = parse(R"({"signing_secret_file": ")" + empty +
                      R"(", "webhooks": [{"event": "tier_gate", "url": "http://h/"}]})");
    r = load_webhook_secrets(none, "guardia.json");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message == "guardia.json: notifications.signing_secret_file: secret file " +
                                   empty + " is empty");
    auto missing = parse(R"({"signing_secret_file": ")" + dir.file("nope") +
                         R"(", "webhooks": [{"event": "tier_gate", "url": "http://h/"}]})");
    r = load_webhook_secrets(missing, "guardia.json");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find(dir.file("nope")) != std::string::npos);
}

TEST_CASE("url_file: the URL from a 0600 file owned by us or root; loose, foreign, junk refused unquoted") {
    TempDir dir;
    const std::string hook = "https://hooks.slack.com/services/T000/B000/sekrit0123";
    const auto good = write_secret(dir, "good.url", "  " + hook + "\n\n");
    auto cfg = parse(R"({"webhooks": [{"event": "tier_gate", "url_file": ")" + good + R"("},
        {"event": "tier_gate", "url_file": ")" + good + R"(", "markup": "none"}]})");
    CHECK(cfg.webhooks[0].url.empty());  // not read while parsing
    CHECK(cfg.webhooks[0].url_file == good);
    REQUIRE(load_webhook_secrets(cfg, "guardia.json").has_value());
    CHECK(cfg.webhooks[0].url == hook);
    CHECK(cfg.webhooks[0].markup == WebhookConfig::Markup::slack);  // the default follows the URL
    CHECK(cfg.webhooks[1].markup == WebhookConfig::Markup::none);   // as the file says

    const auto refused = [&](const std::string& file, const std::string& extra = "") {
        auto c = parse(R"({"webhooks": [{"event": "tier_gate", "url": "http://h/"},
            {"event": "tier_gate", "url_file": ")" + file + "\"" + extra + "}]}");
        auto r = load_webhook_secrets(c, "guardia.json");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message.rfind("guardia.json: notifications.webhooks[1].url_file: url file " + file, 0) == 0);
        CHECK(r.error().message.find("sekrit") == std::string::npos);
        return r.error().message;
    };
    CHECK(refused(write_secret(dir, "loose.url", hook, 0644)).find("readable by group or others") !=
          std::string::npos);
    CHECK(refused(write_secret(dir, "empty.url", "\n")).find("is empty") != std::string::npos);
    CHECK(refused(write_secret(dir, "junk.url", "ftp://x/sekrit")).find("does not hold one") !=
          std::string::npos);
    CHECK(refused(write_secret(dir, "two.url", hook + "\n" + hook)).find("does not hold one") !=
          std::string::npos);
    CHECK(refused(dir.file("missing.url")).find("cannot stat") != std::string::npos);
    CHECK(refused(write_secret(dir, "plain.url", "http://h/sekrit"), R"(, "ca_file": "/etc/ca.pem")")
              .find("ca_file is only for https") != std::string::npos);
    const auto foreign = write_secret(dir, "foreign.url", hook);
    REQUIRE(::chown(foreign.c_str(), 4242, 4242) == 0);  // the suite runs as root (like the fleet)
    CHECK(refused(foreign).find("owned by uid 4242") != std::string::npos);

    // url and url_file: one of them, exactly; url_file an absolute path.
    const auto parse_error = [](const std::string& text) {
        auto r = parse_notifier_config(json::parse(text), "guardia.json");
        REQUIRE_FALSE(r.has_value());
        return r.error().message;
    };
    CHECK(parse_error(R"({"webhooks": [{"event": "tier_gate", "url": "http://h/", "url_file": "/x"}]})") ==
          "guardia.json: notifications.webhooks[0].url_file: give url or url_file, not both");
    CHECK(parse_error(R"({"webhooks": [{"event": "tier_gate"}]})").rfind(
              "guardia.json: notifications.webhooks[0].url: is required", 0) == 0);
    CHECK(parse_error(R"({"webhooks": [{"event": "tier_gate", "url_file": "rel/x"}]})").rfind(
              "guardia.json: notifications.webhooks[0].url_file:", 0) == 0);
}

TEST_CASE("console links and the summary: every event about an SR gets them") {
    json::object f{{"sr_id", "SR-7"}, {"system_name", "billing"}};
    add_console_links(f, "https://guardia.example.com/");
    CHECK(f.at("console_url").as_string() == "https://guardia.example.com/ui/#/sr/SR-7");
    CHECK(f.at("review_url").as_string() == "https://guardia.example.com/ui/#/sr/SR-7/review");
    json::object no_sr{{"status", "x"}};
    add_console_links(no_sr, "https://guardia.example.com");
    CHECK_FALSE(no_sr.contains("console_url"));
    json::object no_url{{"sr_id", "SR-7"}};
    add_console_links(no_url, "");
    CHECK_FALSE(no_url.contains("console_url"));

    const json::object fields{{"sr_id", "SR-7"},
                              {"system_name", "billing"},
                              {"tier", 2},
                              {"tiers", 3},
                              {"reason", "safety gate: tier 2 failure rate 50 %"},
                              {"principal", "ops"},
                              {"rolled_back", 4},
                              {"failed", 1},
                              {"counts", json::object{{"total", 10},
                                                      {"deployed", 8},
                                                      {"failed", 1},
                                                      {"not_started", 1}}}};
    for (const auto ev : known_events()) {
        const auto s = event_summary(ev, fields);
        CAPTURE(s);
        CHECK(s.rfind("SR SR-7 (billing): ", 0) == 0);
    }
    CHECK(event_summary(event_tier_finished, fields) ==
          "SR SR-7 (billing): tier 2 finished: 8 deployed, 1 failed, 1 not started");
    CHECK(event_summary(event_gate_tripped, fields) ==
          "SR SR-7 (billing): tier 2 tripped the gate: safety gate: tier 2 failure rate 50 %");
    CHECK(event_summary(event_rollout_started, fields) ==
          "SR SR-7 (billing): rollout started on 10 node(s) in 3 tier(s)");
    CHECK(event_summary(event_rollout_paused, fields) == "SR SR-7 (billing): rollout paused by ops");

    WebhookConfig hook;
    const auto body = json::parse(render_body(hook, "tier_finished", "d-1", 5, fields));
    CHECK(body.at("summary").as_string() == event_summary(event_tier_finished, fields));
}

// The attacking side: a receiver that checks every signature as docs/OPERATIONS.md says.
TEST_CASE("signed deliveries: a verifying receiver accepts them and refuses tampering, replay and a wrong secret") {
    TempDir dir;
    CapturedLog log;
    const std::string db = dir.file("guardia.db");
    const auto secret_path = write_secret(dir, "webhook.secret", std::string(signing_secret));
    asio::io_context ioc;
    Receiver signed_rx(ioc);
    Receiver plain_rx(ioc);
    signed_rx.up();
    plain_rx.up();
    store::AuditWriter writer(db, writer_options(log));
    writer.start();
    auto cfg = parse(R"({"signing_secret_file": ")" + secret_path + R"(", "webhooks": [
        {"name": "chat", "events": ["rollout_started", "gate_tripped"], "url": ")" +
                     signed_rx.url("/chat") + R"(",
         "template": {"text": "{{summary}} <{{review_url}}|review>", "n": "{{counts.total}}"}}],
        "retry": {"initial_delay_ms": 50, "max_delay_ms": 200}})");
    // A second webhook without any secret (no global one in its configuration).
    auto plain = parse(R"({"webhooks": [{"name": "plain", "event": "rollout_started", "url": ")" +
                       plain_rx.url("/plain") + R"("}]})");
    cfg.webhooks.push_back(plain.webhooks[0]);
    REQUIRE(load_webhook_secrets(cfg, "guardia.json").has_value());
    cfg.webhooks[1].secret = Secret();  // the global secret applies to every webhook: undo it
    cfg.public_url = "http://127.0.0.1:8080";
    Notifier notifier(ioc.get_executor(), cfg, writer, db, log.logger);
    notifier.set_public_url("https://guardia.example.com");
    notifier.start();

    const std::int64_t before = unix_now();
    run(ioc, [&]() -> asio::awaitable<void> {
        json::object started{{"sr_id", "SR-S"}, {"counts", json::object{{"total", 3}}}};
        json::object tripped{{"sr_id", "SR-S"}, {"tier", 1}, {"reason", "safety gate: tier 1"}};
        auto a = co_await notifier.enqueue(event_rollout_started, started);
        auto b = co_await notifier.enqueue(event_gate_tripped, tripped);
        REQUIRE(a.has_value());
        REQUIRE(b.has_value());
        CHECK(*a == 2);
        CHECK(*b == 1);
        {
            const bool ok_ = co_await eventually([&] { return notifier.delivered() == 3; });
            CHECK(ok_);
        }
        co_await notifier.stop();
    });
    const std::int64_t after = unix_now();

    REQUIRE(signed_rx.requests.size() == 2);
    for (const auto& req : signed_rx.requests) {
        const auto ts = req.header("x-guardia-timestamp");
        const auto sig = req.header("x-guardia-signature");
        CAPTURE(req.body);
        REQUIRE(!ts.empty());
        CHECK(std::stoll(ts) >= before);
        CHECK(std::stoll(ts) <= after);
        CHECK(sig.rfind("sha256=", 0) == 0);
        const auto now = unix_now();
        CHECK(verify_webhook_signature(signing_secret, ts, sig, req.body, now, 300) ==
              SignatureCheck::valid);
        // Tampered body, wrong secret, replay an hour later: all refused.
        std::string tampered = req.body;
        tampered.replace(tampered.find("SR-S"), 4, "SR-X");
        CHECK(verify_webhook_signature(signing_secret, ts, sig, tampered, now, 300) ==
              SignatureCheck::mismatch);
        CHECK(verify_webhook_signature("whsec-wrong", ts, sig, req.body, now, 300) ==
              SignatureCheck::mismatch);
        CHECK(verify_webhook_signature(signing_secret, ts, sig, req.body, now + 3600, 300) ==
              SignatureCheck::stale);
        const auto body = json::parse(req.body);
        CHECK(body.at("text").as_string().find("|review>") != std::string::npos);
        // The links use the URL given last (set_public_url), not the configured one.
        CHECK(body.at("text").as_string().find(
                  "<https://guardia.example.com/ui/#/sr/SR-S/review|review>") !=
              std::string::npos);
    }
    const auto first = json::parse(signed_rx.requests[0].body);
    CHECK(((first.at("n") == json::value(3)) ||
           (json::parse(signed_rx.requests[1].body).at("n") == json::value(3))));
    // The webhook without a secret gets no signature headers; its default body has the links.
    REQUIRE(plain_rx.requests.size() == 1);
    CHECK(plain_rx.requests[0].header("x-guardia-signature").empty());
    CHECK(plain_rx.requests[0].header("x-guardia-timestamp").empty());
    const auto plain_body = json::parse(plain_rx.requests[0].body);
    CHECK(plain_body.at("console_url").as_string() == "https://guardia.example.com/ui/#/sr/SR-S");
    CHECK(plain_body.at("review_url").as_string() ==
          "https://guardia.example.com/ui/#/sr/SR-S/review");
    CHECK(plain_body.at("summary").as_string() == "SR SR-S: rollout started on 3 node(s)");

    // The secret is nowhere in the store's files nor in the log.
    auto check_files = [&] {
        for (const auto* suffix : {"", "-wal", "-shm", "-journal"}) {
            const auto bytes = file_bytes(db + suffix);
            CAPTURE(suffix);
            CHECK(bytes.find(signing_secret) == std::string::npos);
        }
    };
    CHECK((file_bytes(db).find("SR-S") != std::string::npos ||
           file_bytes(db + "-wal").find("SR-S") != std::string::npos));  // the rows are there
    check_files();
    writer.stop();
    check_files();
    CHECK(log.text().find(signing_secret) == std::string::npos);
}
