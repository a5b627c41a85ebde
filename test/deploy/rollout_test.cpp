// The rollout engine against a real fleet (fixture rollout_fleet, see test/CMakeLists.txt):
// tier order, windows, the safety gate, limits, abort policies, cancellation and deadlines.
// Outcomes are asserted on the nodes themselves (`tools/fleet check`), in the engine's
// report, and in the audit store.
//
// Fleet: node-0001..0030 and 0036..0040 healthy; 0031 and 0034 reject every new build
// (health 503 until an exact rollback); 0032 unreachable; 0033 healthy only 2 s after each
// start; 0035 never healthy. Health polls every second and gives up after 4 s.
#include "guardia/deploy/rollout.hpp"
#include "../support/fleet.hpp"
#include "guardia/deploy/credential_store.hpp"
#include "guardia/deploy/engine_config.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <doctest/doctest.h>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

using namespace guardia;
using namespace guardia::deploy;
namespace asio = boost::asio;
namespace json = boost::json;
using guardia::test::shell;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

namespace {

const guardia::test::Fleet& fleet() {
    return guardia::test::Fleet::from_env("GUARDIA_TEST_FLEET_ROLLOUT");
}

std::string fleet_tool() {
    const char* t = std::getenv("GUARDIA_FLEET_TOOL");
    REQUIRE_MESSAGE(t != nullptr, "GUARDIA_FLEET_TOOL is not set (run through ctest)");
    return t;
}

// `tools/fleet check` of several nodes at once: name -> report.
std::map<std::string, json::object> check(const std::vector<std::string>& names) {
    std::string cmd = "'" + fleet_tool() + "' check --dir '" + fleet().dir + "'";
    for (const auto& n : names) cmd += " --node " + n;
    const json::value doc = json::parse(shell(cmd));
    std::map<std::string, json::object> out;
    for (const auto& kv : doc.at("nodes").as_object())
        out[std::string(kv.key())] = kv.value().as_object();
    return out;
}

std::string tree(const json::object& c) {
    return json::value_to<std::string>(c.at("tree_sha256"));
}
std::size_t backups(const json::object& c) {
    return c.at("backups").as_array().size();
}
bool locked(const json::object& c) {
    return c.at("lock_present").as_bool();
}
bool running(const json::object& c) {
    return c.at("service_running").as_bool();
}
std::string file_sha(const json::object& c, const std::string& f) {
    const auto* e = c.at("files").as_object().if_contains(f);
    return e ? json::value_to<std::string>(e->at("sha256")) : std::string();
}

// Records what the rollout did, in order, with times.
struct Recorder : RolloutObserver {
    struct Event {
        std::string node, what;  // what: "start" / "finish"
        int tier = 0;
        Clock::time_point at;
    };
    std::vector<Event> events;
    std::map<int, std::size_t> max_in_flight;  // per tier
    std::vector<std::string> gate_reasons;
    std::function<void(const NodeProgress&)> on_step;

    void node_started(const NodeProgress& n) override {
        events.push_back({n.node.name, "start", n.node.tier, Clock::now()});
    }
    void node_step(const NodeProgress& n) override {
        if (on_step) on_step(n);
    }
    void node_finished(const NodeProgress& n, const TierProgress& t) override {
        events.push_back({n.node.name, "finish", n.node.tier, Clock::now()});
        (void)t;
    }
    void tier_started(const TierProgress&) override {}
    void gate_tripped(const TierProgress&, const std::string& reason) override {
        gate_reasons.push_back(reason);
    }

    // Concurrency per tier, replayed from the start/finish order.
    std::map<int, std::size_t> peak() const {
        std::map<int, std::size_t> now, best;
        for (const auto& e : events) {
            if (e.what == "start")
                best[e.tier] = std::max(best[e.tier], ++now[e.tier]);
            else
                --now[e.tier];
        }
        return best;
    }
    std::size_t index(const std::string& node, const std::string& what) const {
        for (std::size_t i = 0; i < events.size(); ++i)
            if (events[i].node == node && events[i].what == what) return i;
        return events.size();
    }
    bool started(const std::string& node) const { return index(node, "start") < events.size(); }
};

struct Rig {
    Inventory all;
    std::shared_ptr<CredentialStore> credentials;
    std::shared_ptr<ssh::KnownHosts> known_hosts;
    guardia::test::TempDir tmp;
    std::string db_path;
    std::unique_ptr<store::AuditWriter> audit;
    Recorder recorder;

    Rig() {
        auto inv = load_inventory(fleet().dir + "/inventory.json");
        REQUIRE_MESSAGE(inv.has_value(), (inv ? "" : inv.error().message));
        all = std::move(*inv);
        credentials = *CredentialStore::open("");
        known_hosts = *ssh::KnownHosts::load(fleet().known_hosts());
        db_path = tmp.path() + "/guardia.db";
        audit = std::make_unique<store::AuditWriter>(db_path);
        audit->start();
    }

    // The named nodes (by number) in this order, with the given tiers.
    Inventory pick(const std::vector<std::pair<int, int>>& number_and_tier) const {
        Inventory inv;
        for (auto [number, tier] : number_and_tier) {
            char name[16];
            std::snprintf(name, sizeof name, "node-%04d", number);
            auto it = std::find_if(all.nodes.begin(), all.nodes.end(),
                                   [&](const Node& n) { return n.name == name; });
            REQUIRE(it != all.nodes.end());
            Node n = *it;
            n.tier = tier;
            inv.nodes.push_back(n);
        }
        return inv;
    }

    ArtifactSpec artifact(const std::string& content) {
        static int counter = 0;
        const auto dir = tmp.path() + "/art" + std::to_string(++counter);
        std::filesystem::create_directories(dir);
        { std::ofstream(dir + "/release.bin", std::ios::binary) << content; }
        auto a = describe_artifact(dir + "/release.bin");
        REQUIRE(a.has_value());
        return *a;
    }

    PipelineSettings settings(const std::string& rollout_id) {
        PipelineSettings s;
        s.sr_id = "SR-ROLLOUT";
        s.rollout_id = rollout_id;
        s.owner = "guardia-test";
        s.known_hosts = known_hosts;
        s.credentials = credentials;
        s.audit = audit.get();
        s.connect_timeout = seconds(5);
        s.shutdown_timeout = seconds(5);
        s.startup_timeout = seconds(10);
        return s;
    }

    // Runs a rollout to the end; `setup` may adjust the Rollout (cancel hooks, dry run).
    RolloutReport run(Inventory inv, const ArtifactSpec& art, RolloutConfig config,
                      const std::string& id,
                      std::function<void(Rollout&, asio::io_context&)> setup = {}) {
        asio::io_context ioc;
        Rollout rollout(ioc.get_executor(), std::move(inv), {art}, std::move(config), settings(id));
        rollout.set_observer(&recorder);
        if (setup) setup(rollout, ioc);
        return guardia::test::run(ioc, rollout.run(), seconds(300));
    }

    store::Database db() {
        asio::io_context ioc;
        auto durable = guardia::test::run(ioc, audit->durable(), seconds(10));
        REQUIRE(durable.has_value());
        return store::Database(db_path);
    }

    // "STEP:EVENT" rows of one node (or of the rollout itself, node "").
    std::vector<std::string> events(const std::string& rollout, const std::string& node) {
        auto d = db();
        auto rows = d.audit_for_rollout(rollout);
        REQUIRE(rows.has_value());
        std::vector<std::string> out;
        for (const auto& r : *rows)
            if (r.node == node) out.push_back(r.step + ":" + r.event);
        return out;
    }
};

bool has(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
}

const NodeProgress& node_of(const RolloutReport& r, const std::string& name) {
    for (const auto& n : r.nodes)
        if (n.node.name == name) return n;
    FAIL("no node " << name << " in the report");
    throw 0;
}

RolloutConfig config_with(std::vector<TierPolicy> tiers) {
    RolloutConfig c;
    c.tiers = std::move(tiers);
    return c;
}

}  // namespace

TEST_SUITE("rollout") {
    TEST_CASE(
        "tiers run in order: tier 1 one node at a time, the sliding window never exceeds its "
        "batch") {
        Rig rig;
        auto inv = rig.pick({{1, 1},
                             {2, 1},
                             {3, 2},
                             {4, 2},
                             {5, 2},
                             {6, 2},
                             {7, 2},
                             {8, 2},
                             {9, 2},
                             {10, 3},
                             {11, 3},
                             {12, 3},
                             {13, 3}});
        auto config = config_with({TierPolicy(1, 1, WindowMode::lockstep, true),
                                   TierPolicy(2, 3, WindowMode::sliding, false),
                                   TierPolicy(3, 0, WindowMode::sliding, false)});
        auto art = rig.artifact("release A\n");
        auto r = rig.run(inv, art, config, "R-order");
        CHECK_MESSAGE(r.status == RolloutStatus::succeeded, r.reason);
        CHECK(r.deployed == 13);
        const auto peak = rig.recorder.peak();
        CHECK(peak.at(1) == 1);
        CHECK(peak.at(2) == 3);  // reached, never exceeded
        CHECK(peak.at(3) == 4);
        // Every tier-1 node finished before the first tier-2 node started; same for 2 -> 3.
        const auto first_t2 = rig.recorder.index("node-0003", "start");
        CHECK(rig.recorder.index("node-0001", "finish") < first_t2);
        CHECK(rig.recorder.index("node-0002", "finish") < first_t2);
        for (int k = 3; k <= 9; ++k) {
            char name[16];
            std::snprintf(name, sizeof name, "node-%04d", k);
            CHECK(rig.recorder.index(name, "finish") < rig.recorder.index("node-0010", "start"));
        }
        // On the nodes: the release, running, no lock.
        std::vector<std::string> names;
        for (const auto& n : inv.nodes) names.push_back(n.name);
        for (const auto& [name, c] : check(names)) {
            CHECK_MESSAGE(file_sha(c, "release.bin") == art.sha256, name);
            CHECK_MESSAGE(running(c), name);
            CHECK_MESSAGE(!locked(c), name);
        }
        // The store: the rollout row, a result per node, tier events.
        auto d = rig.db();
        auto row = d.rollout("R-order");
        REQUIRE(row.has_value());
        REQUIRE(row->has_value());
        CHECK((*row)->status == "SUCCEEDED");
        auto nr = d.node_result("R-order", "node-0007");
        REQUIRE(nr.has_value());
        REQUIRE(nr->has_value());
        CHECK((*nr)->status == "DEPLOYED");
        CHECK((*nr)->backup_path.find("app.bak_") != std::string::npos);
        const auto ev = rig.events("R-order", "");
        CHECK(has(ev, "ROLLOUT:ROLLOUT_START"));
        CHECK(std::count(ev.begin(), ev.end(), "TIER:TIER_START") == 3);
        CHECK(has(ev, "ROLLOUT:ROLLOUT_SUCCEEDED"));
    }

    TEST_CASE("lock-step batches: the next batch starts only when the whole batch has finished") {
        Rig rig;
        // node-0031 rejects the build: its batch waits for its 4 s health timeout and rollback.
        auto inv = rig.pick({{31, 2}, {14, 2}, {15, 2}, {16, 2}, {17, 2}, {18, 2}});
        auto config = config_with({TierPolicy(2, 3, WindowMode::lockstep, false)});
        config.failure_threshold = 0.5;  // one failure in a batch of three is tolerated here
        auto r = rig.run(inv, rig.artifact("release B\n"), config, "R-lockstep");
        CHECK_MESSAGE(r.status == RolloutStatus::failed, r.reason);
        CHECK(r.deployed == 5);
        CHECK(node_of(r, "node-0031").report.outcome == NodeOutcome::rolled_back);
        const auto& rec = rig.recorder;
        const auto first_of_second =
            std::min({rec.index("node-0016", "start"), rec.index("node-0017", "start"),
                      rec.index("node-0018", "start")});
        for (const char* n : {"node-0031", "node-0014", "node-0015"})
            CHECK(rec.index(n, "finish") < first_of_second);
        CHECK(rig.recorder.peak().at(2) == 3);
    }

    TEST_CASE(
        "safety gate: a tier-1 failure aborts at once, no later node starts, the failed node is "
        "rolled back") {
        Rig rig;
        auto inv = rig.pick({{34, 1}, {19, 1}, {20, 2}, {21, 2}, {22, 3}});
        const auto before =
            check({"node-0019", "node-0020", "node-0021", "node-0022", "node-0034"});
        auto r = rig.run(inv, rig.artifact("release C\n"), RolloutConfig(), "R-gate-tier1");
        CHECK(r.status == RolloutStatus::aborted);
        CHECK(r.reason.find("tier 1") != std::string::npos);
        CHECK(r.reason.find("100.0 %") != std::string::npos);
        CHECK(node_of(r, "node-0034").report.outcome == NodeOutcome::rolled_back);
        for (const char* n : {"node-0019", "node-0020", "node-0021", "node-0022"}) {
            CHECK(node_of(r, n).state == NodeState::skipped);
            CHECK_FALSE(rig.recorder.started(n));
        }
        CHECK(r.skipped == 4);
        const auto after = check({"node-0019", "node-0020", "node-0021", "node-0022", "node-0034"});
        for (const auto& [name, c] : after) {
            CHECK_MESSAGE(tree(c) == tree(before.at(name)),
                          name);  // untouched, or exactly restored
            CHECK_MESSAGE(!locked(c), name);
            CHECK_MESSAGE(running(c), name);
        }
        CHECK(backups(after.at("node-0019")) == backups(before.at("node-0019")));
        CHECK(has(rig.events("R-gate-tier1", ""), "GATE:ROLLOUT_ABORT"));
        CHECK(rig.recorder.gate_reasons.size() == 1);
        auto d = rig.db();
        auto skipped = d.node_result("R-gate-tier1", "node-0022");
        REQUIRE(skipped.has_value());
        REQUIRE(skipped->has_value());
        CHECK((*skipped)->status == "SKIPPED");
    }

    TEST_CASE(
        "sliding window: one fast-failing node does not abort a tier before the minimum sample") {
        Rig rig;
        // The unreachable node comes first and fails in milliseconds: alone it is a 100 % rate.
        std::vector<std::pair<int, int>> picks{{32, 3}};
        for (int k = 1; k <= 20; ++k) picks.push_back({k, 3});
        auto r =
            rig.run(rig.pick(picks), rig.artifact("release D\n"), RolloutConfig(), "R-min-sample");
        CHECK_MESSAGE(r.status == RolloutStatus::failed, r.reason);  // 1 of 21 = 4.8 %: below 10 %
        CHECK(r.deployed == 20);
        CHECK(node_of(r, "node-0032").report.failed_step == "CONNECT");
        CHECK(node_of(r, "node-0032").report.outcome == NodeOutcome::failed_unchanged);
        CHECK(rig.recorder.gate_reasons.empty());
        // It did finish first: without the minimum sample the gate would have tripped there.
        const auto& ev = rig.recorder.events;
        const auto first_finish = std::find_if(
            ev.begin(), ev.end(), [](const Recorder::Event& e) { return e.what == "finish"; });
        REQUIRE(first_finish != ev.end());
        CHECK(first_finish->node == "node-0032");
    }

    TEST_CASE(
        "sliding window with a minimum sample of 1: the first failure aborts and nothing new "
        "starts") {
        Rig rig;
        TierPolicy t(3, 1, WindowMode::sliding, false);
        t.min_sample = 1;
        auto r = rig.run(rig.pick({{32, 3}, {23, 3}, {24, 3}}), rig.artifact("release E\n"),
                         config_with({t}), "R-sample-1");
        CHECK(r.status == RolloutStatus::aborted);
        CHECK(r.skipped == 2);
        CHECK_FALSE(rig.recorder.started("node-0023"));
    }

    TEST_CASE("the rollout-wide cap on failed nodes aborts even below the rate threshold") {
        Rig rig;
        auto config = config_with({TierPolicy(2, 1, WindowMode::sliding, false)});
        config.failure_threshold = 1.0;
        config.max_failed_nodes = 1;
        auto r = rig.run(rig.pick({{25, 2}, {32, 2}, {26, 2}, {27, 2}}),
                         rig.artifact("release F\n"), config, "R-cap");
        CHECK(r.status == RolloutStatus::aborted);
        CHECK(r.reason.find("max_failed_nodes 1") != std::string::npos);
        CHECK(r.deployed == 1);
        CHECK(r.skipped == 2);
    }

    TEST_CASE(
        "abort policy roll_back_all: every node the rollout deployed goes back to its exact "
        "previous files") {
        Rig rig;
        const auto before = check({"node-0028", "node-0029", "node-0030", "node-0031"});
        auto config = config_with({TierPolicy(2, 1, WindowMode::sliding, false)});
        config.on_abort = AbortPolicy::roll_back_all;
        auto art = rig.artifact("release G\n");
        auto r =
            rig.run(rig.pick({{28, 2}, {29, 2}, {31, 2}, {30, 2}}), art, config, "R-roll-back-all");
        CHECK(r.status == RolloutStatus::aborted);  // 1 of 3 = 33 % after node-0031
        CHECK(node_of(r, "node-0031").report.outcome == NodeOutcome::rolled_back);
        CHECK(node_of(r, "node-0030").state == NodeState::skipped);
        for (const char* n : {"node-0028", "node-0029"}) {
            const auto& p = node_of(r, n);
            CHECK(p.report.outcome == NodeOutcome::deployed);
            REQUIRE(p.abort_rollback.has_value());
            CHECK_MESSAGE(p.abort_rollback->outcome == NodeOutcome::rolled_back,
                          p.abort_rollback->error.message);
        }
        const auto after = check({"node-0028", "node-0029", "node-0030", "node-0031"});
        for (const auto& [name, c] : after) {
            CHECK_MESSAGE(tree(c) == tree(before.at(name)), name);
            CHECK_MESSAGE(file_sha(c, "release.bin") != art.sha256, name);
            CHECK_MESSAGE(running(c), name);
            CHECK_MESSAGE(!locked(c), name);
        }
        const auto ev = rig.events("R-roll-back-all", "");
        CHECK(has(ev, "ROLLOUT:ROLLBACK_ALL_START"));
        CHECK(has(ev, "ROLLOUT:ROLLBACK_ALL_DONE"));
        CHECK(has(rig.events("R-roll-back-all", "node-0028"), "SUMMARY:ROLLBACK_OK"));
    }

    TEST_CASE(
        "cancel(): the node in flight is stopped and rolled back, nothing later starts, no lock is "
        "left") {
        Rig rig;
        const auto before = check({"node-0033", "node-0039", "node-0040"});
        auto config = config_with({TierPolicy(3, 0, WindowMode::sliding, false),
                                   TierPolicy(4, 0, WindowMode::sliding, false)});
        bool asked = false;
        auto r = rig.run(
            rig.pick({{33, 3}, {39, 4}, {40, 4}}), rig.artifact("release H\n"), config, "R-cancel",
            [&](Rollout& rollout, asio::io_context& ioc) {
                // node-0033 is healthy only 2 s after a start: cancel while it waits.
                rig.recorder.on_step = [&](const NodeProgress& n) {
                    if (n.node.name == "node-0033" && n.step == "HEALTH" && !asked) {
                        asked = true;
                        asio::post(ioc, [&] { rollout.cancel("test: operator pressed Ctrl-C"); });
                    }
                };
            });
        REQUIRE(asked);
        CHECK(r.status == RolloutStatus::cancelled);
        CHECK(r.reason == "test: operator pressed Ctrl-C");
        const auto& n33 = node_of(r, "node-0033");
        CHECK(n33.report.error.code == errc::cancelled);
        CHECK(n33.report.failed_step == "HEALTH");
        CHECK_MESSAGE(n33.report.outcome == NodeOutcome::rolled_back, n33.report.rollback_error);
        CHECK(n33.report.lock_released);
        CHECK_FALSE(rig.recorder.started("node-0039"));
        CHECK_FALSE(rig.recorder.started("node-0040"));
        const auto after = check({"node-0033", "node-0039", "node-0040"});
        for (const auto& [name, c] : after) {
            CHECK_MESSAGE(tree(c) == tree(before.at(name)), name);
            CHECK_MESSAGE(!locked(c), name);
            CHECK_MESSAGE(running(c), name);
            CHECK_MESSAGE(c.at("other_entries").as_array().empty(), name);
        }
        const auto ev = rig.events("R-cancel", "node-0033");
        CHECK(has(ev, "HEALTH:STEP_FAILED"));
        CHECK(has(ev, "SUMMARY:ROLLBACK_OK"));
        CHECK(has(ev, "UNLOCK:STEP_OK"));
        CHECK(has(rig.events("R-cancel", ""), "ROLLOUT:ROLLOUT_CANCELLED"));
    }

    TEST_CASE("a node over its deadline is cancelled and rolled back; the others are unaffected") {
        Rig rig;
        const auto before = check({"node-0033"});
        auto config = config_with({TierPolicy(2, 0, WindowMode::sliding, false)});
        config.node_deadline = std::chrono::milliseconds(1500);  // node-0033 needs ~2 s in HEALTH
        config.failure_threshold = 1.0;
        auto art = rig.artifact("release I\n");
        auto r = rig.run(rig.pick({{33, 2}, {36, 2}}), art, config, "R-deadline");
        CHECK(r.status == RolloutStatus::failed);
        const auto& n33 = node_of(r, "node-0033");
        CHECK(n33.report.error.code == errc::cancelled);
        CHECK_MESSAGE(n33.report.outcome == NodeOutcome::rolled_back, n33.report.rollback_error);
        CHECK(node_of(r, "node-0036").report.outcome == NodeOutcome::deployed);
        const auto after = check({"node-0033", "node-0036"});
        CHECK(tree(after.at("node-0033")) == tree(before.at("node-0033")));
        CHECK_FALSE(locked(after.at("node-0033")));
        CHECK(file_sha(after.at("node-0036"), "release.bin") == art.sha256);
        CHECK(has(rig.events("R-deadline", ""), "NODE:NODE_DEADLINE"));
    }

    TEST_CASE("global limits: at most max_sessions nodes in flight") {
        Rig rig;
        auto config = config_with({TierPolicy(3, 0, WindowMode::sliding, false)});
        config.max_sessions = 2;
        config.max_connections_per_second = 0;  // unlimited: all six want to start at once
        auto r = rig.run(rig.pick({{1, 3}, {2, 3}, {3, 3}, {4, 3}, {5, 3}, {6, 3}}),
                         rig.artifact("release J\n"), config, "R-sessions");
        CHECK_MESSAGE(r.status == RolloutStatus::succeeded, r.reason);
        CHECK(rig.recorder.peak().at(3) == 2);  // reached, never exceeded
    }

    TEST_CASE("global limits: node starts are paced to max_connections_per_second") {
        Rig rig;
        auto config = config_with({TierPolicy(3, 0, WindowMode::sliding, false)});
        config.max_connections_per_second = 4;
        auto r = rig.run(rig.pick({{7, 3}, {8, 3}, {9, 3}, {10, 3}, {11, 3}, {12, 3}}),
                         rig.artifact("release J2\n"), config, "R-pace");
        CHECK_MESSAGE(r.status == RolloutStatus::succeeded, r.reason);
        std::vector<Clock::time_point> starts;
        for (const auto& e : rig.recorder.events)
            if (e.what == "start") starts.push_back(e.at);
        REQUIRE(starts.size() == 6);
        for (std::size_t k = 1; k < starts.size(); ++k)
            CHECK(starts[k] - starts[k - 1] >= std::chrono::milliseconds(240));  // 4 per second
    }

    TEST_CASE("dry run: pre-checks every node, reports the plan, changes nothing") {
        Rig rig;
        const auto before = check({"node-0037", "node-0038", "node-0032"});
        auto r = rig.run(rig.pick({{37, 1}, {38, 2}, {32, 3}}), rig.artifact("release K\n"),
                         RolloutConfig(), "R-dry",
                         [](Rollout& rollout, asio::io_context&) { rollout.set_dry_run(true); });
        CHECK(r.dry_run);
        CHECK(r.status == RolloutStatus::failed);  // one node is not ready, no gate in a dry run
        CHECK(node_of(r, "node-0037").report.outcome == NodeOutcome::deployed);  // = ready
        CHECK(node_of(r, "node-0038").report.outcome == NodeOutcome::deployed);
        CHECK(node_of(r, "node-0032").report.failed_step == "CONNECT");
        CHECK(r.skipped == 0);
        const auto after = check({"node-0037", "node-0038", "node-0032"});
        for (const auto& [name, c] : after) {
            CHECK_MESSAGE(tree(c) == tree(before.at(name)), name);
            CHECK_MESSAGE(backups(c) == backups(before.at(name)), name);
            CHECK_MESSAGE(!locked(c), name);
        }
        const auto ev = rig.events("R-dry", "node-0037");
        CHECK(has(ev, "PRECHECK:STEP_OK"));
        CHECK(has(ev, "LOCK_PROBE:STEP_OK"));
        CHECK(has(ev, "SUMMARY:DRY_RUN_OK"));
        CHECK_FALSE(has(ev, "BACKUP:STEP_START"));
    }

    TEST_CASE("a rollout configuration that does not cover the inventory's tiers starts nothing") {
        Rig rig;
        auto inv = rig.pick({{1, 2}, {2, 5}});
        auto v = validate_rollout(RolloutConfig(), inv);
        REQUIRE_FALSE(v.has_value());
        CHECK(v.error().message.find("node 'node-0002': field 'tier'") != std::string::npos);
        auto r = rig.run(inv, rig.artifact("release L\n"), RolloutConfig(), "R-bad-config");
        CHECK(r.status == RolloutStatus::failed);
        CHECK(rig.recorder.events.empty());
    }
}
