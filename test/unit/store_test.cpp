#include "guardia/store/audit_chain.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <doctest/doctest.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>

using guardia::store::AuditEvent;
using guardia::store::AuditWriter;
using guardia::store::Database;
using guardia::store::NodeResult;
using guardia::store::RolloutRecord;
using guardia::store::ChainFault;
using guardia::store::verify_audit_chain;

namespace {

// A fresh directory under /tmp, removed with everything in it (the -wal and -shm files too).
struct TempDir {
    TempDir() {
        char tmpl[] = "/tmp/guardia-store-test-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::string file(const std::string& name) const { return (path / name).string(); }
    std::filesystem::path path;
};

// prefix + n, appended: "literal" + std::to_string(n) makes GCC 12 at -O3 (Release) raise a
// false -Werror=restrict (GCC bug 105329).
std::string numbered(const char* prefix, long long n) {
    std::string s = prefix;
    s += std::to_string(n);
    return s;
}

AuditEvent event(std::string sr, std::string rollout, std::string node, std::string name) {
    AuditEvent e;
    e.sr_id = std::move(sr);
    e.rollout_id = std::move(rollout);
    e.node = std::move(node);
    e.step = "transfer";
    e.event = std::move(name);
    return e;
}

}  // namespace

TEST_SUITE_BEGIN("store");

TEST_CASE("store: a new file gets the schema, WAL, foreign keys and the version") {
    TempDir dir;
    Database db(dir.file("guardia.db"));
    CHECK(Database::schema_version() >= 1);
    CHECK(db.query_int64("PRAGMA user_version").value() == Database::schema_version());
    CHECK(db.query_text("PRAGMA journal_mode").value() == "wal");
    CHECK(db.query_int64("PRAGMA foreign_keys").value() == 1);
    CHECK(db.query_int64("PRAGMA synchronous").value() == 1);  // NORMAL
    CHECK(db.query_int64("PRAGMA busy_timeout").value() == 5000);
    CHECK(db.query_int64("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN"
                         " ('audit_log', 'node_results', 'rollouts', 'tasks', 'artifacts',"
                         "  'inventory_nodes', 'outbox')")
              .value() == 7);
    CHECK(db.query_int64("SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name IN"
                         " ('audit_log_by_sr', 'audit_log_by_rollout')")
              .value() == 2);

    guardia::store::DatabaseOptions full;
    full.synchronous_full = true;
    Database writer_side(dir.file("guardia.db"), full);
    CHECK(writer_side.query_int64("PRAGMA synchronous").value() == 2);  // FULL
}

TEST_CASE("store: reopening runs no migration twice and keeps the data") {
    TempDir dir;
    const auto path = dir.file("guardia.db");
    {
        Database db(path);
        REQUIRE(db.exec("INSERT INTO tasks (sr_id, status, created_ms, updated_ms)"
                        " VALUES ('SR-1', 'APPROVED', 1, 2)")
                    .has_value());
    }
    for (int i = 0; i < 3; ++i) {
        Database db(path);
        CHECK(db.query_int64("PRAGMA user_version").value() == Database::schema_version());
        CHECK(db.query_int64("SELECT count(*) FROM tasks").value() == 1);
        CHECK(db.query_int64("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").value() ==
              9);
    }
}

TEST_CASE("store: two connections opening a new file at once both see one schema") {
    TempDir dir;
    const auto path = dir.file("guardia.db");
    std::string error_a, error_b;
    auto open = [&](std::string& error) {
        try {
            Database db(path);
        } catch (const std::exception& e) {
            error = e.what();
        }
    };
    std::thread a([&] { open(error_a); });
    std::thread b([&] { open(error_b); });
    a.join();
    b.join();
    CHECK(error_a == "");
    CHECK(error_b == "");
    Database db(path);
    CHECK(db.query_int64("PRAGMA user_version").value() == Database::schema_version());
}

TEST_CASE("store: start-up failures throw and name the file") {
    TempDir dir;
    const auto missing = dir.file("no-such-dir/guardia.db");
    try {
        Database db(missing);
        FAIL("opened a file in a missing directory");
    } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()).find(missing) != std::string::npos);
    }
    CHECK_THROWS_AS(AuditWriter{missing}, std::runtime_error);

    // A file from a newer Guardia is refused, not misread.
    const auto newer = dir.file("newer.db");
    {
        Database db(newer);
        REQUIRE(db.exec("PRAGMA user_version = 99").has_value());
    }
    try {
        Database db(newer);
        FAIL("opened a schema from the future");
    } catch (const std::runtime_error& e) {
        const std::string what = e.what();
        CHECK(what.find(newer) != std::string::npos);
        CHECK(what.find("99") != std::string::npos);
    }

    // Not a database at all.
    const auto junk = dir.file("junk.db");
    {
        std::FILE* f = std::fopen(junk.c_str(), "w");
        REQUIRE(f != nullptr);
        std::fputs(
            "this is not an SQLite file, it is long enough to have a header.......\n"
            "................................................................\n",
            f);
        std::fclose(f);
    }
    CHECK_THROWS_AS(Database{junk}, std::runtime_error);
}

TEST_CASE("store: read helpers page the audit log and return node results and rollouts") {
    TempDir dir;
    const auto path = dir.file("guardia.db");
    {
        AuditWriter writer(path);  // never started: stop() drains on this thread
        RolloutRecord r;
        r.id = "R-1";
        r.sr_id = "SR-1";
        r.status = "RUNNING";
        r.created_ms = 1000;
        writer.upsert_rollout(r);
        for (int i = 0; i < 25; ++i)
            writer.record(
                event("SR-1", "R-1", numbered("node-", i % 3), numbered("E", i)));
        writer.record(event("SR-2", "R-2", "node-0", "OTHER"));
        NodeResult n;
        n.rollout_id = "R-1";
        n.node = "node-1";
        n.status = "FAILED";
        n.step = "health";
        n.error = "health never 200";
        n.started_ms = 1100;
        n.backup_path = "/app/webapps.bak_20240101_000000";
        writer.upsert_node_result(n);
        writer.stop();
        CHECK(writer.committed() == 28);
    }
    Database db(path);

    auto page1 = db.audit_for("SR-1", 0, 10);
    REQUIRE(page1.has_value());
    REQUIRE(page1->size() == 10);
    CHECK(page1->front().event == "E0");
    auto page2 = db.audit_for("SR-1", page1->back().id, 10);
    REQUIRE(page2.has_value());
    REQUIRE(page2->size() == 10);
    CHECK(page2->front().event == "E10");
    CHECK(page2->front().id > page1->back().id);
    auto page3 = db.audit_for("SR-1", page2->back().id, 10);
    REQUIRE(page3.has_value());
    CHECK(page3->size() == 5);
    CHECK(db.audit_for("SR-1", page3->back().id, 10)->empty());
    CHECK(db.audit_for("SR-404", 0, 10)->empty());
    CHECK_FALSE(db.audit_for("SR-1", 0, 0).has_value());
    CHECK(db.audit_for("SR-1", 0, 0).error().code == guardia::errc::invalid_argument);

    auto by_rollout = db.audit_for_rollout("R-1");
    REQUIRE(by_rollout.has_value());
    CHECK(by_rollout->size() == 25);
    CHECK(by_rollout->back().event == "E24");
    CHECK(db.audit_for_rollout("R-2")->size() == 1);

    auto n = db.node_result("R-1", "node-1");
    REQUIRE(n.has_value());
    REQUIRE(n->has_value());
    CHECK((*n)->status == "FAILED");
    CHECK((*n)->step == "health");
    CHECK((*n)->error == "health never 200");
    CHECK((*n)->started_ms == 1100);
    CHECK_FALSE((*n)->finished_ms);
    CHECK((*n)->backup_path == "/app/webapps.bak_20240101_000000");
    CHECK_FALSE(db.node_result("R-1", "node-2").value().has_value());

    auto r = db.rollout("R-1");
    REQUIRE(r.has_value());
    REQUIRE(r->has_value());
    CHECK((*r)->sr_id == "SR-1");
    CHECK((*r)->status == "RUNNING");
    CHECK((*r)->created_ms == 1000);
    CHECK_FALSE((*r)->finished_ms);
    CHECK_FALSE(db.rollout("R-404").value().has_value());
}

TEST_CASE("store: the service's tasks, inventory, artifacts, outbox and keys round-trip") {
    TempDir dir;
    const auto path = dir.file("guardia.db");
    {
        AuditWriter writer(path);
        guardia::store::TaskRecord t;
        t.sr_id = "SR-7";
        t.status = "CREATED";
        t.requester = "alice";
        t.inst_id = "INST-1";
        t.system_name = "billing";
        t.created_ms = t.updated_ms = 5;
        writer.upsert_task(t);
        t.status = "DEPLOYING";
        t.approver = "bob";
        t.rollout_id = "R-9";
        t.updated_ms = 6;
        writer.upsert_task(t);  // replaces the row
        for (const char* name : {"web-02", "web-01", "db-01"}) {
            guardia::store::InventoryNodeRecord n;
            n.name = name;
            n.inst_id = "INST-1";
            n.system_name = std::string(name).starts_with("web") ? "billing" : "ledger";
            n.payload = std::string("{\"name\":\"") + name + "\"}";
            writer.upsert_inventory_node(n);
        }
        guardia::store::ArtifactRecord a;
        a.sr_id = "SR-7";
        a.name = "app.war";
        a.path = "/var/lib/guardia/artifacts/SR-7/app.war";
        a.sha256 = "ab";
        a.size = 3;
        writer.upsert_artifact(a);
        a.sha256 = "cd";  // restaged under the same name: replaced, not added
        writer.upsert_artifact(a);
        guardia::store::OutboxRecord o;
        o.id = "d-1";
        o.event = "pm_review_needed";
        o.sr_id = "SR-7";
        o.url = "http://127.0.0.1:9/hook";
        o.body = "{}";
        o.next_attempt_ms = 10;
        writer.upsert_outbox(o);
        o.id = "d-2";
        o.next_attempt_ms = 5;
        writer.upsert_outbox(o);
        o.id = "d-1";
        o.attempts = 1;
        o.delivered_ms = 20;
        o.url = "http://changed.invalid/";  // an update never rewrites what was rendered
        writer.upsert_outbox(o);
        guardia::store::IdempotencyRecord k;
        k.key = "key-1";
        k.request = "POST /api/deploy/trigger SR-7";
        k.status = 202;
        k.body = "{\"first\":true}";
        writer.record_idempotency(k);
        k.body = "{\"second\":true}";
        writer.record_idempotency(k);  // the first answer wins
        writer.stop();
        CHECK(writer.rejected() == 0);
    }
    Database db(path);
    auto t = db.task("SR-7").value();
    REQUIRE(t.has_value());
    CHECK(t->status == "DEPLOYING");
    CHECK(t->approver == "bob");
    CHECK(t->rollout_id == "R-9");
    CHECK(t->created_ms == 5);
    CHECK(t->payload == "{}");
    CHECK_FALSE(db.task("SR-404").value().has_value());
    CHECK(db.tasks_in_status("DEPLOYING").value().size() == 1);
    CHECK(db.tasks_in_status("CREATED").value().empty());

    auto billing = db.inventory_nodes("INST-1", "billing").value();
    REQUIRE(billing.size() == 2);
    CHECK(billing[0].name == "web-01");
    CHECK(billing[1].payload == "{\"name\":\"web-02\"}");
    CHECK(db.inventory_nodes("", "").value().size() == 3);

    auto artifacts = db.artifacts_for("SR-7").value();
    REQUIRE(artifacts.size() == 1);
    CHECK(artifacts[0].sha256 == "cd");

    auto pending = db.outbox_pending(10).value();
    REQUIRE(pending.size() == 1);
    CHECK(pending[0].id == "d-2");
    auto all = db.outbox_for("SR-7").value();
    REQUIRE(all.size() == 2);
    for (const auto& d : all) {
        CHECK(d.url == "http://127.0.0.1:9/hook");
        if (d.id == "d-1") CHECK(d.delivered_ms == 20);
    }

    auto k = db.idempotency("key-1").value();
    REQUIRE(k.has_value());
    CHECK(k->status == 202);
    CHECK(k->body == "{\"first\":true}");
    CHECK_FALSE(db.idempotency("key-2").value().has_value());
}

TEST_CASE("store: runtime query failures are values in the sqlite category") {
    TempDir dir;
    Database db(dir.file("guardia.db"));
    auto r = db.exec("INSERT INTO no_such_table VALUES (1)");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code.category() == guardia::store::sqlite_category());
    CHECK(r.error().message.find("no_such_table") != std::string::npos);
    auto q = db.query_int64("SELECT x FROM no_such_table");
    REQUIRE_FALSE(q.has_value());
    CHECK(q.error().code.category() == guardia::store::sqlite_category());
}

namespace {

// Writes `n` audit events through the real writer (the only way rows get their hashes).
void write_events(const std::string& path, int n, const std::string& tag = "E") {
    AuditWriter writer(path);
    for (int i = 0; i < n; ++i) {
        auto e = event("SR-1", "R-1", "node-" + std::to_string(i % 3), tag + std::to_string(i));
        if (i % 2 == 0) e.exit_code = i;
        if (i % 3 == 0) e.duration_ms = i * 10;
        e.detail = "detail " + std::to_string(i);
        writer.record(e);
    }
    writer.stop();
    REQUIRE(writer.committed() == static_cast<std::uint64_t>(n));
}

// Tampering as an attacker with the file would: a plain connection, no Guardia involved.
void tamper(const std::string& path, const std::string& sql) {
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                            nullptr) == SQLITE_OK);
    std::unique_ptr<sqlite3, decltype(&sqlite3_close_v2)> db(raw, &sqlite3_close_v2);
    char* message = nullptr;
    int rc = sqlite3_exec(db.get(), sql.c_str(), nullptr, nullptr, &message);
    INFO(sql << ": " << (message ? message : ""));
    sqlite3_free(message);
    REQUIRE(rc == SQLITE_OK);
}

unsigned mode_of(const std::string& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("audit chain: every row links to the one before, and an untouched log verifies") {
    TempDir dir;
    const auto path = dir.file("guardia.db");
    write_events(path, 20);
    write_events(path, 5, "LATER");  // a second writer (a later run) continues the same chain

    Database db(path);
    auto rows = db.audit_for("SR-1", 0, 100).value();
    REQUIRE(rows.size() == 25);
    CHECK(db.query_text("SELECT prev_hash FROM audit_log WHERE id = 1").value() ==
          guardia::store::audit_chain_genesis());
    CHECK(db.query_int64("SELECT count(*) FROM audit_log a JOIN audit_log b ON b.id = a.id + 1"
                         " WHERE b.prev_hash = a.row_hash")
              .value() == 24);
    for (const auto& row : rows) {
        auto prev = db.query_text("SELECT prev_hash FROM audit_log WHERE id = " +
                                  std::to_string(row.id));
        auto hash = db.query_text("SELECT row_hash FROM audit_log WHERE id = " +
                                  std::to_string(row.id));
        CHECK(guardia::store::audit_row_hash(row, prev.value()) == hash.value());
    }
    CHECK(db.query_text("SELECT value FROM meta WHERE key = 'audit_chain'").value().find(
              "0 earlier rows chained") != std::string::npos);

    auto report = verify_audit_chain(path);
    REQUIRE(report.has_value());
    CHECK_FALSE(report->first_break.has_value());
    CHECK(report->rows == 25);
    CHECK(report->first_id == 1);
    CHECK(report->last_id == 25);
    CHECK(report->last_hash ==
          db.query_text("SELECT row_hash FROM audit_log WHERE id = 25").value());

    // An empty log is intact too.
    Database empty(dir.file("empty.db"));
    auto none = verify_audit_chain(dir.file("empty.db"));
    REQUIRE(none.has_value());
    CHECK(none->rows == 0);
    CHECK_FALSE(none->first_break.has_value());
}

TEST_CASE("audit chain: the hash covers every column and encodes fields unambiguously") {
    guardia::store::AuditRow row;
    row.id = 7;
    row.ts_ms = 1000;
    row.sr_id = "SR";
    row.rollout_id = "R";
    row.node = "n";
    row.step = "s";
    row.event = "e";
    row.detail = "d";
    const std::string prev(guardia::store::audit_chain_genesis());
    const auto base = guardia::store::audit_row_hash(row, prev);
    CHECK(base.size() == 64);
    auto differs = [&](auto change) {
        auto copy = row;
        change(copy);
        return guardia::store::audit_row_hash(copy, prev) != base;
    };
    CHECK(differs([](auto& r) { r.id = 8; }));
    CHECK(differs([](auto& r) { r.ts_ms = 1001; }));
    CHECK(differs([](auto& r) { r.sr_id = "SR2"; }));
    CHECK(differs([](auto& r) { r.rollout_id = "R2"; }));
    CHECK(differs([](auto& r) { r.node = "m"; }));
    CHECK(differs([](auto& r) { r.step = "t"; }));
    CHECK(differs([](auto& r) { r.event = "f"; }));
    CHECK(differs([](auto& r) { r.exit_code = 0; }));  // null and 0 differ
    CHECK(differs([](auto& r) { r.duration_ms = 0; }));
    CHECK(differs([](auto& r) { r.detail = "d "; }));
    CHECK(differs([](auto& r) { r.principal = "ci-approvals"; }));
    // Moving bytes from one field to the next changes the hash (length prefixes).
    CHECK(differs([](auto& r) {
        r.node = "ns";
        r.step = "";
    }));
    CHECK(differs([](auto& r) {  // detail's tail moved into the principal
        r.detail = "";
        r.principal = "d";
    }));
    CHECK(guardia::store::audit_row_hash(row, std::string(64, '1')) != base);
}

TEST_CASE("audit chain: today's encoding is pinned by test vectors (rows already written)") {
    // Recorded from the v1 encoding before any column was added, and checked against an
    // independent computation (Python hashlib over the documented encoding). A change to
    // these values means every audit row already on disk would no longer verify.
    guardia::store::AuditRow a;
    a.id = 1;
    a.ts_ms = 1733300000000;
    a.sr_id = "SR-1";
    a.rollout_id = "R-1";
    a.node = "node-0";
    a.step = "transfer";
    a.event = "STEP_OK";
    a.exit_code = 0;
    a.duration_ms = 1234;
    a.detail = "ok";
    const std::string ha = guardia::store::audit_row_hash(a, guardia::store::audit_chain_genesis());
    CHECK(ha == "7e2b0a6716d1d690ed0f14e4a249cc25638ec7bad30bc6ded937b9793e44b6b7");

    guardia::store::AuditRow b;
    b.id = 2;
    b.ts_ms = 1733300000001;
    b.sr_id = "SR-1";
    b.step = "SUMMARY";
    b.event = "DEPLOY_SUCCESS";
    CHECK(guardia::store::audit_row_hash(b, ha) ==
          "e63c0379addce74911e624b0f1d453225f8928c1af469fd1a3067e6009d8416b");

    // A row with a principal: domain v2, the principal after detail (also checked against
    // Python). An empty principal is the v1 encoding above, byte for byte.
    a.principal = "ci-approvals";
    CHECK(guardia::store::audit_row_hash(a, guardia::store::audit_chain_genesis()) ==
          "7b904fa4831ceae6a721065fc2aebe6a78427cb3b92d41f7dae547112698c607");
    a.principal.clear();
    CHECK(guardia::store::audit_row_hash(a, guardia::store::audit_chain_genesis()) == ha);
}

namespace {

// Rows 1..n; the even ones carry a principal, as the service's API actions will.
void write_events_with_principals(const std::string& path, int n) {
    AuditWriter writer(path);
    for (int i = 1; i <= n; ++i) {
        auto e = event("SR-P", "R-P", "", numbered("E", i));
        e.detail = numbered("detail ", i);
        if (i % 2 == 0) e.principal = i % 4 == 0 ? "ci-approvals" : "pm-portal";
        writer.record(e);
    }
    writer.stop();
    REQUIRE(writer.committed() == static_cast<std::uint64_t>(n));
}

}  // namespace

TEST_CASE("audit chain: the principal round-trips through every reader and the chain") {
    TempDir dir;
    const auto path = dir.file("guardia.db");
    write_events_with_principals(path, 8);

    Database db(path);
    auto by_sr = db.audit_for("SR-P", 0, 100).value();
    auto by_rollout = db.audit_for_rollout("R-P").value();
    REQUIRE(by_sr.size() == 8);
    REQUIRE(by_rollout.size() == 8);
    for (const auto* rows : {&by_sr, &by_rollout}) {
        for (const auto& row : *rows) {
            CAPTURE(row.id);
            const std::string want =
                row.id % 2 == 1 ? "" : (row.id % 4 == 0 ? "ci-approvals" : "pm-portal");
            CHECK(row.principal == want);
            // The stored hash is the one audit_row_hash gives the row as read back.
            auto prev = db.query_text("SELECT prev_hash FROM audit_log WHERE id = " +
                                      std::to_string(row.id));
            auto hash = db.query_text("SELECT row_hash FROM audit_log WHERE id = " +
                                      std::to_string(row.id));
            CHECK(guardia::store::audit_row_hash(row, prev.value()) == hash.value());
        }
    }
    CHECK(
        db.query_int64("SELECT count(*) FROM audit_log WHERE principal = 'ci-approvals'").value() ==
        2);

    auto report = verify_audit_chain(path).value();
    CHECK_FALSE(report.first_break.has_value());
    CHECK(report.rows == 8);
}

TEST_CASE("audit chain: verify detects a principal changed, cleared or added") {
    TempDir dir;
    auto fresh = [&](const std::string& name) {
        const auto path = dir.file(name);
        write_events_with_principals(path, 8);
        return path;
    };
    auto altered_at = [](const std::string& path, std::int64_t id) {
        auto r = verify_audit_chain(path).value();
        REQUIRE(r.first_break.has_value());
        CHECK(r.first_break->fault == ChainFault::altered);
        CHECK(r.first_break->row_id == id);
        CHECK(r.rows == 8);
    };
    SUBCASE("changed") {
        const auto path = fresh("changed.db");
        tamper(path, "UPDATE audit_log SET principal = 'mallory' WHERE id = 4");
        altered_at(path, 4);
    }
    SUBCASE("changed on every row") {
        const auto path = fresh("all.db");
        tamper(path, "UPDATE audit_log SET principal = 'mallory'");
        altered_at(path, 1);
    }
    SUBCASE("cleared") {
        const auto path = fresh("cleared.db");
        tamper(path, "UPDATE audit_log SET principal = '' WHERE id = 6");
        altered_at(path, 6);
    }
    SUBCASE("added to a row that had none") {
        const auto path = fresh("added.db");
        tamper(path, "UPDATE audit_log SET principal = 'ci-approvals' WHERE id = 3");
        altered_at(path, 3);
    }
}

TEST_CASE("audit chain: a schema-3 store (before the principal) verifies before and after") {
    TempDir dir;
    const auto path = dir.file("schema3.db");
    // What Guardia wrote at schema 3: today's schema minus migration 4, with two rows whose
    // hashes are the pinned test vectors (computed by the code of that time).
    { Database create(path); }
    tamper(path, R"sql(
ALTER TABLE rollouts DROP COLUMN owner;
ALTER TABLE audit_log DROP COLUMN principal;
INSERT INTO audit_log (id, ts_ms, sr_id, rollout_id, node, step, event, exit_code, duration_ms,
                       detail, prev_hash, row_hash)
    VALUES (1, 1733300000000, 'SR-1', 'R-1', 'node-0', 'transfer', 'STEP_OK', 0, 1234, 'ok',
            '0000000000000000000000000000000000000000000000000000000000000000',
            '7e2b0a6716d1d690ed0f14e4a249cc25638ec7bad30bc6ded937b9793e44b6b7'),
           (2, 1733300000001, 'SR-1', '', '', 'SUMMARY', 'DEPLOY_SUCCESS', NULL, NULL, '',
            '7e2b0a6716d1d690ed0f14e4a249cc25638ec7bad30bc6ded937b9793e44b6b7',
            'e63c0379addce74911e624b0f1d453225f8928c1af469fd1a3067e6009d8416b');
PRAGMA user_version = 3;
)sql");
    // Not migrated (verify never migrates): it verifies without the column.
    auto before = verify_audit_chain(path);
    REQUIRE(before.has_value());
    CHECK_FALSE(before->first_break.has_value());
    CHECK(before->rows == 2);
    CHECK(before->last_hash == "e63c0379addce74911e624b0f1d453225f8928c1af469fd1a3067e6009d8416b");

    // Opening migrates (migration 4 only: no re-chaining); the old rows still verify, read
    // back with an empty principal, and new rows with principals continue the chain.
    {
        Database db(path);
        CHECK(db.query_int64("PRAGMA user_version").value() == Database::schema_version());
        auto rows = db.audit_for("SR-1", 0, 10).value();
        REQUIRE(rows.size() == 2);
        CHECK(rows[0].principal == "");
        CHECK(db.query_text("SELECT row_hash FROM audit_log WHERE id = 2").value() ==
              "e63c0379addce74911e624b0f1d453225f8928c1af469fd1a3067e6009d8416b");
    }
    auto after = verify_audit_chain(path).value();
    CHECK_FALSE(after.first_break.has_value());
    CHECK(after.rows == 2);
    CHECK(after.last_hash == before->last_hash);

    write_events_with_principals(path, 4);
    auto more = verify_audit_chain(path).value();
    CHECK_FALSE(more.first_break.has_value());
    CHECK(more.rows == 6);
    CHECK(Database(path).query_text("SELECT principal FROM audit_log WHERE id = 4").value() ==
          "pm-portal");  // the writer's 2nd event

    // A principal given to an old row is an alteration.
    tamper(path, "UPDATE audit_log SET principal = 'mallory' WHERE id = 1");
    auto broken = verify_audit_chain(path).value();
    REQUIRE(broken.first_break.has_value());
    CHECK(broken.first_break->fault == ChainFault::altered);
    CHECK(broken.first_break->row_id == 1);
}

TEST_CASE("audit chain: verify names the first altered, deleted or inserted row") {
    TempDir dir;
    auto fresh = [&](const std::string& name) {
        const auto path = dir.file(name);
        write_events(path, 10);
        return path;
    };

    SUBCASE("altered message") {
        const auto path = fresh("altered.db");
        tamper(path, "UPDATE audit_log SET detail = 'all good' WHERE id = 4");
        auto r = verify_audit_chain(path).value();
        REQUIRE(r.first_break.has_value());
        CHECK(r.first_break->fault == ChainFault::altered);
        CHECK(r.first_break->row_id == 4);
        CHECK(r.first_break->message.find("row 4 was altered") != std::string::npos);
        CHECK(r.rows == 10);
        CHECK(r.last_id == 10);
    }
    SUBCASE("altered number (exit code set to NULL)") {
        const auto path = fresh("altered-null.db");
        tamper(path, "UPDATE audit_log SET exit_code = NULL WHERE id = 1");
        auto r = verify_audit_chain(path).value();
        REQUIRE(r.first_break.has_value());
        CHECK(r.first_break->fault == ChainFault::altered);
        CHECK(r.first_break->row_id == 1);
    }
    SUBCASE("deleted middle row") {
        const auto path = fresh("deleted.db");
        tamper(path, "DELETE FROM audit_log WHERE id = 6");
        auto r = verify_audit_chain(path).value();
        REQUIRE(r.first_break.has_value());
        CHECK(r.first_break->fault == ChainFault::deleted);
        CHECK(r.first_break->row_id == 7);
        CHECK(r.first_break->previous_id == 5);
        CHECK(r.first_break->message.find("ids 6..6 are missing") != std::string::npos);
    }
    SUBCASE("deleted first rows") {
        const auto path = fresh("head.db");
        tamper(path, "DELETE FROM audit_log WHERE id <= 2");
        auto r = verify_audit_chain(path).value();
        REQUIRE(r.first_break.has_value());
        CHECK(r.first_break->fault == ChainFault::deleted);
        CHECK(r.first_break->row_id == 3);
        CHECK(r.first_break->message.find("ids 1..2 are missing") != std::string::npos);
    }
    SUBCASE("deleted and renumbered: the ids close the gap, the links do not") {
        const auto path = fresh("renumbered.db");
        tamper(path, "DELETE FROM audit_log WHERE id = 6; UPDATE audit_log SET id = id - 1"
                     " WHERE id > 6");
        auto r = verify_audit_chain(path).value();
        REQUIRE(r.first_break.has_value());
        CHECK(r.first_break->row_id == 6);
    }
    SUBCASE("forged row appended by hand") {
        const auto path = fresh("forged.db");
        tamper(path,
               "INSERT INTO audit_log (ts_ms, sr_id, rollout_id, node, step, event, detail)"
               " VALUES (1, 'SR-1', 'R-1', 'node-0', 'SUMMARY', 'DEPLOY_SUCCESS', 'forged')");
        auto r = verify_audit_chain(path).value();
        REQUIRE(r.first_break.has_value());
        CHECK(r.first_break->fault == ChainFault::inserted);
        CHECK(r.first_break->row_id == 11);
        CHECK(r.last_id == 11);
    }
    SUBCASE("forged row with a self-consistent hash that does not link") {
        const auto path = fresh("forged-hash.db");
        guardia::store::AuditRow row;
        row.id = 11;
        row.ts_ms = 1;
        row.event = "FORGED";
        const std::string prev(64, 'a');
        const auto hash = guardia::store::audit_row_hash(row, prev);
        tamper(path,
               "INSERT INTO audit_log (id, ts_ms, sr_id, rollout_id, node, step, event, detail,"
               " prev_hash, row_hash) VALUES (11, 1, '', '', '', '', 'FORGED', '', '" +
                   prev + "', '" + hash + "')");
        auto r = verify_audit_chain(path).value();
        REQUIRE(r.first_break.has_value());
        CHECK(r.first_break->fault == ChainFault::inserted);
        CHECK(r.first_break->row_id == 11);
        CHECK(r.first_break->message.find("does not link to row 10") != std::string::npos);
    }
    SUBCASE("the newest rows deleted: NOT detectable by the chain (documented)") {
        const auto path = fresh("tail.db");
        tamper(path, "DELETE FROM audit_log WHERE id > 8");
        auto r = verify_audit_chain(path).value();
        CHECK_FALSE(r.first_break.has_value());
        CHECK(r.last_id == 8);  // what an external anchor of id 10 would catch
    }
}

TEST_CASE("audit chain: two writers appending at once never fork it") {
    TempDir dir;
    const auto path = dir.file("guardia.db");
    Database create(path);
    guardia::store::AuditWriterOptions o;
    o.max_batch = 7;  // many small transactions interleave
    o.commit_interval = std::chrono::milliseconds(0);
    AuditWriter a(path, o), b(path, o);
    a.start();
    b.start();
    std::thread ta([&] {
        for (int i = 0; i < 300; ++i) a.record(event("SR-A", "R-A", "a", std::to_string(i)));
    });
    std::thread tb([&] {
        for (int i = 0; i < 300; ++i) b.record(event("SR-B", "R-B", "b", std::to_string(i)));
    });
    ta.join();
    tb.join();
    a.stop();
    b.stop();
    CHECK(a.committed() + b.committed() == 600);
    auto r = verify_audit_chain(path).value();
    CHECK_FALSE(r.first_break.has_value());
    CHECK(r.rows == 600);
    CHECK(r.last_id == 600);
}

TEST_CASE("audit chain: a store from before the chain is migrated and its rows chained once") {
    TempDir dir;
    const auto path = dir.file("old.db");
    // What Guardia wrote before the chain: today's schema minus migrations 3 and 4, at
    // user_version 2 (DROP COLUMN needs SQLite 3.35; Debian 12 has 3.40), with rows. Migration
    // 3 then chains them before migration 4 adds the principal column.
    { Database create(path); }
    tamper(path, R"sql(
ALTER TABLE rollouts DROP COLUMN owner;
ALTER TABLE audit_log DROP COLUMN principal;
ALTER TABLE audit_log DROP COLUMN prev_hash;
ALTER TABLE audit_log DROP COLUMN row_hash;
DROP TABLE meta;
INSERT INTO audit_log (ts_ms, sr_id, rollout_id, node, step, event, exit_code, detail)
    VALUES (1, 'SR-0', 'R-0', 'n', 'CONNECT', 'STEP_OK', 0, 'old 1'),
           (2, 'SR-0', 'R-0', 'n', 'SUMMARY', 'DEPLOY_SUCCESS', NULL, 'old 2'),
           (3, 'SR-0', 'R-0', '', 'ROLLOUT', 'ROLLOUT_SUCCEEDED', NULL, 'old 3');
PRAGMA user_version = 2;
)sql");
    // Not migrated yet: verify refuses (and does not migrate it: that would bless any edit).
    auto before = verify_audit_chain(path);
    REQUIRE_FALSE(before.has_value());
    CHECK(before.error().message.find(path) != std::string::npos);
    CHECK(before.error().message.find("no audit chain yet") != std::string::npos);

    write_events(path, 4);  // opening migrates; then new rows continue the chain
    Database db(path);
    CHECK(db.query_int64("PRAGMA user_version").value() == Database::schema_version());
    CHECK(db.query_text("SELECT value FROM meta WHERE key = 'audit_chain'").value().find(
              "3 earlier rows chained at migration (ids 1..3)") != std::string::npos);
    auto r = verify_audit_chain(path).value();
    CHECK_FALSE(r.first_break.has_value());
    CHECK(r.rows == 7);

    // Reopening does not chain again (the hashes stay what they were).
    const auto last = r.last_hash;
    Database again(path);
    CHECK(verify_audit_chain(path).value().last_hash == last);

    tamper(path, "UPDATE audit_log SET detail = 'rewritten' WHERE id = 2");
    auto broken = verify_audit_chain(path).value();
    REQUIRE(broken.first_break.has_value());
    CHECK(broken.first_break->row_id == 2);
}

TEST_CASE("audit chain: verify refuses bad input with a message naming the file") {
    TempDir dir;
    const auto missing = dir.file("missing.db");
    auto r = verify_audit_chain(missing);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find(missing) != std::string::npos);
    CHECK(r.error().message.find("No such file") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(missing));  // read-only: never created

    const auto junk = dir.file("junk.db");
    {
        std::FILE* f = std::fopen(junk.c_str(), "w");
        REQUIRE(f != nullptr);
        std::fputs("not an SQLite file, but long enough to have a header...................\n"
                   "..........................................................................\n",
                   f);
        std::fclose(f);
    }
    r = verify_audit_chain(junk);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find(junk) != std::string::npos);
    CHECK(r.error().message.find("not a readable SQLite database") != std::string::npos);

    const auto other = dir.file("other.db");
    tamper(other, "CREATE TABLE t (x INTEGER)");
    r = verify_audit_chain(other);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find(other) != std::string::npos);
    CHECK(r.error().message.find("not a Guardia store") != std::string::npos);

    r = verify_audit_chain(dir.path.string());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find("not a regular file") != std::string::npos);
}

TEST_CASE("store: a new database and its -wal and -shm files are 0600 whatever the umask") {
    TempDir dir;
    for (mode_t mask : {mode_t{0}, mode_t{022}, mode_t{0277}}) {
        CAPTURE(mask);
        const auto path = dir.file("guardia-" + std::to_string(mask) + ".db");
        const mode_t old = ::umask(mask);
        {
            AuditWriter writer(path);
            writer.record(event("SR-1", "R-1", "n", "E"));
            writer.stop();
            Database reader(path);  // -wal and -shm exist while a connection is open
            CHECK(mode_of(path) == 0600);
            CHECK(mode_of(path + "-wal") == 0600);
            CHECK(mode_of(path + "-shm") == 0600);
        }
        ::umask(old);
    }
    // An existing file keeps the mode its owner chose.
    const auto existing = dir.file("existing.db");
    {
        std::FILE* f = std::fopen(existing.c_str(), "w");
        REQUIRE(f != nullptr);
        std::fclose(f);
    }
    REQUIRE(::chmod(existing.c_str(), 0640) == 0);
    Database db(existing);
    CHECK(mode_of(existing) == 0640);
}

TEST_SUITE_END();

TEST_CASE("store: a rollout's owner is written and read back (schema 6)") {
    TempDir dir;
    const auto path = dir.file("owner.db");
    {
        AuditWriter writer(path);
        RolloutRecord r;
        r.id = "R-1";
        r.sr_id = "SR-1";
        r.status = "RUNNING";
        r.created_ms = 1000;
        r.owner = "guardia@deploy-1:4242";
        writer.upsert_rollout(r);
        writer.stop();
    }
    Database db(path);
    auto one = db.rollout("R-1");
    REQUIRE(one.has_value());
    REQUIRE(one->has_value());
    CHECK((*one)->owner == "guardia@deploy-1:4242");
    auto open = db.unfinished_rollouts();
    REQUIRE(open.has_value());
    REQUIRE(open->size() == 1);
    CHECK(open->front().owner == "guardia@deploy-1:4242");
    auto by_sr = db.rollouts_for("SR-1");
    REQUIRE(by_sr.has_value());
    CHECK(by_sr->front().owner == "guardia@deploy-1:4242");
}
