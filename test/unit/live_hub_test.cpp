// The console's live updates: SSE framing and the coalescing of document readings into events.
#include "guardia/service/live_hub.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <string>

using namespace guardia::service;
namespace json = boost::json;

namespace {

json::object doc_with(const std::string& status_a, const std::string& status_b,
                      const std::string& task_status) {
    json::array nodes;
    nodes.push_back(json::object{{"name", "a"}, {"state", status_a}});
    nodes.push_back(json::object{{"name", "b"}, {"state", status_b}});
    return json::object{{"sr_id", "SR-1"},
                        {"task_status", task_status},
                        {"rollout", json::object{{"status", "running"}}},
                        {"gate", nullptr},
                        {"counts", json::object{{"total", 2}}},
                        {"tiers", json::array{}},
                        {"nodes", std::move(nodes)}};
}

}  // namespace

TEST_CASE("live slots: a common grid of flush-interval ticks on the steady clock") {
    using std::chrono::milliseconds;
    const auto t = live_slot_start(1000);
    CHECK(live_slot(t) == 1000);
    CHECK(live_slot(t + milliseconds(1)) == 1000);
    CHECK(live_slot(t + live_flush_interval - std::chrono::nanoseconds(1)) == 1000);
    CHECK(live_slot(t + live_flush_interval) == 1001);
    CHECK(live_slot_start(1001) - t == live_flush_interval);
    CHECK(live_slot(t - milliseconds(1)) == 999);
    // Two moments in the same tick wake at the same next tick (the streams read together).
    CHECK(live_slot_start(live_slot(t + milliseconds(10)) + 1) ==
          live_slot_start(live_slot(t + milliseconds(240)) + 1));
    CHECK(live_slot(std::chrono::steady_clock::time_point{}) == 0);
}

TEST_CASE("sse framing: id, event, one data line per payload line, blank line") {
    CHECK(sse_event(7, "nodes", R"({"a":1})") == "id: 7\nevent: nodes\ndata: {\"a\":1}\n\n");
    CHECK(sse_event(1, "x", "l1\nl2\r\nl3") == "id: 1\nevent: x\ndata: l1\ndata: l2\ndata: l3\n\n");
    CHECK(sse_event(2, "x", "") == "id: 2\nevent: x\ndata: \n\n");
    CHECK(sse_keepalive() == ": keepalive\n\n");
}

TEST_CASE("rollout diff: snapshot first, then only changed nodes, coalesced") {
    RolloutDiff d;
    auto first = d.update(doc_with("pending", "pending", "deploying"));
    REQUIRE(first.size() == 1);
    CHECK(first[0].event == LiveEvent::snapshot);
    CHECK(first[0].data.at("nodes").as_array().size() == 2);

    // Nothing changed: nothing to send.
    CHECK(d.update(doc_with("pending", "pending", "deploying")).empty());

    // a went through several states between two readings: one event, its latest object.
    auto second = d.update(doc_with("deployed", "pending", "deploying"));
    REQUIRE(second.size() == 1);
    CHECK(second[0].event == LiveEvent::nodes);
    const auto& changed = second[0].data.at("nodes").as_array();
    REQUIRE(changed.size() == 1);
    CHECK(changed[0].at("name") == "a");
    CHECK(changed[0].at("state") == "deployed");
    CHECK(second[0].data.contains("counts"));
    CHECK(second[0].data.contains("tiers"));

    // Both nodes and the task status change: one nodes event and one rollout event.
    auto third = d.update(doc_with("deployed", "failed", "deployed"));
    REQUIRE(third.size() == 2);
    CHECK(third[0].event == LiveEvent::nodes);
    CHECK(third[0].data.at("nodes").as_array().size() == 1);
    CHECK(third[1].event == LiveEvent::rollout);
    CHECK(third[1].data.at("task_status") == "deployed");
    CHECK(third[1].data.contains("gate"));
}

TEST_CASE("task list diff: nothing at first, then one task event per changed task") {
    TaskListDiff d;
    json::array tasks{json::object{{"sr_id", "SR-1"}, {"status", "pending_validation"}},
                      json::object{{"sr_id", "SR-2"}, {"status", "deployed"}}};
    CHECK(d.update(tasks).empty());
    CHECK(d.update(tasks).empty());
    tasks[0].as_object()["status"] = "validated";
    tasks.push_back(json::object{{"sr_id", "SR-3"}, {"status", "pending_validation"}});
    auto ev = d.update(tasks);
    REQUIRE(ev.size() == 2);
    CHECK(ev[0].event == LiveEvent::task);
    CHECK(ev[0].data.at("sr_id") == "SR-1");
    CHECK(ev[1].data.at("sr_id") == "SR-3");
}

TEST_CASE("live streams: at most a quarter of the connection slots, at least one, at most 256") {
    using guardia::service::live_streams_allowed;
    CHECK(live_streams_allowed(256) == 64);  // the default max_connections
    CHECK(live_streams_allowed(64) == 16);
    CHECK(live_streams_allowed(3) == 1);
    CHECK(live_streams_allowed(0) == 1);
    CHECK(live_streams_allowed(100000) == 256);
}
