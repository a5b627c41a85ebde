// Operator control of a rollout in flight (issue 14): the pure state machine of pause / resume /
// abort and tier approval, the rollouts row's status, the tiers' bake_s / approve fields, and
// the service's routes, error codes and webhook events for it.
#include "guardia/deploy/engine_config.hpp"
#include "guardia/deploy/rollout.hpp"
#include "guardia/service/deploy_service.hpp"
#include "guardia/service/notifier.hpp"

#include <doctest/doctest.h>

using namespace guardia;
using namespace guardia::deploy;

namespace {

ControlDecision d(ControlState from, ControlRequest req, bool may_approve = false) {
    return decide_control(from, req, may_approve);
}

}  // namespace

TEST_SUITE("rollout control") {
    TEST_CASE("running: pause and abort are allowed, resume is not") {
        auto p = d(ControlState::running, ControlRequest::pause);
        CHECK(p.allowed);
        CHECK(p.next == ControlState::paused);
        auto r = d(ControlState::running, ControlRequest::resume, true);
        CHECK_FALSE(r.allowed);
        CHECK(r.refusal == ControlRefusal::not_paused);
        auto a = d(ControlState::running, ControlRequest::abort);
        CHECK(a.allowed);
        CHECK(a.next == ControlState::stopping);
    }

    TEST_CASE("paused: resume (any principal) and abort, a second pause is refused") {
        auto r = d(ControlState::paused, ControlRequest::resume, false);
        CHECK(r.allowed);
        CHECK(r.next == ControlState::running);
        auto p = d(ControlState::paused, ControlRequest::pause);
        CHECK_FALSE(p.allowed);
        CHECK(p.refusal == ControlRefusal::already_paused);
        CHECK(d(ControlState::paused, ControlRequest::abort).next == ControlState::stopping);
    }

    TEST_CASE("awaiting approval: only an approver's resume opens the gate") {
        auto op = d(ControlState::awaiting_approval, ControlRequest::resume, false);
        CHECK_FALSE(op.allowed);
        CHECK(op.refusal == ControlRefusal::approver_required);
        auto v = d(ControlState::awaiting_approval, ControlRequest::resume, true);
        CHECK(v.allowed);
        CHECK(v.next == ControlState::running);
        auto p = d(ControlState::awaiting_approval, ControlRequest::pause, true);
        CHECK_FALSE(p.allowed);
        CHECK(p.refusal == ControlRefusal::awaiting_approval);
        auto a = d(ControlState::awaiting_approval, ControlRequest::abort);
        CHECK(a.allowed);
        CHECK(a.next == ControlState::stopping);
    }

    TEST_CASE("an approver who may not operate can only open a tier gate") {
        auto gate = decide_control(ControlState::awaiting_approval, ControlRequest::resume, true,
                                   false);
        CHECK(gate.allowed);
        CHECK(gate.next == ControlState::running);
        for (auto from : {ControlState::running, ControlState::paused}) {
            for (auto req : {ControlRequest::pause, ControlRequest::resume, ControlRequest::abort}) {
                auto x = decide_control(from, req, true, false);
                CHECK_FALSE(x.allowed);
                CHECK(x.refusal == ControlRefusal::operator_required);
            }
        }
        auto abort = decide_control(ControlState::awaiting_approval, ControlRequest::abort, true,
                                    false);
        CHECK_FALSE(abort.allowed);
        CHECK(abort.refusal == ControlRefusal::operator_required);
    }

    TEST_CASE("stopping: nothing applies any more") {
        for (auto req : {ControlRequest::pause, ControlRequest::resume, ControlRequest::abort}) {
            auto x = d(ControlState::stopping, req, true);
            CHECK_FALSE(x.allowed);
            CHECK(x.refusal == ControlRefusal::stopping);
        }
    }

    TEST_CASE("names at the store and JSON boundary") {
        CHECK(to_string(ControlState::paused) == "PAUSED");
        CHECK(to_string(ControlState::awaiting_approval) == "AWAITING_APPROVAL");
        CHECK(to_string(ControlRequest::abort) == "abort");
        CHECK(to_string(ControlRefusal::approver_required) == "approver_required");
        CHECK(to_string(ControlRefusal::stopping) == "rollout_stopping");
    }

    TEST_CASE("the rollouts row shows the control state while running, the outcome after") {
        CHECK(stored_status(RolloutStatus::running, ControlState::running) == "RUNNING");
        CHECK(stored_status(RolloutStatus::running, ControlState::paused) == "PAUSED");
        CHECK(stored_status(RolloutStatus::running, ControlState::awaiting_approval) ==
              "AWAITING_APPROVAL");
        CHECK(stored_status(RolloutStatus::aborted, ControlState::paused) == "ABORTED");
        CHECK(stored_status(RolloutStatus::succeeded, ControlState::running) == "SUCCEEDED");
    }
}

TEST_SUITE("engine config: between tiers") {
    TEST_CASE("bake_s and approve default to off") {
        auto c = parse_engine_config(R"({"rollout": {"tiers": [{"tier": 1}, {"tier": 2}]}})",
                                     "guardia.json");
        REQUIRE(c.has_value());
        for (const auto& t : c->rollout.tiers) {
            CHECK(t.bake.count() == 0);
            CHECK_FALSE(t.approve);
        }
        RolloutConfig defaults;
        for (const auto& t : defaults.tiers) {
            CHECK(t.bake.count() == 0);
            CHECK_FALSE(t.approve);
        }
    }

    TEST_CASE("bake_s and approve are read per tier") {
        auto c = parse_engine_config(
            R"({"rollout": {"tiers": [{"tier": 1, "bake_s": 30, "approve": true}, {"tier": 2}]}})",
            "guardia.json");
        REQUIRE(c.has_value());
        CHECK(c->rollout.tiers[0].bake == std::chrono::seconds(30));
        CHECK(c->rollout.tiers[0].approve);
        CHECK_FALSE(c->rollout.tiers[1].approve);
    }

    TEST_CASE("bad values name the field") {
        auto neg = parse_engine_config(R"({"rollout": {"tiers": [{"tier": 1, "bake_s": -1}]}})",
                                       "guardia.json");
        REQUIRE_FALSE(neg.has_value());
        CHECK(neg.error().message.find("guardia.json: rollout.tiers[0].bake_s") !=
              std::string::npos);
        auto frac = parse_engine_config(R"({"rollout": {"tiers": [{"tier": 1, "bake_s": 1.5}]}})",
                                        "guardia.json");
        REQUIRE_FALSE(frac.has_value());
        CHECK(frac.error().message.find("rollout.tiers[0].bake_s") != std::string::npos);
        auto str = parse_engine_config(
            R"({"rollout": {"tiers": [{"tier": 1}, {"tier": 2, "approve": "yes"}]}})",
            "guardia.json");
        REQUIRE_FALSE(str.has_value());
        CHECK(str.error().message.find("rollout.tiers[1].approve: must be true or false") !=
              std::string::npos);
    }
}

TEST_SUITE("service: operator control") {
    using namespace guardia::service;
    namespace bh = boost::beast::http;

    TEST_CASE("routes: pause and abort need operate; resume also admits validate") {
        int found = 0;
        for (const auto& r : DeployService::routes()) {
            if (r.path == "/api/deploy/{}/pause" || r.path == "/api/deploy/{}/abort") {
                ++found;
                CHECK(r.method == "POST");
                CHECK(r.role == Role::operate);
                CHECK_FALSE(r.also_role.has_value());
            } else if (r.path == "/api/deploy/{}/resume") {
                ++found;
                CHECK(r.method == "POST");
                CHECK(r.role == Role::operate);
                CHECK(r.also_role == Role::validate);
            }
        }
        CHECK(found == 3);
    }

    TEST_CASE("error codes and HTTP statuses") {
        CHECK(to_string(ServiceErrc::no_rollout_in_flight) == "no_rollout_in_flight");
        CHECK(to_string(ServiceErrc::control_refused) == "control_refused");
        CHECK(to_string(ServiceErrc::approval_needs_validate) == "approval_needs_validate");
        CHECK(http_status(ServiceErrc::no_rollout_in_flight) == bh::status::conflict);
        CHECK(http_status(ServiceErrc::control_refused) == bh::status::conflict);
        CHECK(http_status(ServiceErrc::approval_needs_validate) == bh::status::forbidden);
    }

    TEST_CASE("webhook events") {
        for (auto e : {"rollout_paused", "rollout_resumed", "rollout_aborted", "tier_gate"})
            CHECK(is_known_event(e));
        CHECK_FALSE(is_known_event("rollout_exploded"));
    }
}

TEST_SUITE("rollout control: bake and health types") {
    TEST_CASE("a baking tier refuses a node whose health check is a command, naming both") {
        RolloutConfig c;  // tiers 1, 2, 3
        Inventory inv;
        Node web;
        web.name = "web-01";
        web.tier = 2;
        web.health.type = http::ProbeKind::tcp;
        Node job;
        job.name = "job-01";
        job.tier = 2;
        job.health.type = http::ProbeKind::command;
        inv.nodes.push_back(web);
        inv.nodes.push_back(job);
        CHECK(validate_rollout(c, inv).has_value());  // no bake: a command check is fine
        c.tiers[1].bake = std::chrono::seconds(60);
        auto v = validate_rollout(c, inv);
        REQUIRE_FALSE(v.has_value());
        CHECK(v.error().message.find("rollout.tiers[1].bake_s: node 'job-01'") == 0);
        c.tiers[1].bake = std::chrono::seconds(0);
        c.tiers[2].bake = std::chrono::seconds(60);  // tier 3 bakes; job-01 is tier 2
        CHECK(validate_rollout(c, inv).has_value());
    }
}
