#include "guardia/deploy/rollout.hpp"

#include "guardia/deploy/release_marker.hpp"
#include "guardia/http/health_probe.hpp"
#include "guardia/store/audit_writer.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <unordered_map>

namespace guardia::deploy {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

std::string_view to_string(RolloutStatus status) noexcept {
    switch (status) {
        case RolloutStatus::running:
            return "RUNNING";
        case RolloutStatus::succeeded:
            return "SUCCEEDED";
        case RolloutStatus::failed:
            return "FAILED";
        case RolloutStatus::aborted:
            return "ABORTED";
        case RolloutStatus::cancelled:
            return "CANCELLED";
    }
    return "UNKNOWN";
}

std::string_view to_string(ControlState state) noexcept {
    switch (state) {
        case ControlState::running:
            return "RUNNING";
        case ControlState::paused:
            return "PAUSED";
        case ControlState::awaiting_approval:
            return "AWAITING_APPROVAL";
        case ControlState::stopping:
            return "STOPPING";
    }
    return "UNKNOWN";
}

std::string_view to_string(ControlRequest request) noexcept {
    switch (request) {
        case ControlRequest::pause:
            return "pause";
        case ControlRequest::resume:
            return "resume";
        case ControlRequest::abort:
            return "abort";
    }
    return "unknown";
}

std::string_view to_string(ControlRefusal refusal) noexcept {
    switch (refusal) {
        case ControlRefusal::none:
            return "none";
        case ControlRefusal::already_paused:
            return "already_paused";
        case ControlRefusal::not_paused:
            return "not_paused";
        case ControlRefusal::awaiting_approval:
            return "awaiting_approval";
        case ControlRefusal::approver_required:
            return "approver_required";
        case ControlRefusal::operator_required:
            return "operator_required";
        case ControlRefusal::stopping:
            return "rollout_stopping";
    }
    return "unknown";
}

ControlDecision decide_control(ControlState from, ControlRequest request, bool may_approve,
                               bool may_operate) noexcept {
    ControlDecision d;
    auto to = [&d](ControlState next) {
        d.allowed = true;
        d.next = next;
        return d;
    };
    auto refuse = [&d](ControlRefusal why) {
        d.refusal = why;
        return d;
    };
    if (from == ControlState::stopping) return refuse(ControlRefusal::stopping);
    const bool opens_gate =
        from == ControlState::awaiting_approval && request == ControlRequest::resume;
    if (!may_operate && !opens_gate) return refuse(ControlRefusal::operator_required);
    if (request == ControlRequest::abort) return to(ControlState::stopping);
    switch (from) {
        case ControlState::running:
            return request == ControlRequest::pause ? to(ControlState::paused)
                                                    : refuse(ControlRefusal::not_paused);
        case ControlState::paused:
            return request == ControlRequest::resume ? to(ControlState::running)
                                                     : refuse(ControlRefusal::already_paused);
        case ControlState::awaiting_approval:
            if (request == ControlRequest::pause) return refuse(ControlRefusal::awaiting_approval);
            return may_approve ? to(ControlState::running)
                               : refuse(ControlRefusal::approver_required);
        case ControlState::stopping:
            break;
    }
    return refuse(ControlRefusal::stopping);
}

std::string_view stored_status(RolloutStatus status, ControlState control) noexcept {
    if (status != RolloutStatus::running) return to_string(status);
    if (control == ControlState::paused || control == ControlState::awaiting_approval)
        return to_string(control);
    return to_string(status);
}

Result<void> validate_rollout(const RolloutConfig& config, const Inventory& inventory) {
    auto bad = [](const std::string& field, const std::string& what) {
        return Error(errc::invalid_argument, "rollout." + field + ": " + what);
    };
    if (config.tiers.empty()) return bad("tiers", "at least one tier is needed");
    std::set<int> seen;
    for (std::size_t i = 0; i < config.tiers.size(); ++i) {
        const auto& t = config.tiers[i];
        const std::string at = "tiers[" + std::to_string(i) + "]";
        if (t.tier < 1 || t.tier > 99) return bad(at + ".tier", "must be between 1 and 99");
        if (!seen.insert(t.tier).second)
            return bad(at + ".tier", "tier " + std::to_string(t.tier) + " is listed twice");
    }
    if (!(config.failure_threshold >= 0.0 && config.failure_threshold <= 1.0))
        return bad("failure_threshold_percent", "must be between 0 and 100");
    if (config.max_sessions == 0) return bad("max_sessions", "must be at least 1");
    if (!(config.max_connections_per_second >= 0.0) ||
        std::isinf(config.max_connections_per_second))
        return bad("max_connections_per_second", "must be a finite number >= 0 (0: unlimited)");
    if (config.node_deadline.count() <= 0) return bad("node_deadline_s", "must be positive");
    for (const auto& n : inventory.nodes)
        if (!seen.count(n.tier))
            return Error(errc::invalid_argument,
                         "node '" + n.name + "': field 'tier': tier " + std::to_string(n.tier) +
                             " is not in the rollout configuration (rollout.tiers)");
    // The bake probes from the deploy host; a command check needs the node's SSH session,
    // which a deployed node no longer holds while its tier bakes.
    for (std::size_t i = 0; i < config.tiers.size(); ++i) {
        if (config.tiers[i].bake.count() <= 0) continue;
        for (const auto& n : inventory.nodes)
            if (n.tier == config.tiers[i].tier && n.health.type == http::ProbeKind::command)
                return bad("tiers[" + std::to_string(i) + "].bake_s",
                           "node '" + n.name +
                               "' has a command health check, which the bake cannot probe "
                               "(use http, https or tcp for nodes of a baking tier)");
    }
    return {};
}

namespace {

std::int64_t unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string percent(double fraction) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f %%", 100.0 * fraction);
    return buf;
}

}  // namespace

struct Rollout::Impl {
    // One node's slot in the rollout. Its timer and signal live here, not in the coroutine
    // frame, so a late completion never touches freed memory.
    struct Slot {
        explicit Slot(const asio::any_io_executor& ex) : deadline(ex) {}
        asio::cancellation_signal signal;
        asio::cancellation_signal bake_signal;  // stops its bake probes (cancel())
        bool baking = false;
        asio::steady_timer deadline;
        std::size_t tier_index = 0;
        bool body_started = false;  // only then may the signal be emitted (see cancel())
        bool stop_requested = false;
    };

    Impl(asio::any_io_executor ex, Inventory inv, std::vector<ArtifactSpec> arts, RolloutConfig cfg,
         PipelineSettings base)
        : executor(std::move(ex)),
          inventory(std::move(inv)),
          artifacts(std::move(arts)),
          config(std::move(cfg)),
          settings(std::move(base)),
          wake(executor),
          pace(executor) {
        report.rollout_id = settings.rollout_id;
        report.sr_id = settings.sr_id;
        report.nodes.resize(inventory.nodes.size());
        for (std::size_t i = 0; i < inventory.nodes.size(); ++i) {
            report.nodes[i].node = inventory.nodes[i];
            slots.push_back(std::make_unique<Slot>(executor));
            index_by_name.emplace(inventory.nodes[i].name, i);
        }
        for (const auto& t : config.tiers) {
            TierProgress tp;
            tp.tier = t.tier;
            for (const auto& n : inventory.nodes) tp.total += n.tier == t.tier ? 1 : 0;
            report.tiers.push_back(tp);
            PipelineSettings s = settings;
            s.strict_health = t.strict_health;
            s.on_step = [this](const std::string& node, const std::string& step) {
                auto it = index_by_name.find(node);
                if (it == index_by_name.end()) return;
                report.nodes[it->second].step = step;
                if (observer) observer->node_step(report.nodes[it->second]);
            };
            s.on_backup = [this](const std::string& node, const std::string& backup_path) {
                auto it = index_by_name.find(node);
                if (it == index_by_name.end()) return;
                report.nodes[it->second].report.backup_path = backup_path;
                store_node(it->second, "RUNNING");  // recovery restores from it after a crash
            };
            // The rollout stopping (gate, drain, audit, cancel) or this node's deadline: what
            // deploy_node asks before it starts anything new on its own (a stale lock's
            // recovery and the deploy after it), when Asio cancellation no longer reaches it.
            s.should_stop = [this](const std::string& node) {
                if (stopping()) return true;
                auto it = index_by_name.find(node);
                return it != index_by_name.end() && slots[it->second]->stop_requested;
            };
            tier_settings.push_back(std::move(s));
        }
        for (std::size_t i = 0; i < inventory.nodes.size(); ++i)
            for (std::size_t t = 0; t < config.tiers.size(); ++t)
                if (config.tiers[t].tier == inventory.nodes[i].tier) slots[i]->tier_index = t;
    }

    asio::awaitable<RolloutReport> run();
    asio::awaitable<void> run_tier(std::size_t t);
    asio::awaitable<bool> start_node(std::size_t i);
    asio::awaitable<void> node_body(std::size_t i);
    asio::awaitable<void> roll_back_deployed();
    void node_finished(std::size_t i, NodeReport r);
    void judge_failure(std::size_t t, bool batch_boundary);
    void check_gate(std::size_t t, bool batch_boundary);
    void abort(std::string reason, const std::string& step = "GATE",
               const std::string& principal = {});
    asio::awaitable<void> bake_tier(std::size_t t, const std::vector<std::size_t>& members);
    asio::awaitable<void> bake_node(std::size_t i, Clock::time_point until);
    asio::awaitable<void> await_approval(std::size_t t);
    ControlState control_state() const {
        return stopping() || finished ? ControlState::stopping : report.control;
    }
    ControlDecision control(ControlRequest request, const std::string& principal,
                            bool may_approve, bool may_operate, std::optional<AbortPolicy> policy);
    void stop_for_audit(const std::string& why);
    void request_stop(std::size_t i);
    void cancel(std::string reason);

    bool stopping() const { return aborted || cancelled; }

    // Sleeps until notify() (a node finished, a stop) or the deadline. The caller re-checks
    // its condition: wake-ups may be spurious.
    asio::awaitable<void> wait_for_change() {
        wake.expires_at(Clock::time_point::max());
        boost::system::error_code ec;
        co_await wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    void notify() { wake.cancel(); }
    // What a node this rollout deployed has in its release marker.
    static MarkerExpectation own_release(const PipelineSettings& s) {
        MarkerExpectation m;
        m.rollout_id = s.rollout_id;
        return m;
    }

    void audit(const std::string& step, const std::string& event, std::string detail,
               std::optional<std::int64_t> duration_ms = std::nullopt,
               const std::string& principal = {}, const std::string& node = {}) {
        if (settings.logger)
            settings.logger->info("rollout {}: {} {} {}", settings.rollout_id, step, event, detail);
        if (!settings.audit) return;
        store::AuditEvent e;
        e.sr_id = settings.sr_id;
        e.rollout_id = settings.rollout_id;
        e.step = step;
        e.event = event;
        e.detail = std::move(detail);
        e.duration_ms = duration_ms;
        e.principal = principal;
        e.node = node;
        settings.audit->record(std::move(e));
    }
    void store_rollout() {
        if (!settings.audit) return;
        store::RolloutRecord r;
        r.id = settings.rollout_id;
        r.sr_id = settings.sr_id;
        r.status = std::string(stored_status(report.status, report.control));
        r.reason = report.reason;
        r.created_ms = created_ms;
        r.owner = settings.owner;
        if (report.status != RolloutStatus::running) r.finished_ms = unix_ms();
        settings.audit->upsert_rollout(std::move(r));
    }
    void store_node(std::size_t i, std::string status) {
        if (!settings.audit) return;
        const auto& p = report.nodes[i];
        store::NodeResult r;
        r.rollout_id = settings.rollout_id;
        r.node = p.node.name;
        r.status = std::move(status);
        r.step = p.step;
        r.backup_path = p.report.backup_path;
        if (p.state == NodeState::done) {
            r.error = p.report.error.message;
            r.finished_ms = unix_ms();
        }
        if (started_ms[i] != 0) r.started_ms = started_ms[i];
        settings.audit->upsert_node_result(std::move(r));
    }

    asio::any_io_executor executor;
    Inventory inventory;
    std::vector<ArtifactSpec> artifacts;
    RolloutConfig config;
    PipelineSettings settings;
    std::vector<PipelineSettings> tier_settings;  // per tier: strictness, on_step
    RolloutObserver* observer = nullptr;
    bool dry_run = false;
    bool ran = false;

    RolloutReport report;
    std::vector<std::unique_ptr<Slot>> slots;
    std::vector<std::int64_t> started_ms;
    std::unordered_map<std::string, std::size_t> index_by_name;
    std::int64_t created_ms = 0;
    std::size_t in_flight = 0;
    bool aborted = false, cancelled = false;
    bool draining = false;    // aborted by stop_starting(), not by the gate
    bool finished = false;    // run() has returned
    std::optional<AbortPolicy> abort_policy;  // an operator's abort chose it
    asio::steady_timer wake;  // the scheduler's condition variable
    asio::steady_timer pace;  // spacing of node starts (connections per second)
    Clock::time_point next_start{};
};

asio::awaitable<RolloutReport> Rollout::Impl::run() {
    const auto t0 = Clock::now();
    created_ms = unix_ms();
    started_ms.assign(inventory.nodes.size(), 0);
    report.dry_run = dry_run;
    if (auto ok = validate_rollout(config, inventory); !ok) {
        report.status = RolloutStatus::failed;
        report.reason = ok.error().message;
        co_return report;
    }
    store_rollout();
    for (std::size_t i = 0; i < inventory.nodes.size(); ++i) store_node(i, "PENDING");
    audit("ROLLOUT", dry_run ? "DRY_RUN_START" : "ROLLOUT_START",
          std::to_string(inventory.nodes.size()) + " node(s), " + std::to_string(artifacts.size()) +
              " artifact(s)");
    // The rollout and its nodes are on disk before any node is touched: a process that dies
    // from here on leaves a row that crash recovery finds.
    // Audit or stop: a store that cannot commit them means no node starts at all.
    if (settings.audit && !dry_run) {
        if (auto d = co_await settings.audit->durable(); !d) stop_for_audit(d.error().message);
    }

    for (std::size_t t = 0; t < config.tiers.size(); ++t) {
        co_await run_tier(t);
        if (!stopping() && !dry_run && config.tiers[t].approve) co_await await_approval(t);
    }

    // A drain (service stopping) is not a failure of the release: nothing is rolled back for it.
    if (aborted && !draining && abort_policy.value_or(config.on_abort) == AbortPolicy::roll_back_all &&
        !dry_run)
        co_await roll_back_deployed();

    for (const auto& n : report.nodes) {
        if (n.state == NodeState::skipped)
            ++report.skipped;
        else if (n.state == NodeState::done && n.report.outcome == NodeOutcome::deployed)
            ++report.deployed;
        else
            ++report.failed;
    }
    if (cancelled)
        report.status = RolloutStatus::cancelled;
    else if (aborted)
        report.status = RolloutStatus::aborted;
    else if (report.deployed == report.nodes.size())
        report.status = RolloutStatus::succeeded;
    else {
        report.status = RolloutStatus::failed;
        report.reason = std::to_string(report.failed) + " of " +
                        std::to_string(report.nodes.size()) +
                        (dry_run ? " node(s) not ready (a dry run has no safety gate)"
                                 : " node(s) failed (the safety gate held)");
    }
    report.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
    finished = true;
    store_rollout();
    audit("ROLLOUT", "ROLLOUT_" + std::string(to_string(report.status)),
          std::to_string(report.deployed) + " deployed, " + std::to_string(report.failed) +
              " failed, " + std::to_string(report.skipped) + " not started" +
              (report.reason.empty() ? std::string() : "; " + report.reason),
          report.duration.count());
    co_return report;
}

asio::awaitable<void> Rollout::Impl::run_tier(std::size_t t) {
    const TierPolicy& policy = config.tiers[t];
    TierProgress& tier = report.tiers[t];
    std::vector<std::size_t> members;
    for (std::size_t i = 0; i < inventory.nodes.size(); ++i)
        if (inventory.nodes[i].tier == policy.tier) members.push_back(i);
    if (members.empty()) co_return;
    auto skip_rest = [&] {
        for (auto i : members)
            if (report.nodes[i].state == NodeState::pending) {
                report.nodes[i].state = NodeState::skipped;
                ++tier.skipped;
                store_node(i, "SKIPPED");
            }
    };
    if (stopping()) {
        skip_rest();
        tier.complete = true;
        co_return;
    }
    tier.active = true;
    tier.started_at = Clock::now();
    if (observer) observer->tier_started(tier);
    const std::size_t window = policy.batch_size == 0 ? members.size() : policy.batch_size;
    audit(
        "TIER", "TIER_START",
        "tier " + std::to_string(policy.tier) + ": " + std::to_string(members.size()) +
            " node(s), " +
            (policy.mode == WindowMode::lockstep ? "lock-step batches of " : "sliding window of ") +
            std::to_string(window) + (policy.strict_health ? ", strict health" : ""));

    if (policy.mode == WindowMode::lockstep) {
        for (std::size_t b = 0; b < members.size() && !stopping(); b += window) {
            const std::size_t end = std::min(members.size(), b + window);
            for (std::size_t k = b; k < end && !stopping(); ++k) co_await start_node(members[k]);
            while (tier.in_flight > 0) co_await wait_for_change();
            if (!stopping()) check_gate(t, true);
        }
    } else {
        for (std::size_t k = 0; k < members.size() && !stopping(); ++k) {
            while (!stopping() && tier.in_flight >= window) co_await wait_for_change();
            if (stopping()) break;
            co_await start_node(members[k]);
        }
        while (tier.in_flight > 0) co_await wait_for_change();
    }
    // The whole tier is judged once more at its end (a tier smaller than the minimum sample
    // is judged only here).
    if (!stopping()) check_gate(t, true);
    if (!stopping() && !dry_run && policy.bake.count() > 0) co_await bake_tier(t, members);
    skip_rest();
    tier.active = false;
    tier.complete = true;
    tier.finished_at = Clock::now();
    if (observer) observer->tier_finished(tier);
    audit("TIER", "TIER_DONE",
          "tier " + std::to_string(policy.tier) + ": " +
              std::to_string(tier.finished - tier.failed) + (dry_run ? " ready, " : " deployed, ") +
              std::to_string(tier.failed) + " failed, " + std::to_string(tier.skipped) +
              " not started");
}

// Waits for a free session and for the pace of new connections, then spawns the node.
// Returns false (nothing started) when the rollout stops meanwhile.
asio::awaitable<bool> Rollout::Impl::start_node(std::size_t i) {
    // Paused (or a tier gate waiting): no node starts until resume. A node not started has
    // no deadline running (its deadline starts with its pipeline).
    while (!stopping() &&
           (report.control != ControlState::running || in_flight >= config.max_sessions))
        co_await wait_for_change();
    if (stopping()) co_return false;
    if (config.max_connections_per_second > 0) {
        if (next_start > Clock::now()) {
            pace.expires_at(next_start);
            boost::system::error_code ec;
            co_await pace.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            if (stopping()) co_return false;
        }
        // The next slot counts from when this node really starts: a timer that fired late
        // (a loaded machine) must not let the next start follow closer than the pace allows.
        const auto gap = std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double>(1.0 / config.max_connections_per_second));
        next_start = std::max(next_start, Clock::now()) + gap;
    }
    auto& progress = report.nodes[i];
    TierProgress& tier = report.tiers[slots[i]->tier_index];
    progress.state = NodeState::running;
    progress.step = "CONNECT";
    ++tier.started;
    ++tier.in_flight;
    ++in_flight;
    started_ms[i] = unix_ms();
    store_node(i, "RUNNING");
    if (observer) observer->node_started(progress);
    asio::co_spawn(executor, node_body(i),
                   asio::bind_cancellation_slot(slots[i]->signal.slot(), asio::detached));
    co_return true;
}

asio::awaitable<void> Rollout::Impl::node_body(std::size_t i) {
    Slot& slot = *slots[i];
    slot.body_started = true;
    if (stopping() && cancelled) {
        // cancel() came between the spawn and this first resumption: never touch the node.
        NodeReport r;
        r.node = inventory.nodes[i].name;
        r.error = Error(errc::cancelled, "node '" + r.node + "': cancelled before it started");
        r.failed_step = "CONNECT";
        node_finished(i, std::move(r));
        co_return;
    }
    slot.deadline.expires_after(config.node_deadline);
    slot.deadline.async_wait([this, i](boost::system::error_code ec) {
        if (ec) return;  // finished in time (the timer was cancelled): `this` may be gone
        if (report.nodes[i].state == NodeState::running) {
            audit("NODE", "NODE_DEADLINE",
                  "node '" + inventory.nodes[i].name + "' exceeded its deadline of " +
                      std::to_string(
                          std::chrono::duration_cast<std::chrono::seconds>(config.node_deadline)
                              .count()) +
                      " s: cancelled");
            request_stop(i);
        }
    });
    NodeReport r;
    try {
        const auto& s = tier_settings[slot.tier_index];
        if (dry_run)
            r = co_await precheck_node(inventory.nodes[i], artifacts, s);
        else
            r = co_await deploy_node(inventory.nodes[i], artifacts, s);
    } catch (const std::exception& e) {
        // deploy_node reports node failures itself; this is a cancellation that struck
        // before it began, or a programming error. Either way, the node was not changed.
        r = NodeReport();
        r.node = inventory.nodes[i].name;
        r.failed_step = report.nodes[i].step;
        r.error = Error(errc::cancelled,
                        "node '" + r.node + "': stopped before the pipeline ran: " + e.what());
    }
    slot.deadline.cancel();
    node_finished(i, std::move(r));
}

void Rollout::Impl::node_finished(std::size_t i, NodeReport r) {
    auto& progress = report.nodes[i];
    const std::size_t t = slots[i]->tier_index;
    TierProgress& tier = report.tiers[t];
    progress.report = std::move(r);
    progress.state = NodeState::done;
    if (!progress.report.failed_step.empty())
        progress.step = progress.report.failed_step;
    else
        progress.step = "DONE";
    --tier.in_flight;
    --in_flight;
    ++tier.finished;
    const bool ok = progress.report.outcome == NodeOutcome::deployed;
    if (!ok) ++tier.failed;
    // A step refused for want of its intent row: the store cannot commit, so nothing new may
    // start. Judged before the gate, so the reason says why.
    if (progress.report.error.code == errc::audit_unavailable)
        stop_for_audit(progress.report.error.message);
    store_node(i, dry_run ? (ok ? "DRY_RUN_OK" : "DRY_RUN_FAILED")
                          : std::string(to_string(progress.report.outcome)));
    if (observer) observer->node_finished(progress, tier);
    judge_failure(t, false);
    notify();
}

// After a node finished or failed its bake: the rollout-wide cap, then (sliding window, or a
// bake failure: `batch_boundary`) the tier's gate.
void Rollout::Impl::judge_failure(std::size_t t, bool batch_boundary) {
    if (stopping()) return;
    std::size_t failed_total = 0;
    for (const auto& tp : report.tiers) failed_total += tp.failed;
    if (!dry_run && config.max_failed_nodes > 0 && failed_total >= config.max_failed_nodes)
        abort(std::to_string(failed_total) +
              " node(s) failed: the rollout-wide cap (max_failed_nodes " +
              std::to_string(config.max_failed_nodes) + ") is reached");
    else if (batch_boundary || config.tiers[t].mode == WindowMode::sliding)
        check_gate(t, batch_boundary);
}

// The safety gate. `batch_boundary`: a lock-step batch or the tier has just ended, so the
// minimum sample does not apply.
void Rollout::Impl::check_gate(std::size_t t, bool batch_boundary) {
    if (dry_run || stopping()) return;
    const TierPolicy& policy = config.tiers[t];
    TierProgress& tier = report.tiers[t];
    if (tier.finished == 0) return;
    if (!batch_boundary) {
        const std::size_t batch = policy.batch_size == 0 ? tier.total : policy.batch_size;
        const std::size_t sample =
            policy.min_sample > 0 ? policy.min_sample : std::min<std::size_t>(batch, 20);
        if (tier.finished < std::min(sample, tier.total)) return;
    }
    const double rate = static_cast<double>(tier.failed) / static_cast<double>(tier.finished);
    if (rate <= config.failure_threshold) return;
    const std::string reason =
        "safety gate: tier " + std::to_string(policy.tier) + " failure rate " + percent(rate) +
        " (" + std::to_string(tier.failed) + " of " + std::to_string(tier.finished) +
        " finished node(s)) is above " + percent(config.failure_threshold);
    if (observer) observer->gate_tripped(tier, reason);
    abort(reason);
}

void Rollout::Impl::abort(std::string reason, const std::string& step,
                          const std::string& principal) {
    if (stopping()) return;
    aborted = true;
    report.reason = reason;
    audit(step, "ROLLOUT_ABORT", reason + "; nodes in flight finish, no new node starts",
          std::nullopt, principal);
    // A baking tier's probes stop now: an abort (operator, gate, drain) must not wait for an
    // unhealthy node's whole health timeout. A bake rollback already started is not touched.
    for (auto& slot : slots)
        if (slot->baking) {
            slot->baking = false;
            slot->bake_signal.emit(asio::cancellation_type::terminal);
        }
    pace.cancel();
    notify();
}

ControlDecision Rollout::Impl::control(ControlRequest request, const std::string& principal,
                                       bool may_approve, bool may_operate,
                                       std::optional<AbortPolicy> policy) {
    const ControlState from = control_state();
    const ControlDecision d = decide_control(from, request, may_approve, may_operate);
    if (!d.allowed) return d;
    const std::string who = principal.empty() ? std::string("an operator") : "'" + principal + "'";
    switch (request) {
        case ControlRequest::pause:
            report.control = ControlState::paused;
            report.control_by = principal;
            audit("ROLLOUT", "ROLLOUT_PAUSED",
                  "paused by " + who + ": no new node starts; " + std::to_string(in_flight) +
                      " node(s) in flight finish their pipeline",
                  std::nullopt, principal);
            break;
        case ControlRequest::resume:
            report.control = ControlState::running;
            report.control_by = principal;
            if (from == ControlState::awaiting_approval) {
                audit("TIER", "TIER_APPROVED",
                      "tier " + std::to_string(report.awaiting_tier) + " approved by " + who +
                          ": the next tier starts",
                      std::nullopt, principal);
                report.awaiting_tier = 0;
            } else {
                audit("ROLLOUT", "ROLLOUT_RESUMED", "resumed by " + who, std::nullopt, principal);
            }
            break;
        case ControlRequest::abort: {
            if (policy) abort_policy = policy;
            const auto effective = abort_policy.value_or(config.on_abort);
            audit("ROLLOUT", "ROLLOUT_ABORT_REQUESTED",
                  "abort requested by " + who + " (on_abort " +
                      (effective == AbortPolicy::roll_back_all ? "roll_back_all" : "keep_deployed") +
                      ")",
                  std::nullopt, principal);
            report.control = ControlState::running;
            report.control_by = principal;
            report.awaiting_tier = 0;
            abort("aborted by " + who, "ROLLOUT", principal);
            break;
        }
    }
    store_rollout();
    if (observer) observer->control_changed(report, request, principal);
    notify();
    return d;
}

// After a tier with `approve` (and its bake): waits for a resume by an approver, unless no
// later tier has a node. A pause at the boundary is honoured first.
asio::awaitable<void> Rollout::Impl::await_approval(std::size_t t) {
    bool more = false;
    for (std::size_t u = t + 1; u < report.tiers.size(); ++u) more = more || report.tiers[u].total > 0;
    if (!more || report.tiers[t].total == 0) co_return;
    while (!stopping() && report.control == ControlState::paused) co_await wait_for_change();
    if (stopping()) co_return;
    const TierProgress& tier = report.tiers[t];
    report.control = ControlState::awaiting_approval;
    report.awaiting_tier = tier.tier;
    audit("TIER", "TIER_APPROVAL_WAIT",
          "tier " + std::to_string(tier.tier) + " done (" +
              std::to_string(tier.finished - tier.failed) + " deployed, " +
              std::to_string(tier.failed) + " failed): the next tier waits for an approver's resume");
    store_rollout();
    if (observer) observer->tier_gate(tier);
    while (!stopping() && report.control == ControlState::awaiting_approval)
        co_await wait_for_change();
    // A pause right after the approval is honoured by start_node.
}

// Bake: the tier's DEPLOYED nodes are probed until the bake ends; a node that turns unhealthy
// is rolled back from its backup (bake_node) and judged by the gate at once.
asio::awaitable<void> Rollout::Impl::bake_tier(std::size_t t,
                                               const std::vector<std::size_t>& members) {
    const TierPolicy& policy = config.tiers[t];
    TierProgress& tier = report.tiers[t];
    std::vector<std::size_t> todo;
    for (auto i : members)
        if (report.nodes[i].state == NodeState::done &&
            report.nodes[i].report.outcome == NodeOutcome::deployed)
            todo.push_back(i);
    if (todo.empty()) co_return;
    tier.baking = true;
    audit("TIER", "BAKE_START",
          "tier " + std::to_string(policy.tier) + ": probing " + std::to_string(todo.size()) +
              " deployed node(s) for " + std::to_string(policy.bake.count()) + " s");
    const auto until = Clock::now() + policy.bake;
    std::size_t running = todo.size();
    for (auto i : todo) {
        slots[i]->baking = true;
        asio::co_spawn(executor, bake_node(i, until),
                       asio::bind_cancellation_slot(slots[i]->bake_signal.slot(),
                                                    [this, &running](std::exception_ptr) {
                                                        --running;
                                                        notify();
                                                    }));
    }
    while (running > 0) co_await wait_for_change();
    tier.baking = false;
    audit("TIER", "BAKE_DONE",
          "tier " + std::to_string(policy.tier) + ": " + std::to_string(tier.bake_failed) + " of " +
              std::to_string(todo.size()) + " node(s) turned unhealthy" +
              (stopping() ? " (the bake ended early: the rollout is stopping)" : ""));
}

asio::awaitable<void> Rollout::Impl::bake_node(std::size_t i, Clock::time_point until) {
    const Node& node = inventory.nodes[i];
    Slot& slot = *slots[i];
    std::optional<Error> failure;
    try {
        asio::steady_timer pause_timer(executor);
        while (!stopping() && Clock::now() < until) {
            // The HEALTH step's check, non-strict: healthy once it answers 200 within the
            // node's health timeout.
            http::HealthCheck hc = health_check_for(node, 1);
            auto r = co_await http::wait_healthy(hc);
            if (stopping()) break;
            if (!r) {
                if (r.error().code != errc::cancelled) failure = r.error();
                break;
            }
            pause_timer.expires_after(node.health.interval);
            boost::system::error_code ec;
            co_await pause_timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            if (ec) break;
        }
    } catch (const std::exception&) {
        // cancelled (the rollout was cancelled): the node stays as it is
    }
    slot.baking = false;  // from here on nothing cancels it: a half-done restore helps nobody
    if (!failure || cancelled) co_return;
    auto& progress = report.nodes[i];
    const std::size_t t = slot.tier_index;
    TierProgress& tier = report.tiers[t];
    const std::string why = "node '" + node.name + "': BAKE: " + failure->message;
    audit("BAKE", "BAKE_FAILED", why + "; rolling back from " + progress.report.backup_path,
          std::nullopt, {}, node.name);
    progress.step = "BAKE";
    store_node(i, "RUNNING");  // a crash from here on: recovery restores it from its backup
    NodeReport rb;
    try {
        const std::string backup = progress.report.backup_path;
        // The node was unlocked since it deployed: restore it only while it still runs this
        // rollout's release (files, marker, backup), never over another rollout's.
        rb = co_await rollback_release(node, backup, tier_settings[t], artifacts,
                                       own_release(tier_settings[t]));
    } catch (const std::exception& e) {
        rb.outcome = NodeOutcome::rollback_failed;
        rb.error = Error(errc::invalid_argument, std::string("rollback: ") + e.what());
    }
    NodeReport r = progress.report;
    r.failed_step = "BAKE";
    r.error = Error(failure->code, why);
    if (rb.outcome == NodeOutcome::rolled_back) {
        r.outcome = NodeOutcome::rolled_back;
    } else {
        r.outcome = NodeOutcome::rollback_failed;
        r.rollback_error = rb.error.message;
    }
    progress.report = std::move(r);
    progress.step = "BAKE";
    ++tier.failed;
    ++tier.bake_failed;
    store_node(i, std::string(to_string(progress.report.outcome)));
    if (observer) observer->node_finished(progress, tier);
    judge_failure(t, true);
    notify();
}

// Like a drain: no node starts any more, nodes in flight finish (deployed, or cleaned up and
// rolled back: their safety steps run without waiting on the store), and roll_back_all does
// not apply (a store failure is no verdict on the release; rolling every node back would be
// the largest unaudited change of all).
void Rollout::Impl::stop_for_audit(const std::string& why) {
    report.audit_failed = true;
    if (stopping()) return;
    draining = true;
    abort("audit or stop: the audit log cannot be written (" + why + ")");
}

void Rollout::Impl::request_stop(std::size_t i) {
    Slot& slot = *slots[i];
    // Emitting before the coroutine body runs would throw inside Asio's co_spawn entry point
    // (Boost 1.81), which terminates; such a node sees the stop flag when it starts instead.
    if (slot.stop_requested || !slot.body_started) return;
    slot.stop_requested = true;
    slot.signal.emit(asio::cancellation_type::terminal);
}

void Rollout::Impl::cancel(std::string reason) {
    if (cancelled) return;
    const bool was_aborted = aborted;
    cancelled = true;
    if (!was_aborted)
        report.reason = reason;
    else
        report.reason += "; then cancelled: " + reason;
    audit("ROLLOUT", "ROLLOUT_CANCEL", reason + "; nodes in flight are stopped and cleaned up");
    for (std::size_t i = 0; i < slots.size(); ++i) {
        if (report.nodes[i].state == NodeState::running) request_stop(i);
        if (slots[i]->baking) {
            slots[i]->baking = false;
            slots[i]->bake_signal.emit(asio::cancellation_type::terminal);
        }
    }
    pace.cancel();
    notify();
}

// Abort policy roll_back_all: every node this rollout deployed goes back to its backup.
// These rollbacks are not cancellable (a half-done restore helps nobody); they are bounded
// by their steps' deadlines and by the session limit.
asio::awaitable<void> Rollout::Impl::roll_back_deployed() {
    std::vector<std::size_t> todo;
    for (std::size_t i = 0; i < report.nodes.size(); ++i)
        if (report.nodes[i].state == NodeState::done &&
            report.nodes[i].report.outcome == NodeOutcome::deployed)
            todo.push_back(i);
    if (todo.empty()) co_return;
    audit("ROLLOUT", "ROLLBACK_ALL_START",
          "abort policy roll_back_all: " + std::to_string(todo.size()) +
              " deployed node(s) go back to their backups");
    std::size_t running = 0, done = 0;
    for (auto i : todo) {
        while (running >= config.max_sessions) co_await wait_for_change();
        ++running;
        asio::co_spawn(
            executor,
            [this, i, &running, &done]() -> asio::awaitable<void> {
                const auto& s = tier_settings[slots[i]->tier_index];
                NodeReport r;
                try {
                    // Nodes deployed long ago (a bake, a tier gate's wait) were unlocked
                    // since: only one still on this rollout's release is restored.
                    r = co_await rollback_release(inventory.nodes[i],
                                                  report.nodes[i].report.backup_path, s,
                                                  artifacts, own_release(s));
                } catch (const std::exception& e) {
                    r.node = inventory.nodes[i].name;
                    r.outcome = NodeOutcome::rollback_failed;
                    r.error = Error(errc::invalid_argument, std::string("rollback: ") + e.what());
                }
                report.nodes[i].abort_rollback = r;
                store_node(i, r.outcome == NodeOutcome::rolled_back ? "ROLLED_BACK_BY_POLICY"
                                                                    : "ROLLBACK_BY_POLICY_FAILED");
                --running;
                ++done;
                notify();
            },
            asio::detached);
    }
    while (done < todo.size()) co_await wait_for_change();
    std::size_t ok = 0;
    for (auto i : todo)
        ok += report.nodes[i].abort_rollback->outcome == NodeOutcome::rolled_back ? 1 : 0;
    audit("ROLLOUT", "ROLLBACK_ALL_DONE",
          std::to_string(ok) + " of " + std::to_string(todo.size()) + " node(s) rolled back");
}

Rollout::Rollout(asio::any_io_executor executor, Inventory inventory,
                 std::vector<ArtifactSpec> artifacts, RolloutConfig config,
                 PipelineSettings settings)
    : impl_(std::make_unique<Impl>(std::move(executor), std::move(inventory), std::move(artifacts),
                                   std::move(config), std::move(settings))) {}

Rollout::~Rollout() = default;

void Rollout::set_observer(RolloutObserver* observer) {
    impl_->observer = observer;
}
void Rollout::set_dry_run(bool on) {
    impl_->dry_run = on;
}

asio::awaitable<RolloutReport> Rollout::run() {
    if (impl_->ran) throw std::logic_error("Rollout::run() called twice");
    impl_->ran = true;
    co_return co_await impl_->run();
}

void Rollout::cancel(std::string reason) {
    impl_->cancel(std::move(reason));
}

void Rollout::stop_starting(std::string reason) {
    if (!impl_->stopping()) impl_->draining = true;
    impl_->abort(std::move(reason));
}

ControlDecision Rollout::pause(const std::string& principal) {
    return impl_->control(ControlRequest::pause, principal, false, true, std::nullopt);
}

ControlDecision Rollout::resume(const std::string& principal, bool may_approve, bool may_operate) {
    return impl_->control(ControlRequest::resume, principal, may_approve, may_operate,
                          std::nullopt);
}

ControlDecision Rollout::abort(std::optional<AbortPolicy> on_abort, const std::string& principal) {
    return impl_->control(ControlRequest::abort, principal, false, true, on_abort);
}

ControlState Rollout::control_state() const {
    return impl_->control_state();
}

const RolloutReport& Rollout::progress() const {
    return impl_->report;
}

}  // namespace guardia::deploy
