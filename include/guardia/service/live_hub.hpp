// The console's live updates (Server-Sent Events): what changed between two readings of a
// rollout document (GET /api/deploy/{sr}) or of the task list, and the SSE framing. Pure
// state and logic, no I/O: the stream routes (deploy_service.cpp) read the documents on a
// fixed cadence (at most every 250 ms) and ask these to turn the difference into events, so
// that any number of node changes between two readings becomes ONE `nodes` event holding only
// the nodes that changed (a slow viewer just gets a bigger event, never a queue).
#pragma once

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::service {

// How often a stream looks for changes (the coalescing window), and its keepalive period.
inline constexpr std::chrono::milliseconds live_flush_interval{250};
inline constexpr std::chrono::milliseconds live_keepalive_interval{15000};
// The streams of one rollout read its document together: every stream wakes on the same
// grid of live_flush_interval ticks of the steady clock, and one reading per tick serves them
// all (deploy_service.cpp), so V viewers cost about what one does. live_slot(t) is the index
// of the tick at or before t; live_slot_start(s) the moment tick s begins.
std::uint64_t live_slot(std::chrono::steady_clock::time_point t);
std::chrono::steady_clock::time_point live_slot_start(std::uint64_t slot);

// Open streams: in all, and per principal (beyond: 429 too_many_streams). A stream holds a
// connection slot that is never evicted, so streams may take at most a quarter of the
// service's connection slots: the API stays reachable for pause, abort and the PM's verdict.
inline constexpr std::size_t max_live_streams = 256;
inline constexpr std::size_t max_live_streams_per_principal = 16;
inline constexpr std::size_t live_streams_allowed(std::size_t max_connections) {
    const std::size_t quarter = max_connections / 4;
    return quarter == 0 ? 1 : (quarter < max_live_streams ? quarter : max_live_streams);
}

// One SSE event: "id: <id>\nevent: <event>\ndata: <line>\n" per line of `data`, then a blank
// line. A '\r' in data is dropped (SSE treats it as a line end; JSON never needs it raw).
std::string sse_event(std::uint64_t id, std::string_view event, std::string_view data);
// The keepalive comment ": keepalive\n\n".
std::string sse_keepalive();

enum class LiveEvent { snapshot, nodes, rollout, task };
std::string_view to_string(LiveEvent e);

struct LiveMessage {
    LiveMessage() {}
    LiveMessage(LiveEvent e, boost::json::object d) : event(e), data(std::move(d)) {}
    LiveEvent event = LiveEvent::nodes;
    boost::json::object data;
};

// The last rollout document a viewer was sent; update() gives the events for the next one:
//  - first call: one `snapshot` with the whole document;
//  - then `nodes` {"nodes": [changed node objects], "counts", "tiers"} when any node object
//    (matched by "name") differs, and `rollout` {"task_status", "rollout", "gate"} when one
//    of those three differs. Nothing when nothing changed.
class RolloutDiff {
  public:
    std::vector<LiveMessage> update(const boost::json::object& doc);

  private:
    bool first_ = true;
    std::map<std::string, boost::json::value> nodes_;  // by name
    boost::json::value task_status_, rollout_, gate_;
};

// The task list a viewer was sent (tasks by sr_id); update() gives one `task` event per task
// whose object changed (status, updated_ms, ...) or appeared. The first call only records.
class TaskListDiff {
  public:
    std::vector<LiveMessage> update(const boost::json::array& tasks);

  private:
    bool first_ = true;
    std::map<std::string, boost::json::value> tasks_;  // by sr_id
};

}  // namespace guardia::service
