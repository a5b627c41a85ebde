#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <doctest/doctest.h>

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
              8);
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
                event("SR-1", "R-1", "node-" + std::to_string(i % 3), "E" + std::to_string(i)));
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

TEST_SUITE_END();
