// Internal to the coordinator (coordinator.cpp, recovery.cpp): its state and helpers.
#pragma once

#include "guardia/core/local_io.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/deploy/node_pipeline.hpp"
#include "guardia/deploy/rollout.hpp"
#include "guardia/service/coordinator.hpp"
#include "guardia/service/notifier.hpp"
#include "guardia/service/task_status.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <boost/asio/steady_timer.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace guardia::service {

using Clock = std::chrono::steady_clock;

std::int64_t now_ms();
std::string lower(std::string s);

// Records how long each step of each node took, from the rollout's live progress: a step ends
// when the node's next step starts or the node finishes.
class StepTimer : public deploy::RolloutObserver {
  public:
    explicit StepTimer(std::function<void(const std::string&, double)> sink)
        : sink_(std::move(sink)) {}
    void node_step(const deploy::NodeProgress& p) override { next(p.node.name, p.step); }
    void node_finished(const deploy::NodeProgress& p, const deploy::TierProgress&) override {
        next(p.node.name, {});
    }

  private:
    void next(const std::string& node, const std::string& step);
    std::function<void(const std::string&, double)> sink_;
    std::map<std::string, std::pair<std::string, Clock::time_point>> open_;
};

// A rollout's observer in the service: step timings, plus the tier gate's webhook.
class WorkObserver : public StepTimer {
  public:
    WorkObserver(std::function<void(const std::string&, double)> sink,
                 std::function<void(const deploy::TierProgress&)> on_gate)
        : StepTimer(std::move(sink)), on_gate_(std::move(on_gate)) {}
    void tier_gate(const deploy::TierProgress& t) override {
        if (on_gate_) on_gate_(t);
    }

    // The tier_finished and gate_tripped webhooks: (event, tier, reason; empty for a tier).
    using TierNotice =
        std::function<void(std::string_view, const deploy::TierProgress&, const std::string&)>;
    void set_tier_notice(TierNotice notice) { tier_notice_ = std::move(notice); }
    void tier_finished(const deploy::TierProgress& t) override {
        if (tier_notice_) tier_notice_(event_tier_finished, t, std::string());
    }
    void gate_tripped(const deploy::TierProgress& t, const std::string& reason) override {
        if (tier_notice_) tier_notice_(event_gate_tripped, t, reason);
    }

  private:
    std::function<void(const deploy::TierProgress&)> on_gate_;
    TierNotice tier_notice_;
};

enum class WorkKind { deploy, verdict, rollback };

struct Coordinator::Work {
    explicit Work(boost::asio::any_io_executor ex) : done_signal(ex) {
        done_signal.expires_at(Clock::time_point::max());
    }
    WorkKind kind = WorkKind::deploy;
    store::TaskRecord task;
    std::string principal;
    std::string rollout_id;
    std::int64_t created_ms = 0;
    std::unique_ptr<deploy::Rollout> rollout;
    std::unique_ptr<WorkObserver> step_timer;
    bool resumed = false;  // a PM rollback the previous process left unfinished
    bool operator_rollback = false;  // rollback kind: asked by an operator, not a PM's rejection
    // The work's final status is recorded (and readable through the API) but the work still
    // holds the SR for its last steps (webhook, answer): a request that read that status waits
    // for the end rather than being refused (settle()).
    bool finishing = false;
    bool done = false;
    boost::json::object final_body;  // the ?wait=true answer
    boost::asio::steady_timer done_signal;
};

struct Coordinator::Impl : std::enable_shared_from_this<Coordinator::Impl> {
    Impl(boost::asio::any_io_executor ex, DeployServiceDeps d);

    boost::asio::any_io_executor executor;
    DeployServiceDeps deps;
    std::shared_ptr<spdlog::logger> logger;
    store::Database reader;  // used on the local I/O pool only, one call at a time
    std::mutex reader_mu;
    std::map<std::string, std::shared_ptr<Work>> active;
    // Node claims by name, and the same claims by target (host, SSH port, deploy path): a
    // second inventory name for the same directory on the same server is the same node.
    ClaimTable claims;
    ClaimTable target_claims;
    boost::asio::steady_timer changed;  // cancelled whenever a Work ends: drain() waits on it
    bool stopping = false;
    std::uint64_t rollout_seq = 0;
    // Staging in progress per SR, and a count of stagings started: a trigger refuses while one
    // runs, and notices one that began and ended while it was reading the artifact list.
    std::map<std::string, int> staging_now;
    std::map<std::string, std::uint64_t> staging_started;
    std::uint64_t staging_seq = 0;
    struct IdemAnswer {
        std::string request;
        int status = 0;
        std::string body;
    };
    std::map<std::string, IdemAnswer> idempotent;  // answers given by this process
    Coordinator::Stats stats;

    // --- store ------------------------------------------------------------------------------
    template <class Fn>
    boost::asio::awaitable<std::invoke_result_t<Fn&, store::Database&>> read(Fn fn);
    boost::asio::awaitable<Result<void>> durable();
    void audit_task(const store::TaskRecord& t, const std::string& principal, std::string event,
                    std::string detail);
    // Applies `event` to the task (the transition table decides), writes it and waits until it
    // is durable: only then is it reported. A transition the table refuses is a bug (throws).
    boost::asio::awaitable<Result<void>> advance(store::TaskRecord& t, TaskEvent event,
                                                 const std::string& reason,
                                                 const std::string& detail,
                                                 const std::string& principal);
    boost::asio::awaitable<void> notify(std::string_view event, const store::TaskRecord& t,
                                        boost::json::object extra);
    // The same, without waiting (from a rollout observer's callback on the loop).
    void notify_later(std::string_view event, const store::TaskRecord& t,
                      boost::json::object extra);
    // tier_finished / gate_tripped (the tier's counts, the gate's reason), from the observer.
    void notify_tier(std::string_view event, const store::TaskRecord& t,
                     const deploy::TierProgress& tier, const std::string& reason);
    // rollout_started: the node count and the tiers that have nodes; before the first node.
    boost::asio::awaitable<void> notify_started(std::shared_ptr<Work> w);

    // --- inventory, artifacts, claims ----------------------------------------------------------
    Result<deploy::Inventory> inventory_from(const std::vector<store::InventoryNodeRecord>& rows,
                                             const std::string& what) const;
    std::map<std::string, deploy::Node> nodes_by_name(
        const std::vector<store::InventoryNodeRecord>& rows) const;
    deploy::PipelineSettings pipeline_settings(const std::string& sr_id,
                                               const std::string& rollout_id) const;
    // Every node any rollout of the SR deployed and no PM rollback undid yet; nullopt when the
    // store cannot be read.
    boost::asio::awaitable<std::optional<std::map<std::string, DeployedNode>>> deployed_nodes(
        const std::string& sr_id);
    boost::asio::awaitable<std::optional<std::vector<deploy::Node>>> claimed_nodes(
        const store::TaskRecord& t);
    // The task of `sr_id` while no work of that SR runs; else not_found, conflict or the store's
    // error.
    boost::asio::awaitable<ServiceResult<store::TaskRecord>> idle_task(std::string sr_id);
    // The artifact set the SR's last trigger approved (task payload), else what is staged.
    boost::asio::awaitable<ServiceResult<std::vector<deploy::ArtifactSpec>>> approved_specs(
        const store::TaskRecord& task);

    void hold(const std::string& sr_id, ClaimKind kind, const std::vector<deploy::Node>& nodes);
    void hold_again(const std::string& sr_id, ClaimKind kind);  // same nodes, new kind
    void release_claims(const std::string& sr_id);
    // Other SRs' claims on `nodes`, by name or by target; nodes named as the caller names them.
    std::vector<ClaimTable::Conflict> claim_conflicts(const std::string& sr_id,
                                                      const std::vector<deploy::Node>& nodes) const;

    // --- work ---------------------------------------------------------------------------------
    boost::asio::awaitable<void> run_bounded(
        std::size_t n, std::size_t limit,
        const std::function<boost::asio::awaitable<void>(std::size_t)>& fn);
    void end_work(const std::string& sr_id, const std::shared_ptr<Work>& w);
    static boost::asio::awaitable<void> wait_done(std::shared_ptr<Work> w);
    // Waits while the SR's work is only finishing (its final status is already recorded), so
    // that a client acting on that status is not refused with a conflict.
    boost::asio::awaitable<void> settle(const std::string& sr_id);
    boost::asio::awaitable<void> run_deploy(std::shared_ptr<Work> w);
    boost::asio::awaitable<void> run_pm_rollback(std::shared_ptr<Work> w);
    // verify_live: check each node still runs the approved release before restoring it (off
    // when a rollback interrupted by a crash is resumed: see pm_rollback_nodes).
    // check_marker: each node's release marker must also name this SR (operator rollbacks).
    boost::asio::awaitable<std::pair<std::size_t, std::size_t>> pm_rollback_nodes(
        const store::TaskRecord& task, bool verify_live, bool check_marker = false);
    boost::asio::awaitable<void> recover_rollout(const store::RolloutRecord& r);
    boost::asio::awaitable<std::size_t> recover();
    boost::asio::awaitable<void> drain(std::chrono::milliseconds grace);
    void node_outcome_metric(std::string_view outcome) {
        ++stats.nodes_by_outcome[std::string(outcome)];
    }
};

template <class Fn>
boost::asio::awaitable<std::invoke_result_t<Fn&, store::Database&>> Coordinator::Impl::read(Fn fn) {
    // Not a coroutine itself, like run_blocking(): `fn` may own what it captures.
    return run_blocking([this, fn = std::move(fn)]() mutable {
        std::lock_guard lock(reader_mu);
        return fn(reader);
    });
}

}  // namespace guardia::service
