// The spill journal (guardia/store/spill_journal.hpp): its line format and parser, and the
// AuditWriter spilling what a failing store could not take and replaying it at the next start,
// on a real full filesystem too.
#include "../support/captured_log.hpp"
#include "../support/fleet.hpp"
#include "guardia/store/audit_chain.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"
#include "guardia/store/spill_journal.hpp"

#include <doctest/doctest.h>
#include <sqlite3.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using guardia::store::ArtifactRecord;
using guardia::store::AuditEvent;
using guardia::store::AuditWriter;
using guardia::store::AuditWriterOptions;
using guardia::store::Database;
using guardia::store::IdempotencyRecord;
using guardia::store::InventoryNodeRecord;
using guardia::store::NodeResult;
using guardia::store::OutboxRecord;
using guardia::store::parse_spill;
using guardia::store::RolloutRecord;
using guardia::store::spill_header;
using guardia::store::spill_line;
using guardia::store::SpillItem;
using guardia::store::TaskRecord;
using guardia::test::CapturedLog;
using guardia::test::TempDir;

namespace {

constexpr std::int64_t base_ts = 1'700'000'000'000;

AuditEvent event_no(int i, std::size_t detail_bytes = 0) {
    AuditEvent e;
    e.ts_ms = base_ts + i;
    e.sr_id = "SR-9";
    e.rollout_id = "R-9";
    e.node = "node-" + std::to_string(i % 5);
    e.step = "transfer";
    e.event = "STEP_END";
    if (i % 2 == 0) e.exit_code = i % 7;
    if (i % 3 != 0) e.duration_ms = i * 10;
    e.detail = "event " + std::to_string(i) + ";";
    if (e.detail.size() < detail_bytes) e.detail.append(detail_bytes - e.detail.size(), 'x');
    if (i % 4 == 1) e.principal = "ci-approvals";
    return e;
}

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, std::string_view bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Runs `body` as a coroutine on a fresh io_context under a deadline.
void run_coro(std::function<asio::awaitable<void>()> body) {
    asio::io_context ioc;
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
    ioc.run_for(60s);
    REQUIRE_MESSAGE(done, "the coroutine did not finish before the deadline");
}

guardia::Result<void> await_durable(AuditWriter& writer) {
    guardia::Result<void> result = guardia::Error(guardia::errc::timeout, "not run");
    run_coro([&]() -> asio::awaitable<void> { result = co_await writer.durable(); });
    return result;
}

AuditWriterOptions quick_options(const CapturedLog& log) {
    AuditWriterOptions o;
    o.logger = log.logger;
    o.commit_interval = 0ms;
    o.max_retry_delay = 100ms;
    return o;
}

// Every audit row, oldest first.
std::vector<guardia::store::AuditRow> all_rows(const std::string& db, const std::string& sr) {
    Database reader(db);
    return reader.audit_for(sr, 0, 10000).value();
}

void check_chain(const std::string& db, std::int64_t rows) {
    auto report = guardia::store::verify_audit_chain(db);
    REQUIRE(report.has_value());
    CHECK_FALSE(report->first_break.has_value());
    CHECK(report->rows == rows);
}

// One item of every kind, with text that JSON must escape and bytes that are not UTF-8.
std::vector<SpillItem> one_of_each() {
    std::vector<SpillItem> items;
    AuditEvent e = event_no(2);
    e.detail = std::string("quote \" backslash \\ newline \n tab \t nul ") + '\0' +
               " latin1 \xe9 cut \xe2\x82";
    items.emplace_back(e);
    RolloutRecord r;
    r.id = "R-9";
    r.sr_id = "SR-9";
    r.status = "FAILED";
    r.reason = "disk full";
    r.created_ms = base_ts;
    r.finished_ms = base_ts + 5;
    r.owner = "guardia@deploy-1:4242";
    items.emplace_back(r);
    NodeResult n;
    n.rollout_id = "R-9";
    n.node = "node-1";
    n.status = "FAILED";
    n.step = "health";
    n.error = "exit 3";
    n.started_ms = base_ts + 1;
    n.backup_path = "/var/backups/x";
    items.emplace_back(n);
    TaskRecord t;
    t.sr_id = "SR-9";
    t.status = "DEPLOYING";
    t.requester = "alice";
    t.approver = "bob";
    t.inst_id = "I1";
    t.system_name = "S1";
    t.rollout_id = "R-9";
    t.reason = "";
    t.created_ms = base_ts;
    t.updated_ms = base_ts + 9;
    t.payload = R"({"ticket":"T-1"})";
    items.emplace_back(t);
    InventoryNodeRecord i;
    i.name = "node-1";
    i.inst_id = "I1";
    i.system_name = "S1";
    i.payload = R"({"host":"10.0.0.1"})";
    items.emplace_back(i);
    ArtifactRecord a;
    a.sr_id = "SR-9";
    a.name = "app.tar";
    a.path = "/srv/stage/app.tar";
    a.sha256 = std::string(64, 'a');
    a.size = 1234567890123;
    a.created_ms = base_ts;
    items.emplace_back(a);
    OutboxRecord o;
    o.id = "D-1";
    o.event = "deploy.finished";
    o.sr_id = "SR-9";
    o.url = "https://hooks.example/x";
    o.body = "{}";
    o.attempts = 2;
    o.next_attempt_ms = base_ts + 100;
    o.created_ms = base_ts;
    o.gave_up_ms = base_ts + 200;
    o.last_error = "503";
    items.emplace_back(o);
    IdempotencyRecord k;
    k.key = "K-1";
    k.request = "POST /api/tasks";
    k.status = 201;
    k.body = R"({"sr_id":"SR-9"})";
    k.created_ms = base_ts;
    items.emplace_back(k);
    return items;
}

bool same(const SpillItem& a, const SpillItem& b) {
    if (a.index() != b.index()) return false;
    return std::visit(
        [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            const auto& y = std::get<T>(b);
            if constexpr (std::is_same_v<T, AuditEvent>)
                return x.ts_ms == y.ts_ms && x.sr_id == y.sr_id && x.rollout_id == y.rollout_id &&
                       x.node == y.node && x.step == y.step && x.event == y.event &&
                       x.exit_code == y.exit_code && x.duration_ms == y.duration_ms &&
                       x.detail == y.detail && x.principal == y.principal;
            else if constexpr (std::is_same_v<T, RolloutRecord>)
                return x.id == y.id && x.sr_id == y.sr_id && x.status == y.status &&
                       x.reason == y.reason && x.created_ms == y.created_ms &&
                       x.finished_ms == y.finished_ms && x.owner == y.owner;
            else if constexpr (std::is_same_v<T, NodeResult>)
                return x.rollout_id == y.rollout_id && x.node == y.node && x.status == y.status &&
                       x.step == y.step && x.error == y.error && x.started_ms == y.started_ms &&
                       x.finished_ms == y.finished_ms && x.backup_path == y.backup_path;
            else if constexpr (std::is_same_v<T, TaskRecord>)
                return x.sr_id == y.sr_id && x.status == y.status && x.requester == y.requester &&
                       x.approver == y.approver && x.inst_id == y.inst_id &&
                       x.system_name == y.system_name && x.rollout_id == y.rollout_id &&
                       x.reason == y.reason && x.created_ms == y.created_ms &&
                       x.updated_ms == y.updated_ms && x.payload == y.payload;
            else if constexpr (std::is_same_v<T, InventoryNodeRecord>)
                return x.name == y.name && x.inst_id == y.inst_id &&
                       x.system_name == y.system_name && x.payload == y.payload;
            else if constexpr (std::is_same_v<T, ArtifactRecord>)
                return x.sr_id == y.sr_id && x.name == y.name && x.path == y.path &&
                       x.sha256 == y.sha256 && x.size == y.size && x.created_ms == y.created_ms;
            else if constexpr (std::is_same_v<T, OutboxRecord>)
                return x.id == y.id && x.event == y.event && x.sr_id == y.sr_id && x.url == y.url &&
                       x.headers == y.headers && x.body == y.body && x.attempts == y.attempts &&
                       x.next_attempt_ms == y.next_attempt_ms && x.created_ms == y.created_ms &&
                       x.delivered_ms == y.delivered_ms && x.gave_up_ms == y.gave_up_ms &&
                       x.last_error == y.last_error;
            else
                return x.key == y.key && x.request == y.request && x.status == y.status &&
                       x.body == y.body && x.created_ms == y.created_ms;
        },
        a);
}

// A small tmpfs mounted on `dir` for the life of the guard: a filesystem the test can really
// fill. Unmounted in every outcome (a failed CHECK included), before the TempDir is removed.
class TmpfsMount {
  public:
    TmpfsMount(const std::string& dir, const char* size) : dir_(dir) {
        const std::string data = std::string("size=") + size + ",mode=0700";
        if (::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, data.c_str()) == 0)
            mounted_ = true;
        else
            error_ = std::strerror(errno);
    }
    ~TmpfsMount() {
        if (mounted_ && ::umount2(dir_.c_str(), 0) != 0)
            (void)::umount2(dir_.c_str(), MNT_DETACH);  // something still open: detach
    }
    TmpfsMount(const TmpfsMount&) = delete;
    TmpfsMount& operator=(const TmpfsMount&) = delete;
    bool mounted() const { return mounted_; }
    const std::string& error() const { return error_; }

  private:
    std::string dir_;
    bool mounted_ = false;
    std::string error_;
};

// Writes zeros to `path` until the filesystem refuses (ENOSPC): the disk is full.
std::size_t fill_filesystem(const std::string& path) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE_MESSAGE(fd >= 0, "cannot create the filler file " << path);
    static const std::vector<char> block(4096, '\0');
    std::size_t total = 0;
    for (;;) {
        ssize_t n = ::write(fd, block.data(), block.size());
        if (n <= 0) break;
        total += static_cast<std::size_t>(n);
    }
    // Byte by byte: a partly free last page must not leave room for SQLite.
    for (;;) {
        if (::write(fd, block.data(), 1) != 1) break;
        ++total;
    }
    ::close(fd);
    return total;
}

}  // namespace

TEST_SUITE_BEGIN("audit_spill");

TEST_CASE("spill journal: every record kind round-trips through its line") {
    const auto items = one_of_each();
    std::string file = spill_header("0123abcd");
    for (const auto& item : items) {
        const auto line = spill_line(item);
        CHECK(line.back() == '\n');
        CHECK(line.find('\n') == line.size() - 1);    // JSON escaped the newline in the text
        CHECK(line.find('\0') == std::string::npos);  // and the NUL
        file += line;
    }
    CHECK(file.rfind("{\"guardia_spill\":1", 0) == 0);
    file.append(4096, '\0');  // the reserve's zeros
    auto parsed = parse_spill(file);
    CHECK(parsed.problems.empty());
    CHECK_FALSE(parsed.empty);
    CHECK(parsed.version == 1);
    CHECK(parsed.id == "0123abcd");
    CHECK(parsed.used_bytes == file.size() - 4096);
    REQUIRE(parsed.items.size() == items.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
        INFO("item " << i);
        CHECK(same(parsed.items[i], items[i]));
    }
}

TEST_CASE("spill journal parser: NUL tail, incomplete last line, malformed lines by number") {
    SUBCASE("a fresh or cleared journal (zeros, or nothing) holds nothing") {
        for (const std::string& bytes : {std::string(), std::string(65536, '\0')}) {
            auto parsed = parse_spill(bytes);
            CHECK(parsed.empty);
            CHECK(parsed.items.empty());
            CHECK(parsed.problems.empty());
            CHECK(parsed.used_bytes == 0);
        }
    }
    SUBCASE("the reader stops at the first NUL: what follows is never read") {
        std::string bytes = spill_header("id1") + spill_line(SpillItem(event_no(1)));
        bytes += '\0';
        bytes += spill_line(SpillItem(event_no(2)));  // stale bytes past the end
        auto parsed = parse_spill(bytes);
        CHECK(parsed.problems.empty());
        REQUIRE(parsed.items.size() == 1);
        CHECK(std::get<AuditEvent>(parsed.items[0]).detail == "event 1;");
    }
    SUBCASE("an incomplete last line (a torn write) is reported and not read") {
        std::string line2 = spill_line(SpillItem(event_no(2)));
        line2.pop_back();  // its newline never reached the disk
        std::string bytes = spill_header("id1") + spill_line(SpillItem(event_no(1))) + line2;
        for (const std::string& tail : {std::string(), std::string(100, '\0')}) {
            auto parsed = parse_spill(bytes + tail);
            REQUIRE(parsed.items.size() == 1);
            REQUIRE(parsed.problems.size() == 1);
            CHECK(parsed.problems[0].line == 3);
            CHECK(parsed.problems[0].reason.find("incomplete") != std::string::npos);
        }
        // Cut inside the JSON too: same outcome.
        auto parsed = parse_spill(bytes.substr(0, bytes.size() - 10));
        CHECK(parsed.items.size() == 1);
        REQUIRE(parsed.problems.size() == 1);
        CHECK(parsed.problems[0].line == 3);
    }
    SUBCASE("malformed lines are reported by number; the good ones around them are read") {
        std::string bytes = spill_header("id1");
        bytes += spill_line(SpillItem(event_no(1)));  // line 2
        bytes += "not json at all\n";                 // line 3
        bytes += "[1,2]\n";                           // line 4
        bytes += R"({"kind":"teleport","x":1})"
                 "\n";  // line 5
        bytes += R"({"kind":"rollout","id":"R","sr_id":7})"
                 "\n";                                // line 6
        bytes += "\n";                                // line 7
        bytes += spill_line(SpillItem(event_no(3)));  // line 8
        auto parsed = parse_spill(bytes);
        REQUIRE(parsed.items.size() == 2);
        CHECK(std::get<AuditEvent>(parsed.items[1]).detail == "event 3;");
        REQUIRE(parsed.problems.size() == 5);
        CHECK(parsed.problems[0].line == 3);
        CHECK(parsed.problems[1].line == 4);
        CHECK(parsed.problems[2].line == 5);
        CHECK(parsed.problems[2].reason.find("teleport") != std::string::npos);
        CHECK(parsed.problems[3].line == 6);
        CHECK(parsed.problems[3].reason.find("sr_id") != std::string::npos);
        CHECK(parsed.problems[4].line == 7);
    }
    SUBCASE("no header, or a newer format: nothing is guessed at") {
        for (const std::string& header :
             {std::string("{\"guardia_spill\":2,\"id\":\"x\"}\n"), std::string("hello\n"),
              std::string("{\"kind\":\"rollout\"}\n")}) {
            auto parsed = parse_spill(header + spill_line(SpillItem(event_no(1))));
            CHECK_FALSE(parsed.empty);
            CHECK(parsed.items.empty());
            REQUIRE(parsed.problems.size() == 1);
            CHECK(parsed.problems[0].line == 1);
        }
    }
}

TEST_CASE("audit writer spill: a failing store spills at stop, the next writer replays it") {
    TempDir dir;
    const auto db = dir.file("audit.db");
    const auto spill = db + ".spill";
    constexpr int n = 20;
    RolloutRecord rollout;
    rollout.id = "R-9";
    rollout.sr_id = "SR-9";
    rollout.status = "RUNNING";
    rollout.created_ms = base_ts;
    NodeResult node;
    node.rollout_id = "R-9";
    node.node = "node-1";
    node.status = "SUCCEEDED";
    node.step = "health";
    node.started_ms = base_ts + 1;
    {
        CapturedLog log;
        AuditWriter writer(db, quick_options(log));
        CHECK(writer.spill_path() == spill);
        // The reserve is made at open: the file holds 1 MiB of zeros, nothing to replay.
        CHECK(fs::file_size(spill) == std::size_t{1} << 20);
        CHECK(writer.replayed() == 0);
        writer.record(event_no(0));  // committed before the outage
        writer.start();
        REQUIRE(await_durable(writer).has_value());
        CHECK_FALSE(writer.degraded());

        writer.set_query_only_for_test(true);  // every write now fails (SQLITE_READONLY)
        writer.set_redactions({"hunter2"});
        writer.upsert_rollout(rollout);
        for (int i = 1; i < n; ++i) {
            auto e = event_no(i);
            if (i == 5) e.detail = "password hunter2 leaked";
            writer.record(e);
        }
        writer.upsert_node_result(node);
        auto failed = await_durable(writer);  // one attempt, and the error
        REQUIRE_FALSE(failed.has_value());
        CHECK((failed.error().code.value() & 0xff) == SQLITE_READONLY);
        CHECK(writer.degraded());
        REQUIRE(writer.last_error());
        CHECK(writer.queue_depth() == n + 1);

        writer.stop();
        CHECK(writer.spilled() == n + 1);
        CHECK(writer.queue_depth() == 0);  // nothing is held, nothing was lost
        CHECK(writer.committed() == 1);
        const auto text = log.text();
        CHECK(text.find("spilled them to " + spill) != std::string::npos);
        CHECK(text.find("NOT written") == std::string::npos);
        CHECK(text.find("hunter2") == std::string::npos);
        // After stop, durable() says the items are not in the store.
        CHECK_FALSE(await_durable(writer).has_value());
    }
    // The journal: the header, the rollout, the events in order, the node result; redacted.
    const auto bytes = read_bytes(spill);
    CHECK(bytes.size() == std::size_t{1} << 20);
    CHECK(bytes.find("hunter2") == std::string::npos);
    auto parsed = parse_spill(bytes);
    CHECK(parsed.problems.empty());
    REQUIRE(parsed.items.size() == n + 1);
    CHECK(std::holds_alternative<RolloutRecord>(parsed.items.front()));
    CHECK(std::holds_alternative<NodeResult>(parsed.items.back()));
    CHECK(std::get<AuditEvent>(parsed.items[1]).ts_ms == base_ts + 1);
    CHECK(std::get<AuditEvent>(parsed.items[5]).detail == "password *** leaked");
    CHECK(all_rows(db, "SR-9").size() == 1);

    {
        CapturedLog log;
        AuditWriter writer(db, quick_options(log));
        CHECK(writer.replayed() == n + 1);
        CHECK(log.text().find("replaying 21 item(s) from " + spill) != std::string::npos);
        writer.record(event_no(n));  // recorded after the replay was queued: written after it
        writer.start();
        REQUIRE(await_durable(writer).has_value());
        CHECK_FALSE(writer.degraded());
        CHECK(writer.committed() == n + 2);
        // Replayed and cleared: zeros again, its room kept, nothing to replay next time.
        const auto after = read_bytes(spill);
        CHECK(after.size() == std::size_t{1} << 20);
        CHECK(after.find_first_not_of('\0') == std::string::npos);
    }
    const auto rows = all_rows(db, "SR-9");
    REQUIRE(rows.size() == n + 1);
    for (int i = 0; i <= n; ++i) {
        INFO("row " << i);
        const auto& row = rows[static_cast<std::size_t>(i)];
        const auto expected = event_no(i);
        CHECK(row.ts_ms == expected.ts_ms);  // the original time, not the replay's
        CHECK(row.node == expected.node);
        CHECK(row.exit_code == expected.exit_code);
        CHECK(row.duration_ms == expected.duration_ms);
        CHECK(row.principal == expected.principal);
        CHECK(row.detail == (i == 5 ? "password *** leaked" : expected.detail));
        if (i > 0) CHECK(row.id == rows[static_cast<std::size_t>(i) - 1].id + 1);
    }
    check_chain(db, n + 1);
    Database reader(db);
    auto r = reader.rollout("R-9").value();
    REQUIRE(r);
    CHECK(r->status == "RUNNING");
    auto nr = reader.node_result("R-9", "node-1").value();
    REQUIRE(nr);
    CHECK(nr->status == "SUCCEEDED");
    CHECK(nr->started_ms == base_ts + 1);

    // A third writer finds nothing to replay: written exactly once.
    {
        CapturedLog log;
        AuditWriter writer(db, quick_options(log));
        CHECK(writer.replayed() == 0);
        writer.stop();
    }
    CHECK(all_rows(db, "SR-9").size() == n + 1);
}

TEST_CASE(
    "audit writer spill: a malformed line is logged, the journal kept aside, the rest replayed") {
    TempDir dir;
    const auto db = dir.file("audit.db");
    const auto spill = dir.file("custom.spill");
    { Database create(db); }
    std::string bytes = spill_header("feed");
    bytes += spill_line(SpillItem(event_no(1)));
    bytes += "{\"kind\":\"audit_event\",\"ts_ms\":\"yesterday\"}\n";  // line 3
    bytes += spill_line(SpillItem(event_no(2)));
    bytes += "{\"kind\":\"audit_ev";  // torn: line 5
    write_bytes(spill, bytes);

    CapturedLog log;
    AuditWriterOptions options = quick_options(log);
    options.spill_path = spill;
    options.spill_reserve_bytes = 8192;
    {
        AuditWriter writer(db, options);
        CHECK(writer.replayed() == 2);
        writer.start();
        REQUIRE(await_durable(writer).has_value());
        writer.stop();
    }
    const auto text = log.text();
    CHECK(text.find("line 3") != std::string::npos);
    CHECK(text.find("ts_ms") != std::string::npos);
    CHECK(text.find("line 5") != std::string::npos);
    // The original is kept under a new name, byte for byte (then the reserve's zeros: it was
    // the journal, with its room, until its items were in the store); a fresh one took its place.
    std::vector<std::string> kept;
    for (const auto& entry : fs::directory_iterator(dir.path()))
        if (entry.path().filename().string().rfind("custom.spill.bad-", 0) == 0)
            kept.push_back(entry.path().string());
    REQUIRE(kept.size() == 1);
    const auto kept_bytes = read_bytes(kept[0]);
    CHECK(kept_bytes.substr(0, bytes.size()) == bytes);
    CHECK(kept_bytes.find_first_not_of('\0', bytes.size()) == std::string::npos);
    CHECK(text.find("kept as " + kept[0]) != std::string::npos);
    const auto fresh = read_bytes(spill);
    CHECK(fresh.size() == 8192);
    CHECK(fresh.find_first_not_of('\0') == std::string::npos);
    const auto rows = all_rows(db, "SR-9");
    REQUIRE(rows.size() == 2);
    CHECK(rows[0].detail == "event 1;");
    CHECK(rows[1].detail == "event 2;");
    check_chain(db, 2);
}

TEST_CASE("audit writer spill: a replay cut short by a crash is not written twice") {
    TempDir dir;
    const auto db = dir.file("audit.db");
    const auto spill = db + ".spill";
    std::string bytes = spill_header("c0ffee");
    for (int i = 1; i <= 3; ++i) bytes += spill_line(SpillItem(event_no(i)));
    write_bytes(spill, bytes);
    {
        // What a writer leaves behind when it is killed after committing the journal's first
        // two items, before clearing it: the rows and the marker, in one transaction.
        CapturedLog log;
        AuditWriterOptions options = quick_options(log);
        options.spill_path = dir.file("elsewhere.spill");
        AuditWriter writer(db, options);
        writer.record(event_no(1));
        writer.record(event_no(2));
        writer.stop();
        Database raw(db);
        REQUIRE(raw.exec("INSERT INTO meta (key, value) VALUES ('spill_replay', 'c0ffee 2')")
                    .has_value());
    }
    CapturedLog log;
    {
        AuditWriter writer(db, quick_options(log));
        CHECK(writer.replayed() == 1);
        writer.stop();
    }
    CHECK(log.text().find("first 2 item(s) are already in the store") != std::string::npos);
    const auto rows = all_rows(db, "SR-9");
    REQUIRE(rows.size() == 3);
    for (int i = 0; i < 3; ++i)
        CHECK(rows[static_cast<std::size_t>(i)].detail == "event " + std::to_string(i + 1) + ";");
    check_chain(db, 3);
    CHECK(read_bytes(spill).find_first_not_of('\0') == std::string::npos);
}

TEST_CASE("audit writer spill: a second writer on the same database cannot take the journal") {
    TempDir dir;
    const auto db = dir.file("audit.db");
    CapturedLog log1;
    CapturedLog log2;
    AuditWriter first(db, quick_options(log1));
    AuditWriter second(db, quick_options(log2));
    CHECK(first.spill_path() == db + ".spill");
    CHECK(second.spill_path().empty());
    CHECK(log2.text().find("held by another audit writer") != std::string::npos);
    // Without a journal, what cannot be written at stop is counted, never silently dropped.
    second.set_query_only_for_test(true);
    second.record(event_no(1));
    second.record(event_no(2));
    second.stop();
    CHECK(second.spilled() == 0);
    CHECK(second.queue_depth() == 2);
    CHECK(log2.text().find("stopping with 2 audit items NOT written") != std::string::npos);
}

TEST_CASE("audit writer: a database locked past busy_timeout makes it degraded, then recovers") {
    TempDir dir;
    const auto db = dir.file("audit.db");
    CapturedLog log;
    AuditWriterOptions options = quick_options(log);
    options.busy_timeout = 100ms;
    AuditWriter writer(db, options);
    writer.start();
    Database other(db);
    REQUIRE(other.exec("BEGIN IMMEDIATE").has_value());  // holds the write lock
    writer.record(event_no(1));
    auto r = await_durable(writer);
    REQUIRE_FALSE(r.has_value());
    CHECK((r.error().code.value() & 0xff) == SQLITE_BUSY);
    CHECK(writer.degraded());
    CHECK(writer.queue_depth() == 1);  // kept for retry, not rejected
    CHECK(writer.rejected() == 0);
    REQUIRE(other.exec("COMMIT").has_value());
    CHECK(await_durable(writer).has_value());
    CHECK_FALSE(writer.degraded());
    CHECK_FALSE(writer.last_error());
    CHECK(all_rows(db, "SR-9").size() == 1);
}

TEST_CASE("audit writer spill: a really full filesystem, the journal's reserve, the replay") {
    REQUIRE_MESSAGE(::geteuid() == 0,
                    "this test mounts a tmpfs to fill a filesystem for real and must run as "
                    "root (it is not skipped: an untested spill path is a defect)");
    TempDir dir;
    TmpfsMount mount(dir.path(), "1m");
    REQUIRE_MESSAGE(mount.mounted(), "mount -t tmpfs on " << dir.path() << ": " << mount.error());
    const auto db = dir.file("audit.db");
    const auto spill = db + ".spill";
    const auto filler = dir.file("filler");
    constexpr std::size_t reserve = 64 * 1024;
    constexpr std::size_t detail = 700;

    int recorded = 0;
    std::uint64_t spilled = 0;
    {
        CapturedLog log;
        AuditWriterOptions options = quick_options(log);
        options.spill_reserve_bytes = reserve;
        AuditWriter writer(db, options);
        CHECK(log.text().find("cannot reserve") == std::string::npos);
        writer.start();
        writer.record(event_no(recorded++, detail));
        REQUIRE(await_durable(writer).has_value());
        CHECK(fill_filesystem(filler) > 0);

        // Rounds of a few events until a batch fails for want of room.
        std::optional<guardia::Error> failure;
        for (int round = 0; round < 2000 && !failure; ++round) {
            for (int i = 0; i < 4; ++i) writer.record(event_no(recorded++, detail));
            auto r = await_durable(writer);
            if (!r) failure = r.error();
        }
        REQUIRE_MESSAGE(failure, "the store never ran out of room");
        INFO("failure: " << failure->describe());
        const int code = failure->code.value() & 0xff;
        CHECK((code == SQLITE_FULL || code == SQLITE_IOERR));
        CHECK(writer.degraded());
        for (int i = 0; i < 5; ++i) writer.record(event_no(recorded++, detail));
        CHECK_FALSE(await_durable(writer).has_value());  // still full: one attempt, an error

        const auto committed = writer.committed();
        writer.stop();
        spilled = writer.spilled();
        MESSAGE("full filesystem: " << recorded << " items recorded, " << committed
                                    << " committed, " << spilled
                                    << " spilled; the store said: " << failure->describe());
        CHECK(spilled > 0);
        CHECK(committed + spilled == static_cast<std::uint64_t>(recorded));
        CHECK(writer.queue_depth() == 0);
        CHECK(log.text().find("NOT written") == std::string::npos);
    }
    // The journal used its reserve: still full, yet every unwritten item is in the journal.
    auto parsed = parse_spill(read_bytes(spill));
    CHECK(parsed.problems.empty());
    CHECK(parsed.items.size() == spilled);

    fs::remove(filler);  // the operator makes room
    {
        CapturedLog log;
        AuditWriterOptions options = quick_options(log);
        options.spill_reserve_bytes = reserve;
        AuditWriter writer(db, options);
        CHECK(writer.replayed() == spilled);
        writer.start();
        REQUIRE(await_durable(writer).has_value());
        writer.stop();
    }
    const auto rows = all_rows(db, "SR-9");
    REQUIRE(rows.size() == static_cast<std::size_t>(recorded));
    for (int i = 0; i < recorded; ++i) {
        INFO("row " << i);
        CHECK(rows[static_cast<std::size_t>(i)].detail == event_no(i, detail).detail);
        CHECK(rows[static_cast<std::size_t>(i)].ts_ms == base_ts + i);
    }
    check_chain(db, recorded);
    CHECK(read_bytes(spill).find_first_not_of('\0') == std::string::npos);
}

TEST_CASE("audit writer spill: beyond the reserve on a full disk, the loss is counted exactly") {
    REQUIRE_MESSAGE(::geteuid() == 0,
                    "this test mounts a tmpfs to fill a filesystem for real and must run as "
                    "root (it is not skipped: an untested spill path is a defect)");
    TempDir dir;
    TmpfsMount mount(dir.path(), "1m");
    REQUIRE_MESSAGE(mount.mounted(), "mount -t tmpfs on " << dir.path() << ": " << mount.error());
    const auto db = dir.file("audit.db");
    const auto spill = db + ".spill";
    const auto filler = dir.file("filler");
    constexpr std::size_t reserve = 4096;  // one page: room for a few lines only
    constexpr std::size_t detail = 1000;
    constexpr int outage_items = 12;  // ~13 KB of lines: cannot all fit

    int recorded = 0;
    std::uint64_t spilled = 0;
    std::uint64_t committed = 0;
    {
        CapturedLog log;
        AuditWriterOptions options = quick_options(log);
        options.spill_reserve_bytes = reserve;
        AuditWriter writer(db, options);
        writer.start();
        writer.record(event_no(recorded++, detail));
        REQUIRE(await_durable(writer).has_value());
        CHECK(fill_filesystem(filler) > 0);
        bool failed = false;
        for (int round = 0; round < 2000 && !failed; ++round) {
            writer.record(event_no(recorded++, detail));
            failed = !await_durable(writer).has_value();
        }
        REQUIRE_MESSAGE(failed, "the store never ran out of room");
        for (int i = 0; i < outage_items; ++i) writer.record(event_no(recorded++, detail));
        committed = writer.committed();
        writer.stop();
        spilled = writer.spilled();
        const auto unwritten = static_cast<std::uint64_t>(recorded) - committed;
        MESSAGE("beyond the reserve: " << unwritten << " unwritten, " << spilled << " spilled");
        CHECK(spilled > 0);
        CHECK(spilled < unwritten);
        CHECK(writer.queue_depth() == unwritten - spilled);  // the lost ones, counted
        const auto text = log.text();
        CHECK(text.find("stopping with " + std::to_string(unwritten - spilled) +
                        " audit items NOT written: " + std::to_string(spilled) + " spilled to " +
                        spill) != std::string::npos);
        CHECK(text.find("LOST") != std::string::npos);
    }
    // Only complete lines precede the first NUL: the torn one was taken back.
    auto parsed = parse_spill(read_bytes(spill));
    CHECK(parsed.problems.empty());
    CHECK(parsed.items.size() == spilled);

    fs::remove(filler);
    {
        CapturedLog log;
        AuditWriterOptions options = quick_options(log);
        options.spill_reserve_bytes = reserve;
        AuditWriter writer(db, options);
        CHECK(writer.replayed() == spilled);
        writer.start();
        REQUIRE(await_durable(writer).has_value());
        writer.stop();
    }
    // The committed rows, then the spilled ones, in the order they were recorded.
    const auto rows = all_rows(db, "SR-9");
    REQUIRE(rows.size() == committed + spilled);
    for (std::size_t i = 0; i < rows.size(); ++i) {
        INFO("row " << i);
        CHECK(rows[i].detail == event_no(static_cast<int>(i), detail).detail);
    }
    check_chain(db, static_cast<std::int64_t>(rows.size()));
}

TEST_CASE("audit writer spill: a reserve the disk cannot hold is a warning naming the file") {
    REQUIRE_MESSAGE(::geteuid() == 0,
                    "this test mounts a tmpfs and must run as root (it is not skipped)");
    TempDir dir;
    TmpfsMount mount(dir.path(), "1m");
    REQUIRE_MESSAGE(mount.mounted(), "mount -t tmpfs on " << dir.path() << ": " << mount.error());
    const auto db = dir.file("audit.db");
    CapturedLog log;
    {
        AuditWriterOptions options = quick_options(log);
        options.spill_reserve_bytes = std::size_t{4} << 20;  // more than the filesystem holds
        AuditWriter writer(db, options);
        writer.start();
        writer.record(event_no(1));
        CHECK(await_durable(writer).has_value());  // the writer goes on
    }
    const auto text = log.text();
    CHECK(text.find("spill journal " + db + ".spill: cannot reserve 4194304 bytes") !=
          std::string::npos);
    CHECK(text.find("No space left on device") != std::string::npos);
    CHECK(all_rows(db, "SR-9").size() == 1);
}

TEST_SUITE_END();
