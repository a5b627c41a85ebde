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

TEST_CASE("failpoints are compiled only into test builds") {
#ifdef GUARDIA_FAILPOINTS
    CHECK(failpoint::enabled);
#else
    CHECK_FALSE(failpoint::enabled);
#endif
}

TEST_CASE("owner ids and their liveness") {
    auto id = parse_owner("guardia@deploy-1.example:4242");
    REQUIRE(id.has_value());
    CHECK(id->host == "deploy-1.example");
    CHECK(id->pid == 4242);
    for (const char* bad : {"", "guardia@host", "guardia@host:", "guardia@:12", "root@host:12",
                            "guardia@host:12x", "guardia@host:-3", "guardia@host:0"})
        CHECK_MESSAGE(!parse_owner(bad).has_value(), bad);

    auto runs = [](long pid) { return pid == 100; };
    CHECK(owner_liveness("guardia@here:100", "here", 7, runs) == OwnerLiveness::alive);
    CHECK(owner_liveness("guardia@here:101", "here", 7, runs) == OwnerLiveness::gone);
    CHECK(owner_liveness("guardia@here:7", "here", 7, runs) == OwnerLiveness::alive);  // us
    CHECK(owner_liveness("guardia@there:101", "here", 7, runs) == OwnerLiveness::unknown);
    CHECK(owner_liveness("", "here", 7, runs) == OwnerLiveness::unknown);
    CHECK(owner_liveness("something else", "here", 7, runs) == OwnerLiveness::unknown);

    // The real process table: this process is alive; a pid far above pid_max is gone.
    CHECK(owner_liveness(local_owner_id()) == OwnerLiveness::alive);
    CHECK(owner_liveness("guardia@" + local_host_name() + ":2147483646") == OwnerLiveness::gone);
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
