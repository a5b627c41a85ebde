#include "guardia/store/audit_writer.hpp"
#include "../support/captured_log.hpp"
#include "../support/fleet.hpp"
#include "guardia/store/database.hpp"

#include <doctest/doctest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using guardia::Result;
using guardia::store::AuditEvent;
using guardia::store::AuditWriter;
using guardia::store::AuditWriterOptions;
using guardia::store::Database;
using guardia::store::NodeResult;
using guardia::store::RolloutRecord;

using guardia::test::CapturedLog;
using guardia::test::TempDir;

namespace {

AuditWriterOptions with_logger(const CapturedLog& log) {
    AuditWriterOptions o;
    o.logger = log.logger;
    return o;
}

constexpr std::int64_t base_ts = 1'700'000'000'000;

AuditEvent numbered_event(int i) {
    AuditEvent e;
    e.ts_ms = i % 10 == 0 ? 0 : base_ts + i;  // 0: the writer stamps it
    e.sr_id = "SR-7";
    e.rollout_id = "R-7";
    e.node = "node-" + std::to_string(i % 50);
    e.step = "step-" + std::to_string(i % 7);
    e.event = i % 2 == 0 ? "STEP_START" : "STEP_END";
    if (i % 3 == 0) e.exit_code = i % 256;
    if (i % 5 != 0) e.duration_ms = std::int64_t{i} * 3;
    e.detail = "event " + std::to_string(i);
    return e;
}

void check_numbered_row(const guardia::store::AuditRow& row, int i, std::int64_t now) {
    auto expected = numbered_event(i);
    if (expected.ts_ms == 0) {
        CHECK(row.ts_ms > now - 600'000);
        CHECK(row.ts_ms <= now + 1000);
    } else {
        CHECK(row.ts_ms == expected.ts_ms);
    }
    CHECK(row.sr_id == expected.sr_id);
    CHECK(row.rollout_id == expected.rollout_id);
    CHECK(row.node == expected.node);
    CHECK(row.step == expected.step);
    CHECK(row.event == expected.event);
    CHECK(row.exit_code == expected.exit_code);
    CHECK(row.duration_ms == expected.duration_ms);
    CHECK(row.detail == expected.detail);
}

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::int64_t count_rows(const std::string& path, const char* table = "audit_log") {
    Database reader(path);
    return reader.query_int64(std::string("SELECT count(*) FROM ") + table).value();
}

// Runs `body` as a coroutine on `ioc` under a deadline; exceptions surface in the test.
void run_under_deadline(asio::io_context& ioc, std::function<asio::awaitable<void>()> body,
                        std::chrono::seconds deadline = 30s) {
    bool done = false;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
            co_await body();
            done = true;
        },
        [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);
        });
    ioc.run_for(deadline);
    ioc.restart();
    REQUIRE_MESSAGE(done, "the coroutine did not finish before the deadline");
}

// Every byte the store keeps on disk: the database and, if present, its WAL.
std::string file_bytes(const std::string& path) {
    std::string all;
    for (const auto& p : {path, path + "-wal"}) {
        std::ifstream in(p, std::ios::binary);
        all.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    return all;
}

}  // namespace

TEST_SUITE_BEGIN("audit_writer");

TEST_CASE("audit writer: 10,000 events from another thread arrive in order, durable()") {
    TempDir dir;
    const auto path = dir.file("audit.db");
    CapturedLog log;
    asio::io_context ioc;  // before the writer: its completions are posted here
    AuditWriter writer(path, with_logger(log));
    writer.start();

    constexpr int n = 10000;
    std::atomic<bool> produced{false};
    const auto t0 = std::chrono::steady_clock::now();
    std::thread producer([&] {
        for (int i = 0; i < n; ++i) writer.record(numbered_event(i));
        produced = true;
    });

    const auto loop_thread = std::this_thread::get_id();
    int barriers_while_producing = 0;
    std::int64_t rows_when_resolved = -1;
    double seconds = 0;
    run_under_deadline(ioc, [&]() -> asio::awaitable<void> {
        asio::steady_timer timer(co_await asio::this_coro::executor);
        while (!produced) {
            // Barriers interleaved with a producer still recording: each must resolve.
            auto r = co_await writer.durable();
            CHECK(r.has_value());
            CHECK(std::this_thread::get_id() == loop_thread);  // resumed on our executor
            ++barriers_while_producing;
            timer.expires_after(1ms);
            co_await timer.async_wait(asio::use_awaitable);
        }
        auto r = co_await writer.durable();
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        CHECK(r.has_value());
        CHECK(std::this_thread::get_id() == loop_thread);
        // Resolved means committed: a second connection already sees every row.
        rows_when_resolved = count_rows(path);
    });
    producer.join();

    CHECK(rows_when_resolved == n);
    CHECK(writer.queue_depth() == 0);
    CHECK(writer.committed() == n);
    CHECK_FALSE(writer.last_error());
    Database reader(path);
    auto rows = reader.audit_for("SR-7", 0, n);
    REQUIRE(rows.has_value());
    REQUIRE(rows->size() == n);
    const auto now = now_ms();
    for (int i = 0; i < n; ++i) check_numbered_row((*rows)[static_cast<std::size_t>(i)], i, now);
    MESSAGE("audit writer: " << n << " events recorded from another thread and durable in "
                             << seconds * 1000 << " ms = " << static_cast<long>(n / seconds)
                             << " events/s (" << barriers_while_producing
                             << " durable() barriers while producing)");
}

TEST_CASE("audit writer: durable() resolves only after the rows are committed") {
    TempDir dir;
    const auto path = dir.file("audit.db");
    CapturedLog log;
    asio::io_context ioc;
    AuditWriter writer(path, with_logger(log));
    writer.start();
    run_under_deadline(ioc, [&]() -> asio::awaitable<void> {
        // Nothing queued: resolves at once.
        CHECK((co_await writer.durable()).has_value());
        for (int round = 1; round <= 20; ++round) {
            for (int i = 0; i < round * 7; ++i) writer.record(numbered_event(i));
            RolloutRecord r;
            r.id = "R-" + std::to_string(round);
            r.sr_id = "SR-7";
            r.status = "SUCCEEDED";
            r.created_ms = base_ts;
            r.finished_ms = base_ts + round;
            writer.upsert_rollout(r);
            auto result = co_await writer.durable();
            REQUIRE(result.has_value());
            Database reader(path);
            // Everything queued before durable() is visible to another connection.
            CHECK(reader.query_int64("SELECT count(*) FROM audit_log").value() ==
                  7 * round * (round + 1) / 2);
            auto stored = reader.rollout(r.id);
            REQUIRE(stored.has_value());
            REQUIRE(stored->has_value());
            CHECK((*stored)->finished_ms == base_ts + round);
        }
    });
}

TEST_CASE("audit writer: a trickle waits for the commit interval, durable() never does") {
    TempDir dir;
    const auto path = dir.file("audit.db");
    CapturedLog log;
    asio::io_context ioc;
    auto options = with_logger(log);
    options.commit_interval = 2s;
    AuditWriter writer(path, options);
    writer.start();
    using Clock = std::chrono::steady_clock;
    auto wait_for_rows = [&](std::int64_t n) {
        const auto until = Clock::now() + 20s;
        while (count_rows(path) < n && Clock::now() < until) std::this_thread::sleep_for(10ms);
        return count_rows(path);
    };
    // After a quiet spell the first event is committed at once.
    writer.record(numbered_event(1));
    REQUIRE(wait_for_rows(1) == 1);
    // The next one waits for the interval: one transaction (one fsync) for a trickle.
    writer.record(numbered_event(2));
    std::this_thread::sleep_for(300ms);
    CHECK(count_rows(path) == 1);
    CHECK(writer.queue_depth() == 1);
    // A durable() barrier does not wait for it.
    run_under_deadline(ioc, [&]() -> asio::awaitable<void> {
        const auto t0 = Clock::now();
        CHECK((co_await writer.durable()).has_value());
        CHECK(Clock::now() - t0 < 1500ms);
        CHECK(count_rows(path) == 2);
    });
    const auto committed_at = Clock::now();
    // Without a barrier an event is still written, one interval after the latest commit.
    writer.record(numbered_event(3));
    REQUIRE(wait_for_rows(3) == 3);
    CHECK(Clock::now() - committed_at >= 1500ms);
    // The row is visible to another connection a moment before the writer thread counts it.
    const auto counted_by = Clock::now() + 20s;
    while (writer.committed() < 3 && Clock::now() < counted_by) std::this_thread::sleep_for(10ms);
    CHECK(writer.committed() == 3);
}

TEST_CASE("audit writer: registered secrets never reach the file or the log") {
    TempDir dir;
    const auto path = dir.file("audit.db");
    const std::string canary = "Canary-P@ssw0rd-7731";
    CapturedLog log;
    {
        asio::io_context ioc;
        AuditWriter writer(path, with_logger(log));
        writer.set_redactions({canary, "", "Canary-P@ss"});  // overlapping: longest wins
        writer.start();

        auto e = numbered_event(1);
        e.detail = "sshpass -p " + canary + " failed; retried with " + canary + ".";
        writer.record(e);
        auto head = numbered_event(2);
        head.detail = "prefix only: Canary-P@ss!";
        writer.record(head);
        RolloutRecord r;
        r.id = "R-1";
        r.sr_id = "SR-7";
        r.status = "ABORTED";
        r.reason = "gate: " + canary;
        r.created_ms = base_ts;
        writer.upsert_rollout(r);
        NodeResult n;
        n.rollout_id = "R-1";
        n.node = "node-1";
        n.status = "FAILED";
        n.error = "auth refused for " + canary;
        writer.upsert_node_result(n);
        // Refused item (unknown rollout): its log line must not carry the secret either.
        NodeResult orphan = n;
        orphan.rollout_id = "R-unknown";
        writer.upsert_node_result(orphan);

        run_under_deadline(ioc, [&]() -> asio::awaitable<void> {
            // Whether this barrier or an earlier batch reports the orphan's refusal depends on
            // the writer thread's timing; the count of refused items does not.
            (void)co_await writer.durable();
        });
        CHECK(writer.rejected() == 1);  // the orphan was refused
        Database reader(path);
        auto rows = reader.audit_for("SR-7", 0, 10).value();
        REQUIRE(rows.size() == 2);
        CHECK(rows[0].detail == "sshpass -p *** failed; retried with ***.");
        CHECK(rows[1].detail == "prefix only: ***!");
        CHECK(reader.rollout("R-1").value()->reason == "gate: ***");
        CHECK(reader.node_result("R-1", "node-1").value()->error == "auth refused for ***");
        writer.stop();
    }
    // Both connections are closed: the bytes on disk are all there is.
    const auto bytes = file_bytes(path);
    CHECK(bytes.size() > 0);
    CHECK(bytes.find(canary) == std::string::npos);
    CHECK(bytes.find("Canary-P@ss") == std::string::npos);
    CHECK(log.text().find("R-unknown") != std::string::npos);  // the refusal was logged...
    CHECK(log.text().find("Canary") == std::string::npos);     // ...without its free text
}

TEST_CASE("audit writer: details are bounded, cut on a UTF-8 boundary, after redaction") {
    TempDir dir;
    const auto path = dir.file("audit.db");
    CapturedLog log;
    auto options = with_logger(log);
    options.max_detail_bytes = 101;
    const std::string secret = "0123456789-secret-abcdefghij";
    {
        AuditWriter writer(path, options);
        writer.set_redactions({secret});
        auto big = numbered_event(1);
        big.detail = std::string(100000, 'x');
        writer.record(big);
        auto utf8 = numbered_event(2);
        utf8.detail.clear();
        for (int i = 0; i < 5000; ++i) utf8.detail += "\xC3\xA9";  // "é", two bytes
        writer.record(utf8);
        // Cutting first would keep the secret's head; redacting first leaves nothing to cut.
        auto edge = numbered_event(3);
        edge.detail = std::string(80, 'a') + secret;
        writer.record(edge);
        writer.stop();
    }
    Database reader(path);
    auto rows = reader.audit_for("SR-7", 0, 10).value();
    REQUIRE(rows.size() == 3);
    CHECK(rows[0].detail.size() == 101);
    CHECK(rows[0].detail == std::string(87, 'x') + "...[truncated]");
    // 87 bytes would split an "é": 86 are kept.
    CHECK(rows[1].detail.size() == 86 + 14);
    CHECK(rows[1].detail.substr(84, 2) == "\xC3\xA9");
    CHECK(rows[2].detail == std::string(80, 'a') + "***");

    // The default bound is 4 KiB.
    const auto path2 = dir.file("audit2.db");
    {
        AuditWriter writer(path2, with_logger(log));
        auto big = numbered_event(1);
        big.detail = std::string(1 << 20, 'y');
        writer.record(big);
    }  // destructor: stop() drains on this thread (never started)
    Database reader2(path2);
    auto rows2 = reader2.audit_for("SR-7", 0, 10).value();
    REQUIRE(rows2.size() == 1);
    CHECK(rows2[0].detail.size() == 4096);
}

TEST_CASE("audit writer: stop() drains the queue and commits, started or not") {
    TempDir dir;
    CapturedLog log;
    SUBCASE("started") {
        const auto path = dir.file("started.db");
        AuditWriter writer(path, with_logger(log));
        writer.start();
        for (int i = 0; i < 5000; ++i) writer.record(numbered_event(i));
        writer.stop();
        CHECK(writer.queue_depth() == 0);
        CHECK(writer.committed() == 5000);
        CHECK(count_rows(path) == 5000);
        writer.stop();                     // idempotent
        writer.record(numbered_event(1));  // too late: logged and dropped, no crash
        CHECK(log.text().find("already stopped") != std::string::npos);
        CHECK(count_rows(path) == 5000);
    }
    SUBCASE("never started") {
        const auto path = dir.file("unstarted.db");
        AuditWriter writer(path, with_logger(log));
        for (int i = 0; i < 3; ++i) writer.record(numbered_event(i));
        CHECK(writer.queue_depth() == 3);
        writer.stop();
        CHECK(count_rows(path) == 3);
        writer.start();  // after stop: no thread
    }
    SUBCASE("destroyed without start or stop") {
        const auto path = dir.file("destroyed.db");
        { AuditWriter writer(path, with_logger(log)); }
        CHECK(count_rows(path) == 0);
    }
    SUBCASE("durable() after stop() reports the drained state") {
        const auto path = dir.file("after.db");
        asio::io_context ioc;
        AuditWriter writer(path, with_logger(log));
        writer.start();
        writer.record(numbered_event(1));
        writer.stop();
        run_under_deadline(ioc, [&]() -> asio::awaitable<void> {
            CHECK((co_await writer.durable()).has_value());
        });
    }
}

TEST_CASE("audit writer: a failing store keeps the queue and reports through durable()") {
    TempDir dir;
    const auto path = dir.file("audit.db");
    CapturedLog log;
    asio::io_context ioc;
    AuditWriter writer(path, with_logger(log));
    writer.start();
    writer.set_query_only_for_test(true);  // every write now fails with SQLITE_READONLY
    for (int i = 0; i < 100; ++i) writer.record(numbered_event(i));

    run_under_deadline(ioc, [&]() -> asio::awaitable<void> {
        auto r = co_await writer.durable();
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code.category() == guardia::store::sqlite_category());
        CHECK((r.error().code.value() & 0xff) == SQLITE_READONLY);
        CHECK(r.error().message.find(path) != std::string::npos);

        auto last = writer.last_error();
        REQUIRE(last);
        CHECK(last->code == r.error().code);
        CHECK(writer.queue_depth() == 100);  // kept, not dropped
        CHECK(count_rows(path) == 0);

        // More arrive during the outage; every durable() call retries and fails again.
        for (int i = 100; i < 150; ++i) writer.record(numbered_event(i));
        CHECK_FALSE((co_await writer.durable()).has_value());
        CHECK(writer.queue_depth() == 150);

        writer.set_query_only_for_test(false);  // the disk "comes back"
        auto ok = co_await writer.durable();
        CHECK(ok.has_value());
        CHECK_FALSE(writer.last_error());
        CHECK(writer.queue_depth() == 0);
    });
    CHECK(writer.committed() == 150);
    Database reader(path);
    auto rows = reader.audit_for("SR-7", 0, 1000).value();
    REQUIRE(rows.size() == 150);
    const auto now = now_ms();
    for (int i = 0; i < 150; ++i) check_numbered_row(rows[static_cast<std::size_t>(i)], i, now);
    const auto text = log.text();
    CHECK(text.find("keeping them for retry") != std::string::npos);
    CHECK(text.find("recovered") != std::string::npos);
}

TEST_CASE("audit writer: stop() on a failing store gives up loudly, without hanging") {
    TempDir dir;
    const auto path = dir.file("audit.db");
    CapturedLog log;
    asio::io_context ioc;
    AuditWriter writer(path, with_logger(log));
    writer.start();
    writer.set_query_only_for_test(true);
    for (int i = 0; i < 10; ++i) writer.record(numbered_event(i));
    const auto t0 = std::chrono::steady_clock::now();
    writer.stop();
    CHECK(std::chrono::steady_clock::now() - t0 < 10s);
    // Given up on the store, kept in the spill journal (audit_spill_test.cpp replays it).
    CHECK(writer.spilled() == 10);
    CHECK(writer.queue_depth() == 0);
    CHECK(writer.last_error());
    CHECK(writer.degraded());
    CHECK(log.text().find("10 item(s) could not be written") != std::string::npos);
    run_under_deadline(ioc, [&]() -> asio::awaitable<void> {
        CHECK_FALSE((co_await writer.durable()).has_value());
    });
    CHECK(count_rows(path) == 0);
}

TEST_CASE("audit writer: an item SQLite refuses is skipped and reported, the rest commit") {
    TempDir dir;
    const auto path = dir.file("audit.db");
    CapturedLog log;
    asio::io_context ioc;
    AuditWriter writer(path, with_logger(log));
    writer.start();
    run_under_deadline(ioc, [&]() -> asio::awaitable<void> {
        writer.record(numbered_event(1));
        NodeResult orphan;  // its rollout was never written: foreign key violation
        orphan.rollout_id = "R-missing";
        orphan.node = "node-1";
        orphan.status = "RUNNING";
        writer.upsert_node_result(orphan);
        writer.record(numbered_event(3));
        // durable() reports a refusal only when it shares the refused item's batch (timing);
        // rejected() and last_error() always record it.
        auto r = co_await writer.durable();
        if (!r.has_value()) CHECK((r.error().code.value() & 0xff) == SQLITE_CONSTRAINT);
        CHECK(writer.rejected() == 1);
        REQUIRE(writer.last_error());
        CHECK((writer.last_error()->code.value() & 0xff) == SQLITE_CONSTRAINT);
        CHECK(writer.queue_depth() == 0);  // not retried forever
        CHECK(count_rows(path) == 2);

        // The next barrier only covers what came after: fine again.
        RolloutRecord rollout;
        rollout.id = "R-1";
        rollout.sr_id = "SR-7";
        rollout.status = "RUNNING";
        rollout.created_ms = base_ts;
        writer.upsert_rollout(rollout);
        NodeResult n;
        n.rollout_id = "R-1";
        n.node = "node-1";
        n.status = "RUNNING";
        n.step = "transfer";
        n.started_ms = base_ts + 1;
        writer.upsert_node_result(n);
        n.status = "SUCCEEDED";
        n.step = "health";
        n.finished_ms = base_ts + 2;
        writer.upsert_node_result(n);  // replaces the row
        CHECK((co_await writer.durable()).has_value());
        CHECK_FALSE(writer.last_error());
    });
    Database reader(path);
    auto n = reader.node_result("R-1", "node-1").value();
    REQUIRE(n);
    CHECK(n->status == "SUCCEEDED");
    CHECK(n->step == "health");
    CHECK(n->started_ms == base_ts + 1);
    CHECK(n->finished_ms == base_ts + 2);
    CHECK(reader.query_int64("SELECT count(*) FROM node_results").value() == 1);
    CHECK(log.text().find("R-missing") != std::string::npos);
}

TEST_SUITE_END();
