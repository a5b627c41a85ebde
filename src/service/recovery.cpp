// Start-up recovery of the service: what a previous process left in flight is finished in a
// truthful state, and the node claims of SRs awaiting their PM are rebuilt from the store.
#include "coordinator_impl.hpp"

#include "guardia/core/json_input.hpp"

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

// A rollout the store says is in flight, found at start-up: its process died. Every node it
// left RUNNING is inspected and made safe (recover_node), PENDING nodes are recorded as never
// started, and the rollout and its task end in a truthful state.
asio::awaitable<void> Coordinator::Impl::recover_rollout(const store::RolloutRecord& r) {
    const std::string rid = r.id, sr = r.sr_id;
    logger->warn("recovering rollout {} of SR {}: the previous process ended during it", rid, sr);
    auto results = co_await read([&](store::Database& db) { return db.node_results(rid); });
    auto task = co_await read([&](store::Database& db) { return db.task(sr); });
    auto arts = co_await read([&](store::Database& db) { return db.artifacts_for(sr); });
    std::string inst, sys;
    if (task && *task) {
        inst = (*task)->inst_id;
        sys = (*task)->system_name;
    }
    auto rows = co_await read([&](store::Database& db) { return db.inventory_nodes(inst, sys); });
    if (!results || !task || !arts || !rows) {
        logger->error("rollout {}: cannot read the store to recover it; left as it is", rid);
        co_return;
    }
    const auto nodes = nodes_by_name(*rows);
    auto specs = std::make_shared<std::vector<deploy::ArtifactSpec>>();
    for (const auto& a : *arts) {
        deploy::ArtifactSpec s;
        s.file_name = a.name;
        s.sha256 = a.sha256;
        s.local_path = a.path;
        specs->push_back(std::move(s));
    }
    // PENDING nodes are inspected too: the write that marked a node RUNNING may have died
    // with the process (commits are batched), while the node already holds our lock.
    std::vector<store::NodeResult> running;
    std::size_t pending = 0;
    for (const auto& n : *results)
        if (n.status == "RUNNING" || n.status == "PENDING" || n.status == "RECOVERY_FAILED") {
            running.push_back(n);
            pending += n.status == "PENDING" ? 1 : 0;
        }
    store::AuditEvent e;
    e.sr_id = sr;
    e.rollout_id = rid;
    e.step = "RECOVERY";
    e.event = "RECOVERY_START";
    e.detail = "found in flight at start-up (the previous process ended during it): " +
               std::to_string(running.size() - pending) + " node(s) running, " +
               std::to_string(pending) + " not started (checked too)";
    deps.audit->record(e);

    auto settings = std::make_shared<deploy::PipelineSettings>(pipeline_settings(sr, rid));
    settings->reclaim_own_lock = true;
    std::map<std::string, std::size_t> outcomes;
    const std::function<asio::awaitable<void>(std::size_t)> one =
        [this, &running, &nodes, specs, settings,
         &outcomes](std::size_t i) -> asio::awaitable<void> {
        store::NodeResult n = running[i];
        deploy::NodeReport rep;
        auto it = nodes.find(n.node);
        if (it == nodes.end()) {
            rep.outcome = deploy::NodeOutcome::failed_unchanged;
            rep.error =
                Error(errc::invalid_argument,
                      "node '" + n.node + "' is no longer in the inventory: recover it by hand");
        } else {
            rep = co_await deploy::recover_node(it->second, *specs, n.backup_path, *settings);
        }
        // Not inspected (unreachable, gone from the inventory): the node may still be mid-step
        // under our lock. It stays to be recovered at the next start, and the rollout with it.
        const bool inspected = it != nodes.end() && rep.failed_step != "CONNECT" &&
                               rep.failed_step != "RECOVER_INSPECT";
        if (n.status == "PENDING" && !rep.lock_released &&
            (rep.outcome == deploy::NodeOutcome::failed_unchanged || !inspected)) {
            n.status = "SKIPPED";  // never started (a node we cannot reach was never reached)
            n.step = "";
            n.error = inspected
                          ? "not started: the rollout was interrupted"
                          : "not started: the rollout was interrupted (" + rep.error.message + ")";
        } else if (!inspected) {
            n.status = "RECOVERY_FAILED";
            n.step = "RECOVERY";
            n.error = rep.error.message + "; retried at the next start";
        } else {
            n.status = std::string(deploy::to_string(rep.outcome));
            n.step = rep.failed_step.empty() ? "RECOVERY" : rep.failed_step;
            n.error = rep.error.message;
        }
        if (!rep.backup_path.empty()) n.backup_path = rep.backup_path;
        n.finished_ms = now_ms();
        ++outcomes[n.status];
        node_outcome_metric(n.status);
        store::AuditEvent ev;
        ev.sr_id = settings->sr_id;
        ev.rollout_id = settings->rollout_id;
        ev.node = n.node;
        ev.step = "RECOVERY";
        ev.event = "NODE_RECOVERED";
        ev.detail = n.status + (n.error.empty() ? std::string() : ": " + n.error);
        deps.audit->record(std::move(ev));
        deps.audit->upsert_node_result(std::move(n));
    };
    co_await run_bounded(running.size(), deps.engine.rollout.max_sessions, one);

    std::string summary;
    for (const auto& [k, v] : outcomes)
        summary += (summary.empty() ? "" : ", ") + std::to_string(v) + " " + lower(k);
    std::string reason =
        "interrupted: the previous guardia process ended during the rollout "
        "(crash or kill); recovered at start-up" +
        (summary.empty() ? std::string() : ": " + summary);
    store::RolloutRecord done = r;
    done.status = "ABORTED";
    done.reason = reason;
    // finished_ms stays empty while a node could not be recovered: the next start retries it.
    if (outcomes.count("RECOVERY_FAILED") == 0)
        done.finished_ms = now_ms();
    else
        done.reason += "; not finished: node(s) left to recover at the next start";
    deps.audit->upsert_rollout(done);
    ++stats.rollouts_by_status["ABORTED"];
    e.event = "ROLLOUT_ABORTED";
    e.detail = reason;
    deps.audit->record(e);
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
