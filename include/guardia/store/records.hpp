// What the store holds, as plain values: audit events, per-node results, rollouts.
//
// Each struct has a user-declared default constructor on purpose: GCC 12 miscompiles a braced
// aggregate temporary passed by value to a coroutine (see guardia/ssh/session.hpp), and these
// travel through coroutines in the deploy and service layers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace guardia::store {

// One audit event: a step starting or ending on a node, or a summary such as DEPLOY_SUCCESS.
struct AuditEvent {
    AuditEvent() {}
    std::int64_t ts_ms = 0;  // Unix time in ms; AuditWriter::record() fills it in when 0
    std::string sr_id;
    std::string rollout_id;
    std::string node;
    std::string step;
    std::string event;
    std::optional<int> exit_code;
    std::optional<std::int64_t> duration_ms;
    // Short human text (an stderr tail, a reason). The writer redacts registered secrets and
    // truncates it; callers still must not put secrets in it.
    std::string detail;
};

// An audit event as stored: `id` grows with insertion order, so it is also the paging cursor.
struct AuditRow : AuditEvent {
    AuditRow() {}
    std::int64_t id = 0;
};

// The latest state of one node in one rollout. An upsert replaces the whole row.
struct NodeResult {
    NodeResult() {}
    std::string rollout_id;  // must name a rollout already written (foreign key)
    std::string node;
    std::string status;  // vocabulary owned by the deploy layer
    std::string step;    // the step reached (or failed)
    std::string error;   // redacted and truncated like AuditEvent::detail
    std::optional<std::int64_t> started_ms;
    std::optional<std::int64_t> finished_ms;
    std::string backup_path;  // remote backup, needed to roll back after a crash
};

// One rollout of one SR. An upsert replaces the whole row.
struct RolloutRecord {
    RolloutRecord() {}
    std::string id;
    std::string sr_id;
    std::string status;
    std::string reason;  // redacted and truncated like AuditEvent::detail
    std::int64_t created_ms = 0;
    std::optional<std::int64_t> finished_ms;  // empty while the rollout is in flight
};

}  // namespace guardia::store
