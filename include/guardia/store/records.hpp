// What the store holds, as plain values: audit events, per-node results, rollouts, and the
// service's tasks, inventory, staged artifacts, webhook outbox and idempotency keys.
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
    // Who asked, for an action taken through the API: the authenticated client's name (e.g.
    // "ci-approvals"). Empty for everything else (engine steps, the CLI). Covered by the
    // audit chain's hash when not empty.
    std::string principal;
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

// A node's row in one rollout, with the SR that rollout belonged to.
struct NodeHistoryRow {
    NodeHistoryRow() {}
    std::string sr_id;
    std::int64_t rollout_created_ms = 0;
    NodeResult result;
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
    // The process running it, "guardia@<host>:<pid>" (deploy/owner.hpp): crash recovery
    // leaves alone a rollout whose process still lives. Empty in rows from before schema 6.
    std::string owner;
};

// A change request (SR) as the service tracks it. Status vocabulary is owned by the service
// layer (CREATED, DEPLOYING, PENDING_PM_VALIDATION, ...). An upsert replaces the whole row.
struct TaskRecord {
    TaskRecord() {}
    std::string sr_id;
    std::string status;
    std::string requester;
    std::string approver;  // who triggered the deployment
    std::string inst_id;   // with system_name: which inventory nodes the task deploys to
    std::string system_name;
    std::string rollout_id;  // the latest rollout of this task; empty before the first
    std::string reason;      // why it failed / what the PM said
    std::int64_t created_ms = 0;
    std::int64_t updated_ms = 0;
    std::string payload = "{}";  // JSON object: free-form fields kept for the approval system
};

// One node of the service's inventory: `payload` is the node's inventory JSON object.
struct InventoryNodeRecord {
    InventoryNodeRecord() {}
    std::string name;
    std::string inst_id;
    std::string system_name;
    std::string payload;
};

// An artifact staged for an SR: a file on the deploy host, verified against sha256 when
// staged. (sr_id, name) is unique; an upsert replaces the row.
struct ArtifactRecord {
    ArtifactRecord() {}
    std::string sr_id;
    std::string name;
    std::string path;
    std::string sha256;
    std::int64_t size = 0;
    std::int64_t created_ms = 0;
};

// One webhook delivery, rendered when queued so that a restart delivers exactly what was
// meant. `id` is also sent as the X-Guardia-Delivery header: receivers can de-duplicate.
struct OutboxRecord {
    OutboxRecord() {}
    std::string id;
    std::string event;
    std::string sr_id;
    std::string url;
    std::string headers = "{}";  // JSON object of extra headers
    std::string body;
    std::int64_t attempts = 0;
    std::int64_t next_attempt_ms = 0;
    std::int64_t created_ms = 0;
    std::optional<std::int64_t> delivered_ms;
    std::optional<std::int64_t> gave_up_ms;  // max attempts reached: kept, never retried
    std::string last_error;
};

// The answer given to a request carrying an Idempotency-Key, replayed for a retry.
struct IdempotencyRecord {
    IdempotencyRecord() {}
    std::string key;
    std::string
        request;  // what the key was used for (method, path, sr_id): a reuse elsewhere is refused
    int status = 0;
    std::string body;
    std::int64_t created_ms = 0;
};

}  // namespace guardia::store
