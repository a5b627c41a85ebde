// What happens to one node during a rollout, over one SSH session:
//   connect -> pre-check -> lock -> backup -> transfer -> (shutdown -> activate -> startup)
//   -> health, and on failure after the live files changed: exact rollback from the backup.
// The lock is released in every outcome. The node's shutdown/startup commands (operator text)
// pass the sanitizer when validated and again when sent; Guardia's own scripts are not
// sanitized, and every value interpolated into them is shell-quoted. Every step is audited
// (start and end) and has a deadline.
#pragma once

#include "guardia/core/artifact_bytes.hpp"
#include "guardia/core/error.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/ssh/known_hosts.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace spdlog {
class logger;
}

namespace guardia::store {
class AuditWriter;
}

namespace guardia::http {
struct HealthCheck;
}

namespace guardia::deploy {

class CredentialStore;

// An artifact as the rollout ships it: hashed once, sent to every node.
struct ArtifactSpec {
    ArtifactSpec() {}
    std::string local_path;
    std::string file_name;  // name inside the node's deploy_path
    std::string sha256;
    std::string md5;  // recorded in the audit log, as the original engine did
    std::uint64_t size = 0;
    unsigned mode = 0644;  // permission bits of the local file, given to the deployed file
    // The bytes themselves, read once for the whole rollout: every node's upload streams from
    // this one shared buffer. Null for an artifact too large to hold (each upload then reads
    // local_path, verified remotely against sha256 all the same).
    std::shared_ptr<const ArtifactBytes> bytes;
};

// Artifacts up to this size are held in memory by describe_artifact. Beyond it, the CPU of
// encrypting the artifact for each node dwarfs re-reading it from the page cache, while
// holding it would cost its whole size in memory.
inline constexpr std::uint64_t kArtifactInMemoryLimit = 64ull << 20;

// Reads and hashes a local artifact, keeping its bytes if it is no larger than
// `keep_in_memory_up_to` (blocking: run it off the loop, e.g. run_blocking()).
Result<ArtifactSpec> describe_artifact(const std::string& path,
                                       std::uint64_t keep_in_memory_up_to = kArtifactInMemoryLimit);

struct PipelineSettings {
    PipelineSettings() {}
    std::string sr_id;
    std::string rollout_id;
    std::string owner;  // who holds the lock: "guardia@<host>:<pid>"

    int disk_threshold_percent = 90;
    int keep_backups = 3;
    int strict_consecutive = 3;  // consecutive 200s a strict node needs
    // Strict health checks (strict_consecutive 200s in a row) for this node. Unset: strict
    // for tier 1 only. The rollout sets it from its tier policy.
    std::optional<bool> strict_health;
    std::chrono::seconds stale_lock_age{3600};

    std::chrono::milliseconds connect_timeout{10000};
    std::chrono::milliseconds command_timeout{60000};  // pre-check, lock, activate, unlock
    std::chrono::milliseconds backup_timeout{300000};
    std::chrono::milliseconds transfer_timeout{1800000};
    std::chrono::milliseconds shutdown_timeout{120000};
    std::chrono::milliseconds startup_timeout{120000};

    std::shared_ptr<ssh::KnownHosts> known_hosts;
    ssh::HostKeyPolicy host_key_policy = ssh::HostKeyPolicy::strict;
    std::shared_ptr<CredentialStore> credentials;
    store::AuditWriter* audit = nullptr;     // optional
    std::shared_ptr<spdlog::logger> logger;  // optional
    // Called on the loop as each step starts (node name, step name): live progress.
    std::function<void(const std::string& node, const std::string& step)> on_step;
    // Called on the loop as soon as the node's backup exists (node name, backup path), before
    // any live file changes: the rollout records it at once, so that a restarted service can
    // restore a node the previous process left mid-step.
    std::function<void(const std::string& node, const std::string& backup_path)> on_backup;
    // LOCK treats a lock on the node whose owner file names this rollout_id as held already.
    // Only for work that continues a rollout whose process died (crash recovery, a PM rollback
    // re-run after a restart): the lock is that rollout's, not another one's.
    bool reclaim_own_lock = false;
    // Asked (on the loop) before deploy_node starts new work of its own after its pipeline
    // ended, i.e. recovering a dead owner's lock and deploying again: true stops it there.
    // The rollout sets it (the rollout is stopping, or this node's deadline passed).
    std::function<bool(const std::string& node)> should_stop;
};

enum class NodeOutcome {
    deployed,          // new version live and healthy
    failed_unchanged,  // failed before any live file changed; the node is as it was
    rolled_back,       // failed after; restored from the backup, healthy again (ROLLBACK_OK)
    rollback_failed,   // failed after, and the rollback failed too (ROLLBACK_FAILED)
};
std::string_view to_string(NodeOutcome outcome) noexcept;

struct NodeReport {
    NodeReport() {}
    std::string node;
    NodeOutcome outcome = NodeOutcome::failed_unchanged;
    std::string failed_step;     // empty when deployed
    Error error;                 // why it failed (code + message naming node and step)
    std::string rollback_error;  // why the rollback failed, if it did
    std::string backup_path;     // the backup taken for this rollout, if any
    bool lock_released = false;
    std::chrono::milliseconds duration{0};
    // LOCK found the node locked by someone else: the owner and rollout its owner file names.
    std::string busy_lock_owner, busy_lock_rollout;
    // deploy_node found the lock of a dead guardia process on this host, recovered the node
    // for that rollout (restored from its backup, lock released) and then deployed: what the
    // recovery did, for the report. Empty otherwise.
    std::string stale_lock_recovery;
};

// The HEALTH step's check of `node` (its health spec: port, path, timeout, interval), needing
// `required_consecutive` 200s in a row. The bake between tiers probes with the same check.
http::HealthCheck health_check_for(const Node& node, int required_consecutive);

// Runs the whole pipeline for one node. Never throws for node failures: they are the report.
//
// Cancellation (Asio, e.g. a rollout cancelled by SIGINT or a node over its deadline) stops
// the forward steps: the step in progress fails with errc::cancelled, then the node is
// cleaned up exactly as after any other failure (rollback if live files changed, staged
// files discarded, lock released). The clean-up ignores further cancellation: it is bounded
// by its steps' deadlines instead.
boost::asio::awaitable<NodeReport> deploy_node(const Node& node,
                                               const std::vector<ArtifactSpec>& artifacts,
                                               const PipelineSettings& settings);

// Read-only check of a node (for `--dry-run`): VALIDATE, CONNECT (host key verified), and
// the PRECHECK command (deploy path, scripts, disk usage), plus whether another rollout holds
// its lock. Nothing on the node changes. Outcome: deployed = "would deploy", otherwise
// failed_unchanged with the reason.
boost::asio::awaitable<NodeReport> precheck_node(const Node& node,
                                                 const std::vector<ArtifactSpec>& artifacts,
                                                 const PipelineSettings& settings);

// Restores a node that an earlier (successful) deploy of this rollout changed: CONNECT,
// LOCK, ROLLBACK from `backup_path` (shutdown, exact restore, startup, health), UNLOCK.
// Used when an aborted rollout's policy is to roll every deployed node back, and when a PM
// rejects a release. Outcome: rolled_back or rollback_failed (failed_unchanged when the node
// could not be reached or locked: it was not touched).
boost::asio::awaitable<NodeReport> rollback_node(const Node& node, const std::string& backup_path,
                                                 const PipelineSettings& settings);
// The same, refusing to touch a node that no longer runs the release being undone: after LOCK,
// VERIFY_LIVE hashes each of `expected_live` in the deploy path; any file missing or with
// another sha256 fails the node there (failed_unchanged, errc::precheck_failed, the message
// naming each file) and nothing is restored. Empty `expected_live`: no check (as above).
boost::asio::awaitable<NodeReport> rollback_node(const Node& node, const std::string& backup_path,
                                                 const PipelineSettings& settings,
                                                 const std::vector<ArtifactSpec>& expected_live);

// The safety steps: the rollback and its parts, discarding staged files, releasing the lock.
// They run even when the audit log cannot be written (their rows stay queued), while every
// other remote step starts only once its intent row is committed (errc::audit_unavailable
// otherwise: the node is then cleaned up by these steps). Pure.
bool step_runs_without_audit(std::string_view step) noexcept;

// The artifacts of `artifacts` whose "SHA <name> <sha256>" line in `out` (the remote hash
// listing of the deploy path) is missing or differs, each as "<name> is sha256 <x> (expected
// <y>)" or "<name> is missing (expected <y>)". Pure; exposed for its unit test.
std::vector<std::string> live_mismatches(std::string_view out,
                                         const std::vector<ArtifactSpec>& artifacts);

// Whether a deploy lock's owner file (lines "key=value", each ended by a newline) names
// `rollout_id`: a complete line "rollout=<rollout_id>", exactly. Pure; decides whether UNLOCK
// may remove the lock (never another rollout's).
bool lock_owned_by(std::string_view owner_file, std::string_view rollout_id);

// Crash recovery of one node that a rollout (settings.rollout_id) left RUNNING when its process
// died. CONNECT, then RECOVER_INSPECT reads the node's lock and the deployed files' sha256:
//  - the lock names this rollout: the node was left mid-step. With a backup (named in the lock's
//    owner file, else `known_backup_path` from the store) it is restored exactly (ROLLBACK:
//    shutdown, restore, startup, health) -> rolled_back / rollback_failed; without one it had
//    not changed yet: staging files are removed -> failed_unchanged. The lock is released.
//  - no lock of this rollout: the node was not mid-step. If every artifact's sha256 matches
//    what is deployed -> deployed (it finished before the crash), else failed_unchanged.
// A node that cannot be reached stays as it is: failed_unchanged with the reason, lock left.
boost::asio::awaitable<NodeReport> recover_node(const Node& node,
                                                const std::vector<ArtifactSpec>& artifacts,
                                                const std::string& known_backup_path,
                                                const PipelineSettings& settings);

}  // namespace guardia::deploy
