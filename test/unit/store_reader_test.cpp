#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"
#include "guardia/store/reader.hpp"
#include "../support/fleet.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

using namespace guardia;
using namespace guardia::store;

namespace {

using guardia::test::TempDir;

void rollout(AuditWriter& w, std::string id, std::string sr, std::string status,
             std::int64_t created, std::optional<std::int64_t> finished) {
    RolloutRecord r;
    r.id = std::move(id);
    r.sr_id = std::move(sr);
    r.status = std::move(status);
    r.created_ms = created;
    r.finished_ms = finished;
    r.owner = "guardia@nohost.invalid:4242";
    w.upsert_rollout(std::move(r));
}

void node(AuditWriter& w, std::string rollout, std::string name, std::string status,
          std::string step = "DONE", std::string error = "") {
    NodeResult n;
    n.rollout_id = std::move(rollout);
    n.node = std::move(name);
    n.status = std::move(status);
    n.step = std::move(step);
    n.error = std::move(error);
    w.upsert_node_result(std::move(n));
}

void event(AuditWriter& w, std::string rollout, std::string node_name, std::string step,
           std::string name, std::string detail) {
    AuditEvent e;
    e.sr_id = "SR-A";
    e.rollout_id = std::move(rollout);
    e.node = std::move(node_name);
    e.step = std::move(step);
    e.event = std::move(name);
    e.detail = std::move(detail);
    w.record(std::move(e));
}

// Three rollouts: R-1 (SR-A, done), R-2 (SR-B), R-3 (SR-A, the newest, unfinished).
std::string build(const TempDir& dir) {
    const auto path = dir.file("guardia.db");
    AuditWriter w(path);  // never started: stop() drains on this thread
    rollout(w, "R-1", "SR-A", "FAILED", 1000, 5000);
    node(w, "R-1", "web-1", "DEPLOYED");
    node(w, "R-1", "web-2", "ROLLED_BACK", "HEALTH", "health never answered 200");
    node(w, "R-1", "web-3", "SKIPPED", "");
    node(w, "R-1", "web-4", "DEPLOYED");
    event(w, "R-1", "", "ROLLOUT", "ROLLOUT_TARGET", "limit=web-*; selected 4 of 9 node(s)");
    event(w, "R-1", "", "ROLLOUT", "ROLLOUT_START", "4 node(s), 1 artifact(s)");
    event(w, "R-1", "", "TIER", "TIER_START", "tier 1: 1 node(s), lock-step batches of 1");
    event(w, "R-1", "web-1", "CONNECT", "STEP_START", "");
    event(w, "R-1", "web-1", "CONNECT", "STEP_OK", "");
    event(w, "R-1", "", "TIER", "TIER_DONE", "tier 1: 1 deployed, 0 failed, 0 not started");
    event(w, "R-1", "", "TIER", "TIER_START", "tier 2: 3 node(s), sliding window of 10");
    event(w, "R-1", "web-2", "HEALTH", "STEP_FAILED", "health never answered 200");
    event(w, "R-1", "", "TIER", "TIER_DONE", "tier 2: 1 deployed, 1 failed, 1 not started");
    rollout(w, "R-2", "SR-B", "SUCCEEDED", 2000, 2500);
    node(w, "R-2", "db-1", "DEPLOYED");
    rollout(w, "R-3", "SR-A", "RUNNING", 3000, std::nullopt);
    node(w, "R-3", "web-2", "RUNNING", "UPLOAD");
    event(w, "R-3", "", "TIER", "TIER_START", "tier 2: 1 node(s), sliding window of 10");
    w.stop();
    return path;
}

}  // namespace

TEST_SUITE_BEGIN("store");

TEST_CASE("reader: a rollout's summary: counts, tiers, failed nodes, targeting") {
    TempDir dir;
    const auto path = build(dir);
    auto reader = RolloutReader::open(path);
    REQUIRE(reader.has_value());
    CHECK(reader->latest_rollout_id().value() == std::optional<std::string>("R-3"));

    auto s = reader->summary("R-1");
    REQUIRE(s.has_value());
    REQUIRE(s->has_value());
    const auto& r = **s;
    CHECK(r.rollout.sr_id == "SR-A");
    CHECK(r.rollout.status == "FAILED");
    CHECK(r.rollout.finished_ms == 5000);
    CHECK(r.nodes == 4);
    CHECK(r.count("DEPLOYED") == 2);
    CHECK(r.count("ROLLED_BACK") == 1);
    CHECK(r.count("SKIPPED") == 1);
    CHECK(r.count("FAILED_UNCHANGED") == 0);
    CHECK(r.target == "limit=web-*; selected 4 of 9 node(s)");
    REQUIRE(r.tiers.size() == 2);
    CHECK(r.tiers[0].tier == 1);
    CHECK(r.tiers[0].total == 1);
    CHECK(r.tiers[0].finished);
    CHECK(r.tiers[0].deployed == 1);
    CHECK(r.tiers[1].tier == 2);
    CHECK(r.tiers[1].total == 3);
    CHECK((r.tiers[1].deployed == 1 && r.tiers[1].failed == 1 && r.tiers[1].not_started == 1));
    REQUIRE(r.failed.size() == 1);
    CHECK(r.failed[0].node == "web-2");
    CHECK(r.failed[0].step == "HEALTH");
    CHECK(r.failed[0].error == "health never answered 200");

    auto running = reader->summary("R-3").value();
    REQUIRE(running.has_value());
    CHECK_FALSE(running->rollout.finished_ms);
    REQUIRE(running->tiers.size() == 1);
    CHECK_FALSE(running->tiers[0].finished);
    CHECK(running->failed.empty());  // RUNNING is not a failure
    CHECK(running->target.empty());

    CHECK_FALSE(reader->summary("R-404").value().has_value());
}

TEST_CASE("reader: history newest first, by SR, limited, with counts") {
    TempDir dir;
    const auto path = build(dir);
    auto reader = RolloutReader::open(path);
    REQUIRE(reader.has_value());
    auto all = reader->history("", 20).value();
    REQUIRE(all.size() == 3);
    CHECK(all[0].rollout.id == "R-3");
    CHECK(all[1].rollout.id == "R-2");
    CHECK(all[2].rollout.id == "R-1");
    CHECK(all[2].nodes == 4);
    CHECK(all[2].count("DEPLOYED") == 2);
    auto sr_a = reader->history("SR-A", 20).value();
    REQUIRE(sr_a.size() == 2);
    CHECK(sr_a[0].rollout.id == "R-3");
    CHECK(sr_a[1].rollout.id == "R-1");
    auto one = reader->history("", 1).value();
    REQUIRE(one.size() == 1);
    CHECK(one[0].rollout.id == "R-3");
    CHECK(reader->history("SR-404", 20).value().empty());
    CHECK_FALSE(reader->history("", 0).has_value());
}

TEST_CASE("reader: a rollout's audit rows in order, optionally of one node") {
    TempDir dir;
    const auto path = build(dir);
    auto reader = RolloutReader::open(path);
    REQUIRE(reader.has_value());
    auto rows = reader->audit("R-1", "").value();
    REQUIRE(rows.size() == 9);
    CHECK(rows.front().event == "ROLLOUT_TARGET");
    CHECK(rows.back().event == "TIER_DONE");
    for (std::size_t i = 1; i < rows.size(); ++i) CHECK(rows[i].id > rows[i - 1].id);
    auto web1 = reader->audit("R-1", "web-1").value();
    REQUIRE(web1.size() == 2);
    CHECK(web1[0].event == "STEP_START");
    CHECK(web1[1].event == "STEP_OK");
    CHECK(reader->audit("R-1", "nope").value().empty());
}

TEST_CASE("reader: never creates a database; a non-Guardia file is refused by name") {
    TempDir dir;
    auto missing = RolloutReader::open(dir.file("missing.db"));
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().message.find(dir.file("missing.db")) != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir.file("missing.db")));
    {
        std::ofstream f(dir.file("text.db"));
        f << "not a database at all, just some text that is long enough to be a header\n";
    }
    auto text = RolloutReader::open(dir.file("text.db"));
    REQUIRE_FALSE(text.has_value());
    CHECK(text.error().message.find(dir.file("text.db")) != std::string::npos);
}

TEST_CASE("reader: tier events that do not parse are ignored") {
    std::vector<TierSummary> tiers;
    CHECK_FALSE(apply_tier_event(tiers, "TIER_START", "something else"));
    CHECK_FALSE(apply_tier_event(tiers, "GATE", "tier 1: 1 node(s)"));
    CHECK(tiers.empty());
    CHECK(apply_tier_event(tiers, "TIER_DONE", "tier 3: 2 ready, 1 failed, 0 not started"));
    REQUIRE(tiers.size() == 1);
    CHECK(tiers[0].total == 3);
    CHECK(tiers[0].deployed == 2);
}

TEST_SUITE_END();
