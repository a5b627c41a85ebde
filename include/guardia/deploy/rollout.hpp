// The rollout: the node pipeline driven across a whole inventory from one event loop
// (docs/ARCHITECTURE.md, the rollout engine).
//
// Tiers run in the configured order. Within a tier nodes start either in lock-step batches
// (a batch must finish before the next starts) or through a sliding window (a node starts as
// soon as another finishes, at most `batch_size` in flight). A safety gate evaluates the
// tier's failure rate after every batch (lock-step), after every finished node once a
// minimum sample has finished (sliding), and always when the tier ends; above the threshold,
// or past the rollout-wide cap of failed nodes, the rollout aborts: no node starts any more,
// nodes in flight finish their pipeline (rollback included), and the result is ABORTED with
// the reason. Global limits bound concurrent SSH sessions and new connections per second;
// each node has a deadline. cancel() stops the rollout: in-flight nodes are cancelled, which
// rolls them back (see deploy_node()), and no lock is left behind.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/deploy/node_pipeline.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::deploy {

enum class WindowMode { sliding, lockstep };
enum class AbortPolicy { keep_deployed, roll_back_all };

struct TierPolicy {
    TierPolicy() {}
    TierPolicy(int tier_number, std::size_t batch, WindowMode window, bool strict)
        : tier(tier_number), batch_size(batch), mode(window), strict_health(strict) {}
    int tier = 2;
    std::size_t batch_size = 50;  // 0: the whole tier at once
    WindowMode mode = WindowMode::sliding;
    bool strict_health = false;
    // Finished nodes of the tier before the sliding-window gate judges; 0: the smaller of
    // the batch size and 20 (so a tier-1 failure stops the rollout at once, while one
    // fast-failing node does not abort a large tier on its own).
    std::size_t min_sample = 0;
    // Between tiers (issue 14): after the tier, its DEPLOYED nodes are probed for `bake` (the
    // HEALTH step's check, non-strict, at each node's interval); a node that turns unhealthy is
    // rolled back from its backup and counts as failed for the gate. `approve`: the rollout
    // then waits for a resume by a principal allowed to approve (role validate in the
    // service, SIGUSR2 in the CLI) before the next tier starts.
    std::chrono::seconds bake{0};
    bool approve = false;
};

struct RolloutConfig {
    RolloutConfig();  // the DESIGN defaults: tier 1 one at a time (strict), 2 by 50, 3 all
    std::vector<TierPolicy> tiers;     // run order; every tier in the inventory must appear
    double failure_threshold = 0.10;   // abort when failed / finished of a tier exceeds it
    std::size_t max_failed_nodes = 0;  // rollout-wide cap on failed nodes; 0: none
    AbortPolicy on_abort = AbortPolicy::keep_deployed;
    std::size_t max_sessions = 200;           // nodes (SSH sessions) in flight at once
    double max_connections_per_second = 100;  // node starts per second; 0: unlimited
    std::chrono::milliseconds node_deadline{std::chrono::minutes(30)};
};

// Checks the configuration against an inventory before anything starts: every message
// names the field ("rollout.tiers[1].batch_size: ...") or the node.
Result<void> validate_rollout(const RolloutConfig& config, const Inventory& inventory);

enum class RolloutStatus { running, succeeded, failed, aborted, cancelled };
std::string_view to_string(RolloutStatus status) noexcept;

// Operator control of a rollout in flight: which request is allowed in which state and what it
// leads to. `stopping`: the rollout aborts, is cancelled or has ended; nothing applies any more.
// Paused: no new node starts, nodes in flight finish their pipeline. Awaiting approval: a tier
// with `approve` ended and the next one starts on a resume by an approver only.
enum class ControlState { running, paused, awaiting_approval, stopping };
enum class ControlRequest { pause, resume, abort };
enum class ControlRefusal { none, already_paused, not_paused, awaiting_approval, approver_required,
                            operator_required, stopping };
struct ControlDecision {
    ControlDecision() {}
    bool allowed = false;
    ControlState next = ControlState::running;  // the state it leads to (allowed only)
    ControlRefusal refusal = ControlRefusal::none;
};
// Pure. `may_approve`: the requester may open a tier gate (a resume while awaiting approval);
// `may_operate`: the requester may pause, resume a pause and abort (an approver who may not
// operate can only open a tier gate).
ControlDecision decide_control(ControlState from, ControlRequest request, bool may_approve,
                               bool may_operate = true) noexcept;
std::string_view to_string(ControlState state) noexcept;     // "RUNNING", "PAUSED", ...
std::string_view to_string(ControlRequest request) noexcept;  // "pause", "resume", "abort"
std::string_view to_string(ControlRefusal refusal) noexcept;  // "already_paused", ...
// The rollouts row's status while the rollout is in flight: RUNNING, PAUSED, AWAITING_APPROVAL.
std::string_view stored_status(RolloutStatus status, ControlState control) noexcept;

// Where a node stands in the rollout; `report` is meaningful once state is done.
enum class NodeState { pending, running, done, skipped };

struct NodeProgress {
    NodeProgress() {}
    Node node;  // a copy: the report outlives the Rollout
    NodeState state = NodeState::pending;
    std::string step;  // the step in progress (running) or where it failed
    NodeReport report;
    std::optional<NodeReport> abort_rollback;  // set when roll_back_all undid this node
};

struct TierProgress {
    TierProgress() {}
    int tier = 0;
    std::size_t total = 0, started = 0, finished = 0, failed = 0, in_flight = 0, skipped = 0;
    std::chrono::steady_clock::time_point started_at{}, finished_at{};
    bool active = false, complete = false;
    bool baking = false;             // its bake runs (TierPolicy::bake)
    std::size_t bake_failed = 0;     // nodes that turned unhealthy during the bake
};

struct RolloutReport {
    RolloutReport() {}
    std::string rollout_id;
    std::string sr_id;
    RolloutStatus status = RolloutStatus::running;
    std::string reason;  // why it aborted / failed / was cancelled
    bool dry_run = false;
    std::vector<NodeProgress> nodes;  // inventory order
    std::vector<TierProgress> tiers;  // run order
    std::chrono::milliseconds duration{0};
    std::size_t deployed = 0, failed = 0, skipped = 0;
    // Stopped because the audit log could not be written (see PipelineSettings::audit): no
    // node started after that, and no forward step began without its intent row.
    bool audit_failed = false;
    // Operator control (pause / resume / abort, tier approval): the live state, who set it,
    // and the tier whose approval is awaited (0: none).
    ControlState control = ControlState::running;
    std::string control_by;
    int awaiting_tier = 0;
};

// Receives live progress on the loop's thread. Keep the calls cheap.
class RolloutObserver {
  public:
    virtual ~RolloutObserver() = default;
    virtual void tier_started(const TierProgress&) {}
    virtual void node_started(const NodeProgress&) {}
    virtual void node_step(const NodeProgress&) {}
    virtual void node_finished(const NodeProgress&, const TierProgress&) {}
    virtual void tier_finished(const TierProgress&) {}
    virtual void gate_tripped(const TierProgress&, const std::string& /*reason*/) {}
    // An operator request took effect (pause, resume, abort), or a tier gate opened (resume
    // by an approver): `report.control` is the new state.
    virtual void control_changed(const RolloutReport&, ControlRequest, const std::string& /*by*/) {}
    // A tier with `approve` ended (after its bake): the rollout waits for an approver.
    virtual void tier_gate(const TierProgress&) {}
};

class Rollout {
  public:
    // `settings` carries sr_id, rollout_id, owner, credentials, known hosts, audit and the
    // step deadlines; the rollout sets strict_health per tier and on_step.
    Rollout(boost::asio::any_io_executor executor, Inventory inventory,
            std::vector<ArtifactSpec> artifacts, RolloutConfig config, PipelineSettings settings);
    ~Rollout();
    Rollout(const Rollout&) = delete;
    Rollout& operator=(const Rollout&) = delete;

    void set_observer(RolloutObserver* observer);  // optional, must outlive run()
    void set_dry_run(bool on);  // pre-checks only (precheck_node), no gate, nothing changes

    // Runs to the end. Call once. Writes the rollout row and node results through the
    // settings' audit writer, if any, plus ROLLOUT_* / TIER_* / GATE audit events.
    boost::asio::awaitable<RolloutReport> run();

    // Stops the rollout (from the loop's thread, e.g. a signal handler): no node starts any
    // more; nodes in flight are cancelled and clean up after themselves. Idempotent.
    void cancel(std::string reason);

    // Drains the rollout (a graceful service stop): no node starts any more; nodes in flight
    // finish their pipeline, deployed or rolled back; the result is ABORTED with `reason`. The
    // abort policy roll_back_all does not apply: stopping the service is not a verdict on the
    // release. Idempotent; a later cancel() still cuts the drain short.
    void stop_starting(std::string reason);

    // Operator control, on the loop's thread (decide_control() judges; a refused request
    // changes nothing). Each one that takes effect is audited naming `principal`
    // (ROLLOUT_PAUSED, ROLLOUT_RESUMED / TIER_APPROVED, ROLLOUT_ABORT_REQUESTED), written into
    // the rollouts row's status and told to the observer.
    //  pause: no node starts any more until resume; nodes in flight finish their pipeline.
    //  resume: continues a paused rollout, or opens a tier gate (`may_approve` required).
    //  abort: like the safety gate's abort (no node starts, nodes in flight finish, ABORTED
    //    with a reason naming the principal); `on_abort` overrides the configured policy
    //    (roll_back_all rolls back every node the rollout deployed).
    ControlDecision pause(const std::string& principal);
    ControlDecision resume(const std::string& principal, bool may_approve = true,
                           bool may_operate = true);
    ControlDecision abort(std::optional<AbortPolicy> on_abort, const std::string& principal);
    ControlState control_state() const;

    // The live state, for progress display and the service's status endpoint.
    const RolloutReport& progress() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace guardia::deploy
