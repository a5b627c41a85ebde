// The pure pieces of crash recovery and of "audit or stop": failpoint specs, owner liveness,
// steps left open in the audit log, which steps run without their intent row.
#include "guardia/core/failpoint.hpp"
#include "guardia/deploy/node_pipeline.hpp"
#include "guardia/deploy/owner.hpp"
#include "guardia/deploy/recovery.hpp"

#include <doctest/doctest.h>

using namespace guardia;
using namespace guardia::deploy;

TEST_CASE("failpoint specs: <when>:<STEP>[@<node>]") {
    auto s = failpoint::parse("after:LOCK@node-0003");
    REQUIRE(s.has_value());
    CHECK(s->when == failpoint::When::after);
    CHECK(s->step == "LOCK");
    CHECK(s->node == "node-0003");
    CHECK(failpoint::matches(*s, failpoint::When::after, "LOCK", "node-0003"));
    CHECK_FALSE(failpoint::matches(*s, failpoint::When::before, "LOCK", "node-0003"));
    CHECK_FALSE(failpoint::matches(*s, failpoint::When::after, "LOCK", "node-0004"));
    CHECK_FALSE(failpoint::matches(*s, failpoint::When::after, "BACKUP", "node-0003"));

    auto any = failpoint::parse("mid:TRANSFER");
    REQUIRE(any.has_value());
    CHECK(any->node.empty());
    CHECK(failpoint::matches(*any, failpoint::When::mid, "TRANSFER", "whatever"));

    for (const char* bad : {"", "LOCK", "during:LOCK", "before:", "before:lock", "before:LOCK@",
                            "before:LO CK", "after;LOCK"})
        CHECK_MESSAGE(!failpoint::parse(bad).has_value(), bad);
}

TEST_CASE("failpoint pauses: <POINT>:<ms>") {
    auto p = failpoint::parse_pause("WORK_FINISH:1500");
    REQUIRE(p.has_value());
    CHECK(p->point == "WORK_FINISH");
    CHECK(p->delay == std::chrono::milliseconds(1500));
    for (const char* bad : {"", "WORK_FINISH", ":10", "WORK_FINISH:", "WORK_FINISH:0",
                            "WORK_FINISH:600001", "WORK_FINISH:1234567", "work_finish:10",
                            "WORK_FINISH:1s", "WORK_FINISH:-5"})
        CHECK_MESSAGE(!failpoint::parse_pause(bad).has_value(), bad);
#ifndef GUARDIA_FAILPOINTS
    CHECK(failpoint::pause_at("WORK_FINISH") == std::chrono::milliseconds(0));
#endif
}

TEST_CASE("failpoints are compiled only into test builds") {
#ifdef GUARDIA_FAILPOINTS
    CHECK(failpoint::enabled);
#else
    CHECK_FALSE(failpoint::enabled);
#endif
}

TEST_CASE("owner ids and their liveness") {
    auto id = parse_owner("guardia@deploy-1.example:4242:ab12cd34-0f0f0f0f-98765");
    REQUIRE(id.has_value());
    CHECK(id->host == "deploy-1.example");
    CHECK(id->pid == 4242);
    CHECK(id->machine == "ab12cd34");
    CHECK(id->boot == "0f0f0f0f");
    CHECK(id->start == "98765");
    auto legacy = parse_owner("guardia@deploy-1:4242");
    REQUIRE(legacy.has_value());
    CHECK(legacy->start.empty());
    for (const char* bad : {"", "guardia@host", "guardia@host:", "guardia@:12", "root@host:12",
                            "guardia@host:12x", "guardia@host:-3", "guardia@host:0",
                            "guardia@host:4294967295", "guardia@host:12:", "guardia@host:12:a-b",
                            "guardia@host:12:a-b-", "guardia@host:12:a-b-c d"})
        CHECK_MESSAGE(!parse_owner(bad).has_value(), bad);

    LocalIdentity me;
    me.host = "here";
    me.machine = "m1";
    me.boot = "b1";
    me.pid = 1;
    me.owner = "guardia@here:1:m1-b1-500";
    // Process table: pid 100 is a guardia started at 700; nothing else runs guardia.
    auto start_of = [](long pid) -> std::optional<std::string> {
        if (pid == 100) return "700";
        return std::nullopt;
    };
    auto live = [&](const std::string& o) { return owner_liveness(o, me, start_of); };
    CHECK(live(me.owner) == OwnerLiveness::alive);                        // this process
    CHECK(live("guardia@here:100:m1-b1-700") == OwnerLiveness::alive);    // that very process
    CHECK(live("guardia@here:100:m1-b1-699") == OwnerLiveness::gone);     // its pid, reused
    CHECK(live("guardia@here:101:m1-b1-700") == OwnerLiveness::gone);     // no such process
    // A container restarted: the service is pid 1 again, but not the same process.
    CHECK(live("guardia@here:1:m1-b1-3") == OwnerLiveness::gone);
    CHECK(live("guardia@here:100:m1-b0-700") == OwnerLiveness::gone);     // rebooted since
    CHECK(live("guardia@here:101:m2-b1-700") == OwnerLiveness::unknown);  // namesake machine
    CHECK(live("guardia@renamed:101:m1-b1-700") == OwnerLiveness::gone);  // same machine-id
    // The older form: judged by pid alone, never when it is ours.
    CHECK(live("guardia@here:100") == OwnerLiveness::alive);
    CHECK(live("guardia@here:101") == OwnerLiveness::gone);
    CHECK(live("guardia@here:1") == OwnerLiveness::unknown);
    CHECK(live("guardia@there:101") == OwnerLiveness::unknown);
    CHECK(live("") == OwnerLiveness::unknown);
    CHECK(live("something else") == OwnerLiveness::unknown);

    // The real process table: this process is alive; a pid far above pid_max is gone, and so
    // is this process's pid with another start time.
    const auto real = local_identity();
    CHECK(owner_liveness(local_owner_id()) == OwnerLiveness::alive);
    CHECK(parse_owner(local_owner_id()).has_value());
    CHECK(owner_liveness("guardia@" + local_host_name() + ":2147483646:" + real.machine + "-" +
                         real.boot + "-1") == OwnerLiveness::gone);
    CHECK(owner_liveness("guardia@" + local_host_name() + ":" + std::to_string(real.pid) + ":" +
                         real.machine + "-" + real.boot + "-1") == OwnerLiveness::gone);
}

namespace {
store::AuditRow row(std::string node, std::string step, std::string event) {
    store::AuditRow r;
    r.node = std::move(node);
    r.step = std::move(step);
    r.event = std::move(event);
    return r;
}
}  // namespace

TEST_CASE("open steps: started and never ended, per node, in order") {
    std::vector<store::AuditRow> rows = {
        row("a", "CONNECT", "STEP_START"),    row("a", "CONNECT", "STEP_OK"),
        row("a", "PRECHECK", "STEP_START"),   row("b", "CONNECT", "STEP_START"),
        row("a", "PRECHECK", "STEP_OK"),      row("a", "LOCK", "STEP_START"),
        row("a", "LOCK", "STEP_OK"),          row("a", "TRANSFER", "STEP_START"),
        row("", "ROLLOUT", "ROLLOUT_START"),  row("a", "SUMMARY", "DEPLOY_FAILED"),
        row("a", "ROLLBACK", "STEP_START"),   row("a", "RESTORE", "STEP_START"),
        row("a", "RESTORE", "STEP_FAILED"),
    };
    CHECK(open_steps(rows, "a") == std::vector<std::string>{"TRANSFER", "ROLLBACK"});
    CHECK(open_steps(rows, "b") == std::vector<std::string>{"CONNECT"});
    CHECK(open_steps(rows, "c").empty());
    rows.push_back(row("a", "TRANSFER", "STEP_INTERRUPTED"));
    CHECK(open_steps(rows, "a") == std::vector<std::string>{"ROLLBACK"});
    // A step started twice (two artifacts) and ended once is still open once.
    std::vector<store::AuditRow> twice = {row("a", "TRANSFER", "STEP_START"),
                                          row("a", "TRANSFER", "STEP_OK"),
                                          row("a", "TRANSFER", "STEP_START")};
    CHECK(open_steps(twice, "a") == std::vector<std::string>{"TRANSFER"});
}

TEST_CASE("which node statuses recovery inspects") {
    CHECK(needs_recovery("RUNNING"));
    CHECK(needs_recovery("PENDING"));
    CHECK(needs_recovery("RECOVERY_FAILED"));
    CHECK_FALSE(needs_recovery("DEPLOYED"));
    CHECK_FALSE(needs_recovery("ROLLED_BACK"));
    CHECK_FALSE(needs_recovery("SKIPPED"));
}

TEST_CASE("only the safety steps run without their intent row") {
    for (const char* s : {"ROLLBACK", "ROLLBACK_SHUTDOWN", "RESTORE", "ROLLBACK_STARTUP",
                          "ROLLBACK_HEALTH", "DISCARD_STAGED", "UNLOCK"})
        CHECK_MESSAGE(step_runs_without_audit(s), s);
    for (const char* s : {"CONNECT", "PRECHECK", "LOCK", "BACKUP", "TRANSFER", "SHUTDOWN",
                          "ACTIVATE", "STARTUP", "HEALTH", "VERIFY_LIVE", "RECOVER_INSPECT", ""})
        CHECK_MESSAGE(!step_runs_without_audit(s), s);
}
