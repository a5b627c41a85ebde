// Crash recovery of a rollout whose process died (kill -9, OOM, power loss): the service runs
// it at start-up, `guardia recover` on demand, and `guardia deploy` before it starts on a
// database that holds one. One implementation for all three, so they cannot drift apart.
//
// Every node the rollout left RUNNING, PENDING (its RUNNING row may have died with the
// process) or RECOVERY_FAILED is inspected with recover_node(): left mid-step under the
// rollout's lock -> restored exactly from its backup (or, before any backup, its staging files
// removed) and unlocked; not locked -> deployed if the new build is live, else unchanged. The
// audit log gets, per node, the outcome of every step the dead process started and never ended
// (STEP_INTERRUPTED: its intent row is there, committed before the step began) and
// NODE_RECOVERED; the rollout ends ABORTED with the reason. A node that cannot be inspected
// (unreachable, gone from the inventory) stays RECOVERY_FAILED and the rollout unfinished:
// the next recovery tries again.
#pragma once

#include "guardia/deploy/inventory.hpp"
#include "guardia/deploy/node_pipeline.hpp"
#include "guardia/store/records.hpp"

#include <boost/asio/awaitable.hpp>

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::deploy {

struct RecoveryInput {
    RecoveryInput() {}
    store::RolloutRecord rollout;
    std::vector<store::NodeResult> results;  // the rollout's node rows
    std::map<std::string, Node> nodes;       // the inventory as it is now, by node name
    std::vector<ArtifactSpec> artifacts;     // what the rollout shipped: names and sha256
    std::vector<store::AuditRow> audit;      // the rollout's audit rows (to close open steps)
    std::string origin;                      // "at start-up", "by guardia recover", ...
};

struct RecoveryReport {
    RecoveryReport() {}
    std::vector<store::NodeResult> nodes;         // the rows written, one per node recovered
    std::map<std::string, std::size_t> counts;    // by status
    std::string reason;                           // the rollout's reason as written
    bool finished = false;  // false: some node could not be inspected; recover again later
};

// Recovers one rollout. `settings` carries the credentials, known hosts, owner and audit
// writer; its sr_id and rollout_id are set from the record. Writes through settings.audit.
boost::asio::awaitable<RecoveryReport> recover_rollout(RecoveryInput input,
                                                       PipelineSettings settings,
                                                       std::size_t max_sessions);

// The steps of `node` that `rows` (one rollout's audit rows, in id order) show started
// (STEP_START) and never ended (no STEP_OK / STEP_FAILED of that step after it), in the order
// they started. Pure.
std::vector<std::string> open_steps(const std::vector<store::AuditRow>& rows,
                                    std::string_view node);

// The NodeResult statuses that recovery must inspect. Pure.
bool needs_recovery(std::string_view node_status) noexcept;

}  // namespace guardia::deploy
