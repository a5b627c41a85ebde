// The service's decision logic without I/O: the task lifecycle's transition table, node claims
// across SRs, the approval rules, the route table and the one mapping of service errors to HTTP
// statuses, and the parser of a node's live-file listing used before a PM rollback.
#include "guardia/deploy/node_pipeline.hpp"
#include "guardia/service/approvals.hpp"
#include "guardia/service/claims.hpp"
#include "guardia/service/coordinator.hpp"
#include "guardia/service/clients.hpp"
#include "guardia/service/deploy_service.hpp"
#include "guardia/service/task_status.hpp"

#include <doctest/doctest.h>
#include <boost/json.hpp>

#include <set>

using namespace guardia::service;
namespace bh = boost::beast::http;

TEST_SUITE_BEGIN("service logic");

TEST_CASE("task status: every status round-trips through its store name") {
    const TaskStatus all[] = {TaskStatus::created,         TaskStatus::deploying,
                              TaskStatus::pending_pm_validation, TaskStatus::failed_rollback,
                              TaskStatus::completed,       TaskStatus::rolling_back,
                              TaskStatus::rolled_back,     TaskStatus::rollback_failed};
    std::set<std::string_view> names;
    for (auto s : all) {
        CHECK(parse_task_status(to_string(s)).value() == s);
        names.insert(to_string(s));
    }
    CHECK(names.size() == 8);
    CHECK(to_string(TaskStatus::pending_pm_validation) == "PENDING_PM_VALIDATION");
    CHECK_FALSE(parse_task_status("pending_pm_validation").has_value());
    CHECK_FALSE(parse_task_status("").has_value());
}

TEST_CASE("task status: the transition table is the whole lifecycle") {
    using S = TaskStatus;
    using E = TaskEvent;
    CHECK(transition(S::created, E::trigger).value_or(S::created) == S::deploying);
    CHECK(transition(S::failed_rollback, E::trigger).value_or(S::created) == S::deploying);
    CHECK(transition(S::deploying, E::rollout_succeeded).value_or(S::created) == S::pending_pm_validation);
    CHECK(transition(S::deploying, E::rollout_failed).value_or(S::created) == S::failed_rollback);
    CHECK(transition(S::pending_pm_validation, E::accept).value_or(S::created) == S::completed);
    CHECK(transition(S::pending_pm_validation, E::reject).value_or(S::created) == S::rolling_back);
    CHECK(transition(S::rolling_back, E::rollback_succeeded).value_or(S::created) == S::rolled_back);
    CHECK(transition(S::rolling_back, E::rollback_failed).value_or(S::created) == S::rollback_failed);
    // everything else is refused: count the allowed pairs
    const S statuses[] = {S::created,   S::deploying,    S::pending_pm_validation, S::failed_rollback,
                          S::completed, S::rolling_back, S::rolled_back,           S::rollback_failed};
    const E events[] = {E::trigger, E::rollout_succeeded, E::rollout_failed, E::accept,
                        E::reject,  E::rollback_succeeded, E::rollback_failed};
    int allowed = 0;
    for (auto s : statuses)
        for (auto e : events) allowed += transition(s, e) ? 1 : 0;
    CHECK(allowed == 8);
    CHECK_FALSE(transition(S::deploying, E::trigger).has_value());  // no second rollout of a running SR
    CHECK_FALSE(transition(S::pending_pm_validation, E::trigger).has_value());  // its nodes await the PM
    CHECK_FALSE(transition(S::completed, E::reject).has_value());
    CHECK_FALSE(transition(S::rollback_failed, E::reject).has_value());
    for (auto s : statuses) {
        CHECK(can_stage(s) == (s == S::created || s == S::failed_rollback));
        CHECK(is_final(s) == (s == S::completed || s == S::rolled_back || s == S::rollback_failed));
        if (is_final(s))
            for (auto e : events) CHECK_FALSE(transition(s, e).has_value());
    }
}

TEST_CASE("claims: another SR's claim on any wanted node is a conflict naming SR and nodes") {
    ClaimTable t;
    t.claim("SR-A", ClaimKind::awaiting_verdict, {"n3", "n1", "n2", "n1"});
    t.claim("SR-C", ClaimKind::deploying, {"n9"});
    CHECK(t.size() == 4);
    CHECK(t.nodes_of("SR-A") == std::vector<std::string>{"n1", "n2", "n3"});
    CHECK(t.conflicts("SR-A", {"n1", "n2"}).empty());  // its own nodes
    CHECK(t.conflicts("SR-B", {"n4", "n5"}).empty());
    auto c = t.conflicts("SR-B", {"n2", "n9", "n1", "n7"});
    REQUIRE(c.size() == 2);
    CHECK(c[0].sr_id == "SR-A");
    CHECK(c[0].kind == ClaimKind::awaiting_verdict);
    CHECK(c[0].nodes == std::vector<std::string>{"n1", "n2"});
    CHECK(c[1].sr_id == "SR-C");
    CHECK(describe(c) ==
          "SR SR-A (awaiting its PM verdict) holds n1, n2; SR SR-C (deploying) holds n9");
    CHECK(describe(c, 1) ==
          "SR SR-A (awaiting its PM verdict) holds n1 and 1 more; SR SR-C (deploying) holds n9");
    // a new claim of the same SR replaces its old one; release ends it
    t.claim("SR-A", ClaimKind::rolling_back, {"n2"});
    CHECK(t.conflicts("SR-B", {"n1"}).empty());
    CHECK(t.conflicts("SR-B", {"n2"}).at(0).kind == ClaimKind::rolling_back);
    t.release("SR-A");
    CHECK(t.conflicts("SR-B", {"n1", "n2", "n3"}).empty());
    t.claim("SR-C", ClaimKind::deploying, {});
    CHECK(t.size() == 0);
}

TEST_CASE("approvals: identities compare normalised; self-approval and four eyes") {
    CHECK(normalize_identity("  Alice\t") == "alice");
    CHECK(normalize_identity("ÄLICE") == "Älice");  // non-ASCII bytes compare exactly
    CHECK(same_identity("alice", " ALICE "));
    CHECK_FALSE(same_identity("", " "));  // blank is nobody
    CHECK_FALSE(same_identity("alice", "alice2"));

    CHECK(check_approver("alice", "bob", true).has_value());
    CHECK(check_approver("alice", " Alice", true).error().code == ServiceErrc::self_approval);
    CHECK(check_approver("alice", "ALICE", false).has_value());  // allowed when configured so
    CHECK(check_approver("", "bob", true).has_value());           // no requester recorded
    CHECK(check_approver("alice", "  ", true).error().code == ServiceErrc::bad_request);

    using V = std::vector<std::string>;
    CHECK(check_verdict_author("carol", "alice", V{"bob"}, true).has_value());
    CHECK(check_verdict_author("Alice ", "alice", V{"bob"}, true).error().code ==
          ServiceErrc::four_eyes);
    // every approver of the SR so far, not only the latest (found by a review)
    CHECK(check_verdict_author("bob", "alice", V{"bob", "carol"}, true).error().code ==
          ServiceErrc::four_eyes);
    // control characters would make "alice\0" look like "alice"
    CHECK(check_approver("alice", std::string("alice\0", 6), true).error().code ==
          ServiceErrc::bad_request);
    CHECK(check_approver("alice", "al\x01ice", true).error().code == ServiceErrc::bad_request);
    CHECK(check_approver("alice", "alice\x7f", true).error().code == ServiceErrc::bad_request);
    CHECK(check_verdict_author(std::string("\0carol", 6), "alice", V{"bob"}, true).error().code ==
          ServiceErrc::bad_request);
    auto e = check_verdict_author("BOB", "alice", V{"bob"}, true);
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().code == ServiceErrc::four_eyes);
    CHECK(e.error().message.find("approved this deployment") != std::string::npos);
    CHECK(check_verdict_author("bob", "alice", V{"bob"}, false).has_value());
    CHECK(check_verdict_author("", "alice", V{"bob"}, false).error().code ==
          ServiceErrc::bad_request);
}

TEST_CASE("approvals: the approved set must be exactly what is staged") {
    const std::string h1(64, 'a'), h2(64, 'b');
    ArtifactSet staged{{"app.jar", h1}, {"VERSION", h2}};
    CHECK(check_expected_set(staged, staged).has_value());
    auto e = check_expected_set({{"app.jar", h2}, {"extra", h1}}, staged);
    REQUIRE_FALSE(e.has_value());
    CHECK(e.error().code == ServiceErrc::approval_mismatch);
    CHECK(e.error().message.find("app.jar is staged with sha256 " + h1) != std::string::npos);
    CHECK(e.error().message.find("extra is not staged") != std::string::npos);
    CHECK(e.error().message.find("VERSION is staged but not in the approved set") !=
          std::string::npos);

    auto back = artifact_set_from_json(boost::json::value(to_json(staged)), "artifacts");
    REQUIRE(back.has_value());
    CHECK(*back == staged);
    CHECK_FALSE(artifact_set_from_json(boost::json::parse(R"({"a": "ABC"})"), "artifacts").has_value());
    CHECK_FALSE(artifact_set_from_json(boost::json::parse(R"({})"), "artifacts").has_value());
    CHECK(artifact_set_from_json(boost::json::parse(R"([1])"), "artifacts")
              .error()
              .message.find("artifacts: must be an object") == 0);
}

TEST_CASE("routes: only /healthz is public; every other route names its role") {
    int public_routes = 0;
    std::set<std::string> seen;
    for (const auto& r : DeployService::routes()) {
        CHECK(seen.insert(r.method + " " + r.path).second);  // no route twice
        if (!r.role) {
            ++public_routes;
            CHECK(r.path == "/healthz");
        }
    }
    CHECK(public_routes == 1);
    auto role_of = [](std::string method, std::string path) -> std::optional<Role> {
        for (const auto& r : DeployService::routes())
            if (r.method == method && r.path == path) return r.role;
        FAIL("no route " << method << " " << path);
        return std::nullopt;
    };
    CHECK(role_of("POST", "/api/inventory") == Role::admin);
    CHECK(role_of("POST", "/api/deploy/trigger") == Role::submit);
    CHECK(role_of("PUT", "/api/tasks/{}/artifacts/{}") == Role::submit);
    CHECK(role_of("POST", "/api/tasks/{}/validation") == Role::validate);
    CHECK(role_of("GET", "/api/audit") == Role::read);
    CHECK(role_of("GET", "/metrics") == Role::read);
}

TEST_CASE("service errors: one HTTP status and error code each") {
    CHECK(http_status(ServiceErrc::bad_request) == bh::status::bad_request);
    CHECK(http_status(ServiceErrc::forbidden) == bh::status::forbidden);
    CHECK(http_status(ServiceErrc::self_approval) == bh::status::forbidden);
    CHECK(http_status(ServiceErrc::four_eyes) == bh::status::forbidden);
    CHECK(http_status(ServiceErrc::not_found) == bh::status::not_found);
    CHECK(http_status(ServiceErrc::conflict) == bh::status::conflict);
    CHECK(http_status(ServiceErrc::node_claimed) == bh::status::conflict);
    CHECK(http_status(ServiceErrc::approval_mismatch) == bh::status::conflict);
    CHECK(http_status(ServiceErrc::checksum_mismatch) == bh::status::unprocessable_entity);
    CHECK(http_status(ServiceErrc::store_unavailable) == bh::status::service_unavailable);
    CHECK(http_status(ServiceErrc::stopping) == bh::status::service_unavailable);
    guardia::http::Request req{bh::verb::post, "/api/deploy/trigger", 11};
    ServiceError e(ServiceErrc::node_claimed, "held");
    e.details["claimed_by"] = boost::json::array{boost::json::object{{"sr_id", "SR-A"}}};
    auto res = error_answer(req, e);
    CHECK(res.result() == bh::status::conflict);
    auto body = boost::json::parse(res.body()).as_object();
    CHECK(body.at("error") == "node_claimed");
    CHECK(body.at("message") == "held");
    CHECK(body.at("claimed_by").as_array().at(0).as_object().at("sr_id") == "SR-A");
}

TEST_CASE("live files: mismatches against the release to roll back, by name") {
    guardia::deploy::ArtifactSpec a, b;
    a.file_name = "app.jar";
    a.sha256 = std::string(64, 'a');
    b.file_name = "VERSION";
    b.sha256 = std::string(64, 'b');
    const std::string ok = "SHA app.jar " + a.sha256 + "\nSHA VERSION " + b.sha256 + "\n";
    CHECK(guardia::deploy::live_mismatches(ok, {a, b}).empty());
    const std::string other = "SHA app.jar " + std::string(64, 'c') + "\n";
    auto wrong = guardia::deploy::live_mismatches(other, {a, b});
    REQUIRE(wrong.size() == 2);
    CHECK(wrong[0] == "app.jar is sha256 " + std::string(64, 'c') + " (expected " + a.sha256 + ")");
    CHECK(wrong[1] == "VERSION is missing (expected " + b.sha256 + ")");
    // a name that is a prefix of another does not match the longer one's line
    guardia::deploy::ArtifactSpec c;
    c.file_name = "app";
    c.sha256 = a.sha256;
    CHECK(guardia::deploy::live_mismatches("SHA app.jar " + a.sha256 + "\n", {c}).size() == 1);
}

TEST_SUITE_END();

namespace {
guardia::store::NodeHistoryRow row(std::string sr, std::string rollout, std::string node,
                                   std::string status, std::string backup) {
    guardia::store::NodeHistoryRow h;
    h.sr_id = std::move(sr);
    h.result.rollout_id = std::move(rollout);
    h.result.node = std::move(node);
    h.result.status = std::move(status);
    h.result.backup_path = std::move(backup);
    return h;
}
}  // namespace

TEST_CASE("PM rollback: restore points from the nodes' histories across SRs") {
    // n1: A's first attempt failed elsewhere but deployed n1 (backup v0); A's retry redeployed it
    //     (backup = A's first build): restore v0, the node before A.
    // n2: A deployed (backup v0), B deployed over it and was accepted (backup = A1), A's retry
    //     deployed again (backup = B): restore B's build, never v0 (a review found this).
    // n3: A deployed, then B deployed over it and A never came back: not A's any more.
    // n4: A's attempt failed there (rolled back in-rollout): nothing of A's is on it.
    // n5: A deployed, then its PM rollback restored it: done.
    std::vector<guardia::store::NodeHistoryRow> rows{
        row("A", "A1", "n1", "DEPLOYED", "/d.bak_v0"), row("A", "A2", "n1", "DEPLOYED", "/d.bak_a1"),
        row("A", "A1", "n2", "DEPLOYED", "/d.bak_v0"), row("B", "B1", "n2", "DEPLOYED", "/d.bak_a1"),
        row("A", "A2", "n2", "DEPLOYED", "/d.bak_b1"), row("A", "A1", "n3", "DEPLOYED", "/d.bak_v0"),
        row("B", "B1", "n3", "DEPLOYED", "/d.bak_a1"), row("A", "A1", "n4", "ROLLED_BACK", "/d.bak_v0"),
        row("A", "A1", "n5", "ROLLED_BACK_BY_PM", "/d.bak_v0")};
    auto points = deployed_restore_points("A", rows);
    REQUIRE(points.size() == 2);
    CHECK(points.at("n1").first_backup == "/d.bak_v0");
    CHECK(points.at("n1").latest.rollout_id == "A2");
    CHECK(points.at("n2").first_backup == "/d.bak_b1");
    CHECK(points.count("n3") == 0);
    CHECK(points.count("n4") == 0);
    CHECK(points.count("n5") == 0);
    // B's view of n3: its own release, restored to A1's build
    auto b = deployed_restore_points("B", rows);
    CHECK(b.at("n3").first_backup == "/d.bak_a1");
    CHECK(b.count("n2") == 0);  // A redeployed n2 after B
}

TEST_CASE("lock_owned_by: only a complete rollout=<id> line of the owner file") {
    using guardia::deploy::lock_owned_by;
    const std::string id = "R-20261205T120000Z-1";
    CHECK(lock_owned_by("owner=deploy@host\nrollout=" + id + "\nsince=1764936000\n", id));
    CHECK(lock_owned_by("rollout=" + id + "\n", id));
    CHECK_FALSE(lock_owned_by("rollout=" + id, id));                      // no newline: not read
    CHECK_FALSE(lock_owned_by("rollout=" + id + "-2\n", id));             // a longer id
    CHECK_FALSE(lock_owned_by("rollout=R\n", id));                        // a prefix of it
    CHECK_FALSE(lock_owned_by("xrollout=" + id + "\n", id));
    CHECK_FALSE(lock_owned_by("rollout= " + id + "\n", id));
    CHECK_FALSE(lock_owned_by("owner=rollout=" + id + "\n", id));
    CHECK_FALSE(lock_owned_by("", id));
    CHECK_FALSE(lock_owned_by("rollout=\n", ""));                         // never an empty id
}
