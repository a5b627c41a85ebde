// Start-up recovery of the service: what a previous process left in flight is finished in a
// truthful state, and the node claims of SRs awaiting their PM are rebuilt from the store.
#include "coordinator_impl.hpp"

#include "guardia/core/json_input.hpp"
#include "guardia/deploy/owner.hpp"
#include "guardia/deploy/recovery.hpp"

#include <spdlog/spdlog.h>
#include <boost/json.hpp>

namespace guardia::service {

namespace asio = boost::asio;
namespace json = boost::json;

namespace {

json::object recovered_flag() {
    json::object o;
    o["recovered"] = true;
    return o;
}

}  // namespace

// A rollout the store says is in flight, found at start-up: its process died. Its nodes are
// made safe and recorded by deploy::recover_rollout (shared with the CLI); the task follows.
asio::awaitable<void> Coordinator::Impl::recover_rollout(const store::RolloutRecord& r) {
    const std::string rid = r.id, sr = r.sr_id;
    logger->warn("recovering rollout {} of SR {}: the previous process ended during it", rid, sr);
    auto results = co_await read([&](store::Database& db) { return db.node_results(rid); });
    auto task = co_await read([&](store::Database& db) { return db.task(sr); });
    auto arts = co_await read([&](store::Database& db) { return db.artifacts_for(sr); });
    auto audit_rows = co_await read([&](store::Database& db) { return db.audit_for_rollout(rid); });
    std::string inst, sys;
    if (task && *task) {
        inst = (*task)->inst_id;
        sys = (*task)->system_name;
    }
    auto rows = co_await read([&](store::Database& db) { return db.inventory_nodes(inst, sys); });
    if (!results || !task || !arts || !rows || !audit_rows) {
        logger->error("rollout {}: cannot read the store to recover it; left as it is", rid);
        co_return;
    }
    deploy::RecoveryInput in;
    in.rollout = r;
    in.results = std::move(*results);
    in.nodes = nodes_by_name(*rows);
    in.audit = std::move(*audit_rows);
    in.origin = "at start-up";
    for (const auto& a : *arts) {
        deploy::ArtifactSpec s;
        s.file_name = a.name;
        s.sha256 = a.sha256;
        s.local_path = a.path;
        in.artifacts.push_back(std::move(s));
    }
    auto report = co_await deploy::recover_rollout(std::move(in), pipeline_settings(sr, rid),
                                                   deps.engine.rollout.max_sessions);
    for (const auto& n : report.nodes) node_outcome_metric(n.status);
    ++stats.rollouts_by_status["ABORTED"];
    const std::string reason = report.reason;
    (void)co_await durable();

    if (*task && (*task)->rollout_id == rid &&
        parse_task_status((*task)->status) == TaskStatus::deploying) {
        store::TaskRecord t = **task;
        (void)co_await advance(t, TaskEvent::rollout_failed, reason, reason, "");
        json::object extra;
        extra["rollout_status"] = "ABORTED";
        extra["recovered"] = true;
        co_await notify("deployment_failed", t, std::move(extra));
    }
}

// The nodes an SR deployed (and no PM rollback undid), as its inventory describes them now; a
// node gone from the inventory is held by name only.
asio::awaitable<std::optional<std::vector<deploy::Node>>> Coordinator::Impl::claimed_nodes(
    const store::TaskRecord& t) {
    const std::string inst = t.inst_id, sys = t.system_name;
    auto deployed = co_await deployed_nodes(t.sr_id);
    auto rows = co_await read([&](store::Database& db) { return db.inventory_nodes(inst, sys); });
    if (!deployed || !rows) co_return std::nullopt;
    const auto known = nodes_by_name(*rows);
    std::vector<deploy::Node> out;
    for (const auto& [name, d] : *deployed) {
        auto it = known.find(name);
        if (it != known.end()) {
            out.push_back(it->second);
        } else {
            deploy::Node n;
            n.name = name;
            out.push_back(std::move(n));
        }
    }
    co_return out;
}

asio::awaitable<std::size_t> Coordinator::Impl::recover() {
    std::size_t n = 0;
    auto unfinished = co_await read([](store::Database& db) { return db.unfinished_rollouts(); });
    if (!unfinished) throw std::runtime_error("recovery: " + unfinished.error().message);
    for (const auto& r : *unfinished) {
        // Only rollouts whose process is gone (the service's previous process, typically), or
        // rows from before rollouts named their process (this service's own previous version).
        // One another guardia runs still, or one of another machine, is not ours.
        const auto live = deploy::owner_liveness(r.owner);
        if (live == deploy::OwnerLiveness::alive ||
            (live == deploy::OwnerLiveness::unknown && !r.owner.empty())) {
            logger->warn("rollout {} is run by {}, which is {}: not recovered (guardia recover "
                         "--force once that process is known to be gone)",
                         r.id, r.owner, deploy::to_string(live));
            continue;
        }
        co_await recover_rollout(r);
        ++n;
    }
    (void)co_await durable();
    // Tasks whose rollout ended but whose own final status was never written.
    const std::string deploying_s(to_string(TaskStatus::deploying));
    auto deploying =
        co_await read([&](store::Database& db) { return db.tasks_in_status(deploying_s); });
    if (!deploying) throw std::runtime_error("recovery: " + deploying.error().message);
    for (auto t : *deploying) {
        const std::string rid = t.rollout_id;
        Result<std::optional<store::RolloutRecord>> r = std::optional<store::RolloutRecord>();
        if (!rid.empty()) r = co_await read([&](store::Database& db) { return db.rollout(rid); });
        if (!r) continue;
        if (!*r) {
            const std::string reason =
                "interrupted before its rollout started (the previous process ended)";
            (void)co_await advance(t, TaskEvent::rollout_failed, reason, reason, "");
            co_await notify("deployment_failed", t, recovered_flag());
        } else if ((*r)->status == "SUCCEEDED") {
            (void)co_await advance(t, TaskEvent::rollout_succeeded, "",
                                   "rollout SUCCEEDED (status recovered)", "");
            co_await notify("pm_review_needed", t, recovered_flag());
        } else {
            (void)co_await advance(t, TaskEvent::rollout_failed, (*r)->reason,
                                   "rollout " + (*r)->status + " (status recovered)", "");
            co_await notify("deployment_failed", t, recovered_flag());
        }
        ++n;
    }
    // The claims of SRs awaiting their PM: the nodes they deployed stay theirs.
    const std::string pending_s(to_string(TaskStatus::pending_pm_validation));
    auto pending = co_await read([&](store::Database& db) { return db.tasks_in_status(pending_s); });
    if (!pending) throw std::runtime_error("recovery: " + pending.error().message);
    for (const auto& t : *pending) {
        auto held = co_await claimed_nodes(t);
        if (!held) throw std::runtime_error("recovery: cannot read the nodes of SR " + t.sr_id);
        hold(t.sr_id, ClaimKind::awaiting_verdict, *held);
    }
    // PM rollbacks the previous process did not finish: run them again (rolled-back nodes
    // were recorded as such and are not touched twice).
    const std::string rolling_s(to_string(TaskStatus::rolling_back));
    auto rolling = co_await read([&](store::Database& db) { return db.tasks_in_status(rolling_s); });
    if (!rolling) throw std::runtime_error("recovery: " + rolling.error().message);
    for (const auto& t : *rolling) {
        auto w = std::make_shared<Work>(executor);
        w->kind = WorkKind::rollback;
        w->task = t;
        w->rollout_id = t.rollout_id;
        w->resumed = true;
        active[t.sr_id] = w;
        if (auto held = co_await claimed_nodes(t)) hold(t.sr_id, ClaimKind::rolling_back, *held);
        co_await run_pm_rollback(w);
        ++n;
    }
    (void)co_await durable();
    co_return n;
}

}  // namespace guardia::service
