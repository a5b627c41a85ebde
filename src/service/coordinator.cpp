#include "guardia/service/coordinator.hpp"

#include "coordinator_impl.hpp"

#include "guardia/core/failpoint.hpp"
#include "guardia/core/json_input.hpp"
#include "guardia/core/local_io.hpp"
#include "guardia/deploy/credential_store.hpp"
#include "guardia/deploy/release_marker.hpp"
#include "guardia/service/inventory_policy.hpp"
#include "guardia/service/notifier.hpp"
#include "guardia/service/staging_policy.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <set>
#include <tuple>

namespace guardia::service {

namespace asio = boost::asio;
namespace json = boost::json;

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

void StepTimer::next(const std::string& node, const std::string& step) {
    const auto now = Clock::now();
    auto it = open_.find(node);
    if (it != open_.end()) {
        sink_(it->second.first, std::chrono::duration<double>(now - it->second.second).count());
        open_.erase(it);
    }
    if (!step.empty()) open_.emplace(node, std::make_pair(step, now));
}

namespace {

// Test builds only (GUARDIA_FAILPOINT_PAUSE=<point>:<ms>): holds a race window open on the loop.
asio::awaitable<void> failpoint_pause(const char* point) {
    const auto delay = failpoint::pause_at(point);
    if (delay.count() == 0) co_return;
    asio::steady_timer timer(co_await asio::this_coro::executor);
    timer.expires_after(delay);
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

std::string utc_compact() {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
    return buf;
}

ServiceError store_error(const Error& e) {
    return ServiceError(ServiceErrc::store_unavailable,
                        "the store could not be read or written: " + e.message);
}

ServiceError stopping_error() {
    return ServiceError(ServiceErrc::stopping, "the service is stopping: no new work is accepted");
}

ServiceError no_task(const std::string& sr_id) {
    return ServiceError(ServiceErrc::not_found, "no task " + printable(sr_id));
}

TaskStatus status_of(const store::TaskRecord& t) {
    auto s = parse_task_status(t.status);
    if (!s) throw std::logic_error("task " + t.sr_id + ": unknown status " + t.status);
    return *s;
}

json::object payload_of(const store::TaskRecord& t) {
    boost::system::error_code ec;
    auto v = json::parse(t.payload, ec);
    if (ec || !v.is_object()) return {};
    return std::move(v.get_object());
}

json::object tier_counts(const deploy::TierProgress& t) {
    return json::object{{"total", t.total},
                        {"deployed", t.finished - t.failed},
                        {"failed", t.failed},
                        {"not_started", t.total - t.started}};
}

// Which nodes of `report` ended on the new build.
std::vector<deploy::Node> deployed_in(const deploy::RolloutReport& report) {
    std::vector<deploy::Node> out;
    for (const auto& n : report.nodes)
        if (n.state == deploy::NodeState::done &&
            n.report.outcome == deploy::NodeOutcome::deployed)
            out.push_back(n.node);
    return out;
}

// A host as the resolver will read it, for the literal forms: "127.1", "0x7f.1" and
// "127.000.000.001" (inet_aton) are 127.0.0.1, "::ffff:127.0.0.1" too, IPv6 in its canonical
// text. Names stay names (lower-cased): "localhost" is not resolved (docs/SECURITY.md).
std::string canonical_host(const std::string& host) {
    in_addr v4{};
    if (::inet_aton(host.c_str(), &v4) != 0) {
        char buf[INET_ADDRSTRLEN] = {};
        if (::inet_ntop(AF_INET, &v4, buf, sizeof buf)) return buf;
    }
    boost::system::error_code ec;
    auto a = boost::asio::ip::make_address(host, ec);
    if (!ec) {
        if (a.is_v6() && a.to_v6().is_v4_mapped())
            return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6())
                .to_string();
        return a.to_string();
    }
    return lower(host);
}

// Where a node's release lives: the same directory on the same server, whatever its name.
std::string target_of(const deploy::Node& n) {
    return canonical_host(n.host) + ":" + std::to_string(n.ssh_port) + ":" + n.deploy_path;
}

}  // namespace

// --- Impl: store, audit, notifications ----------------------------------------------------------

Coordinator::Impl::Impl(asio::any_io_executor ex, DeployServiceDeps d)
    : executor(std::move(ex)), deps(std::move(d)), reader(deps.db_path), changed(executor) {
    logger = deps.logger ? deps.logger : spdlog::default_logger();
    changed.expires_at(Clock::time_point::max());
}

asio::awaitable<Result<void>> Coordinator::Impl::durable() {
    co_return co_await deps.audit->durable();
}

void Coordinator::Impl::audit_task(const store::TaskRecord& t, const std::string& principal,
                                   std::string event, std::string detail) {
    store::AuditEvent e;
    e.sr_id = t.sr_id;
    e.rollout_id = t.rollout_id;
    e.step = "TASK";
    e.event = std::move(event);
    e.detail = std::move(detail);
    e.principal = principal;
    deps.audit->record(std::move(e));
}

asio::awaitable<Result<void>> Coordinator::Impl::advance(store::TaskRecord& t, TaskEvent event,
                                                         const std::string& reason,
                                                         const std::string& detail,
                                                         const std::string& principal) {
    const auto to = transition(status_of(t), event);
    if (!to)
        throw std::logic_error("task " + t.sr_id + ": " + std::string(to_string(event)) +
                               " is not allowed in " + t.status);
    t.status = std::string(to_string(*to));
    t.reason = reason;
    t.updated_ms = now_ms();
    deps.audit->upsert_task(t);
    audit_task(t, principal, "TASK_" + t.status, detail.empty() ? t.reason : detail);
    auto r = co_await durable();
    if (!r)
        logger->error("SR {}: status {} not yet durable: {}", t.sr_id, t.status,
                      r.error().message);
    co_return r;
}

asio::awaitable<void> Coordinator::Impl::notify(std::string_view event, const store::TaskRecord& t,
                                                json::object extra) {
    if (!deps.notifier) co_return;
    // The task as the API shows it, plus the event's own fields.
    json::object fields{{"sr_id", t.sr_id},           {"status", t.status},
                        {"inst_id", t.inst_id},       {"system_name", t.system_name},
                        {"requester", t.requester},   {"approver", t.approver},
                        {"rollout_id", t.rollout_id}, {"reason", t.reason},
                        {"created_ms", t.created_ms}, {"updated_ms", t.updated_ms}};
    for (auto& kv : extra) fields[kv.key()] = std::move(kv.value());
    auto r = co_await deps.notifier->enqueue(event, fields);
    if (!r)
        logger->error("SR {}: could not queue the {} notification: {}", t.sr_id, event,
                      r.error().message);
}

void Coordinator::Impl::notify_later(std::string_view event, const store::TaskRecord& t,
                                     json::object extra) {
    if (!deps.notifier) return;
    auto self = shared_from_this();
    asio::co_spawn(
        executor,
        [self, ev = std::string(event), t, extra = std::move(extra)]() mutable
        -> asio::awaitable<void> { co_await self->notify(ev, t, std::move(extra)); },
        asio::detached);
}

void Coordinator::Impl::notify_tier(std::string_view event, const store::TaskRecord& t,
                                    const deploy::TierProgress& tier, const std::string& reason) {
    // A tier the rollout skipped whole after a stop (gate, abort) is no news: no notice.
    if (event == event_tier_finished && tier.started == 0) return;
    json::object extra{{"tier", tier.tier}, {"counts", tier_counts(tier)}};
    if (!reason.empty()) extra["reason"] = reason;  // gate_tripped: why the gate stopped it
    notify_later(event, t, std::move(extra));
}

asio::awaitable<void> Coordinator::Impl::notify_started(std::shared_ptr<Work> w) {
    const auto& p = w->rollout->progress();
    json::array tiers;
    for (const auto& tier : p.tiers)
        if (tier.total > 0)
            tiers.push_back(json::object{{"tier", tier.tier}, {"total", tier.total}});
    const std::size_t tier_count = tiers.size();
    json::object extra{{"counts", json::object{{"total", p.nodes.size()}}},
                       {"tiers", tier_count},
                       {"principal", w->principal}};
    extra["tier_sizes"] = std::move(tiers);
    co_await notify(event_rollout_started, w->task, std::move(extra));
}

// --- Impl: inventory, artifacts ---------------------------------------------------------------

// Stored nodes are judged again, credentials too: the configuration (exec.allow, key_dirs,
// password bindings) may be stricter than when they were imported.
Result<deploy::Inventory> Coordinator::Impl::inventory_from(
    const std::vector<store::InventoryNodeRecord>& rows, const std::string& what) const {
    json::array nodes;
    for (const auto& r : rows) nodes.push_back(json::parse(r.payload));
    auto inv =
        deploy::parse_inventory(json::serialize(json::object{{"nodes", std::move(nodes)}}), what,
                                deps.engine.command_policy);
    if (!inv) return inv;
    if (auto ok = admit_inventory(*inv, deps.engine, deps.credentials.get(), what); !ok)
        return ok.error();
    return inv;
}

std::map<std::string, deploy::Node> Coordinator::Impl::nodes_by_name(
    const std::vector<store::InventoryNodeRecord>& rows) const {
    std::map<std::string, deploy::Node> nodes;
    for (const auto& row : rows) {
        auto inv = inventory_from({row}, "inventory node " + row.name);
        if (inv && !inv->nodes.empty()) nodes[row.name] = inv->nodes.front();
    }
    return nodes;
}

deploy::PipelineSettings Coordinator::Impl::pipeline_settings(const std::string& sr_id,
                                                              const std::string& rollout_id) const {
    deploy::PipelineSettings s = deps.engine.pipeline;
    s.sr_id = sr_id;
    s.rollout_id = rollout_id;
    s.owner = deps.owner;
    s.known_hosts = deps.known_hosts;
    s.host_key_policy = deps.engine.host_key_policy;
    s.credentials = deps.credentials;
    s.audit = deps.audit;
    s.logger = logger;
    return s;
}

// The nodes the SR's release is on, each with the backup that holds the node as it was before
// that release (deployed_restore_points: pure, unit-tested).
// A node may have a second inventory name (another inst_id/system_name, same host, port and
// deploy path): what was deployed through that name is part of the node's history too.
asio::awaitable<std::optional<std::map<std::string, DeployedNode>>>
Coordinator::Impl::deployed_nodes(const std::string& sr_id) {
    const std::string sr = sr_id;
    auto rows = co_await read([&](store::Database& db) { return db.node_histories(sr); });
    auto inventory =
        co_await read([](store::Database& db) { return db.inventory_nodes("", ""); });
    if (!rows || !inventory) co_return std::nullopt;
    std::map<std::string, std::string> target_of_name;
    std::multimap<std::string, std::string> names_at;
    for (const auto& [name, node] : nodes_by_name(*inventory)) {
        target_of_name[name] = target_of(node);
        names_at.emplace(target_of(node), name);
    }
    std::set<std::string> ours;
    for (const auto& r : *rows)
        if (r.sr_id == sr) ours.insert(r.result.node);
    std::map<std::string, std::string> alias_of;  // another name -> the SR's name for it
    for (const auto& name : ours) {
        auto t = target_of_name.find(name);
        if (t == target_of_name.end()) continue;
        for (auto [it, end] = names_at.equal_range(t->second); it != end; ++it)
            if (!ours.count(it->second)) alias_of.emplace(it->second, name);
    }
    if (alias_of.empty()) co_return deployed_restore_points(sr, *rows);
    std::vector<std::string> also;
    for (const auto& [alias, name] : alias_of) also.push_back(alias);
    auto all = co_await read([&](store::Database& db) { return db.node_histories(sr, also); });
    if (!all) co_return std::nullopt;
    for (auto& r : *all)
        if (auto a = alias_of.find(r.result.node); a != alias_of.end()) r.result.node = a->second;
    std::stable_sort(all->begin(), all->end(), [](const auto& x, const auto& y) {
        return std::tie(x.result.node, x.rollout_created_ms, x.result.rollout_id) <
               std::tie(y.result.node, y.rollout_created_ms, y.result.rollout_id);
    });
    co_return deployed_restore_points(sr, *all);
}

asio::awaitable<ServiceResult<std::vector<deploy::ArtifactSpec>>>
Coordinator::Impl::approved_specs(const store::TaskRecord& task) {
    std::vector<deploy::ArtifactSpec> specs;
    const auto payload = payload_of(task);
    if (const auto* set = payload.if_contains("approved_artifacts")) {
        auto s = artifact_set_from_json(*set, "approved_artifacts");
        if (s) {
            for (const auto& [name, sha] : *s) {
                deploy::ArtifactSpec a;
                a.file_name = name;
                a.sha256 = sha;
                specs.push_back(std::move(a));
            }
            co_return specs;
        }
    }
    const std::string sr = task.sr_id;
    auto arts = co_await read([&](store::Database& db) { return db.artifacts_for(sr); });
    if (!arts) co_return store_error(arts.error());
    for (const auto& a : *arts) {
        deploy::ArtifactSpec s;
        s.file_name = a.name;
        s.sha256 = a.sha256;
        s.local_path = a.path;
        specs.push_back(std::move(s));
    }
    co_return specs;
}

// After a failed attempt and a retry, the retry's backup holds the first attempt's build, so the
// node as it was before the SR is the FIRST backup the SR took of it -- unless another SR
// changed the node in between (deployed over a build a failed attempt left, or rolled its own
// back): then the node before this SR's release is the first backup taken after that change.
// Only what the SR deployed after the last foreign change counts as its release on the node.
std::map<std::string, DeployedNode> deployed_restore_points(
    const std::string& sr_id, const std::vector<store::NodeHistoryRow>& rows) {
    std::map<std::string, std::vector<const store::NodeHistoryRow*>> by_node;
    for (const auto& r : rows) by_node[r.result.node].push_back(&r);
    std::map<std::string, DeployedNode> out;
    for (const auto& [name, history] : by_node) {
        std::size_t start = 0;
        for (std::size_t i = 0; i < history.size(); ++i) {
            const auto& h = *history[i];
            const auto& st = h.result.status;
            if (h.sr_id != sr_id && (st == "DEPLOYED" || st == "ROLLED_BACK_BY_PM"))
                start = i + 1;
        }
        DeployedNode d;
        bool deployed = false, ours = false;
        for (std::size_t i = start; i < history.size(); ++i) {
            const auto& h = *history[i];
            if (h.sr_id != sr_id) continue;
            ours = true;
            if (d.first_backup.empty()) d.first_backup = h.result.backup_path;
            deployed = deployed || h.result.status == "DEPLOYED";
            d.latest = h.result;
        }
        if (ours && deployed && d.latest.status != "ROLLED_BACK_BY_PM") out.emplace(name, d);
    }
    return out;
}

// --- Impl: claims ------------------------------------------------------------------------------

void Coordinator::Impl::hold(const std::string& sr_id, ClaimKind kind,
                             const std::vector<deploy::Node>& nodes) {
    std::vector<std::string> names, targets;
    for (const auto& n : nodes) {
        names.push_back(n.name);
        if (!n.host.empty()) targets.push_back(target_of(n));  // gone from the inventory: by name
    }
    claims.claim(sr_id, kind, names);
    target_claims.claim(sr_id, kind, targets);
}

void Coordinator::Impl::hold_again(const std::string& sr_id, ClaimKind kind) {
    claims.claim(sr_id, kind, claims.nodes_of(sr_id));
    target_claims.claim(sr_id, kind, target_claims.nodes_of(sr_id));
}

void Coordinator::Impl::release_claims(const std::string& sr_id) {
    claims.release(sr_id);
    target_claims.release(sr_id);
}

std::vector<ClaimTable::Conflict> Coordinator::Impl::claim_conflicts(
    const std::string& sr_id, const std::vector<deploy::Node>& nodes) const {
    std::vector<std::string> names, targets;
    std::map<std::string, std::vector<std::string>> names_at;  // target -> caller's names
    for (const auto& n : nodes) {
        names.push_back(n.name);
        targets.push_back(target_of(n));
        names_at[targets.back()].push_back(n.name);
    }
    std::map<std::string, ClaimTable::Conflict> by_sr;
    for (auto& c : claims.conflicts(sr_id, names)) by_sr.emplace(c.sr_id, std::move(c));
    for (const auto& c : target_claims.conflicts(sr_id, targets)) {
        auto& merged = by_sr.try_emplace(c.sr_id, ClaimTable::Conflict{c.sr_id, c.kind, {}})
                           .first->second;
        for (const auto& t : c.nodes)
            for (const auto& name : names_at[t]) merged.nodes.push_back(name);
    }
    std::vector<ClaimTable::Conflict> out;
    for (auto& [sr, c] : by_sr) {
        std::sort(c.nodes.begin(), c.nodes.end());
        c.nodes.erase(std::unique(c.nodes.begin(), c.nodes.end()), c.nodes.end());
        out.push_back(std::move(c));
    }
    return out;
}

// --- Impl: work -------------------------------------------------------------------------------

// Runs fn(i) for i in [0, n) with at most `limit` at once on the loop; waits for all.
asio::awaitable<void> Coordinator::Impl::run_bounded(
    std::size_t n, std::size_t limit, const std::function<asio::awaitable<void>(std::size_t)>& fn) {
    if (n == 0) co_return;
    limit = std::max<std::size_t>(1, limit);
    auto gate = std::make_shared<asio::steady_timer>(executor);
    auto running = std::make_shared<std::size_t>(0);
    auto finished = std::make_shared<std::size_t>(0);
    auto wait = [gate]() -> asio::awaitable<void> {
        gate->expires_at(Clock::time_point::max());
        boost::system::error_code ec;
        co_await gate->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    };
    for (std::size_t i = 0; i < n; ++i) {
        while (*running >= limit) co_await wait();
        ++*running;
        asio::co_spawn(
            executor,
            [fn, i, gate, running, finished]() -> asio::awaitable<void> {
                try {
                    co_await fn(i);
                } catch (const std::exception&) {
                    // fn reports its own failures; nothing may escape a detached spawn
                }
                --*running;
                ++*finished;
                gate->cancel();
            },
            asio::detached);
    }
    while (*finished < n) co_await wait();
}

void Coordinator::Impl::end_work(const std::string& sr_id, const std::shared_ptr<Work>& w) {
    w->done = true;
    w->done_signal.cancel();
    auto it = active.find(sr_id);
    if (it != active.end() && it->second == w) active.erase(it);
    changed.cancel();
}

asio::awaitable<void> Coordinator::Impl::settle(const std::string& sr_id) {
    for (auto it = active.find(sr_id); it != active.end() && it->second->finishing;
         it = active.find(sr_id))
        co_await wait_done(it->second);
}

asio::awaitable<void> Coordinator::Impl::wait_done(std::shared_ptr<Work> w) {
    while (!w->done) {
        boost::system::error_code ec;
        co_await w->done_signal.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
}

asio::awaitable<void> Coordinator::Impl::run_deploy(std::shared_ptr<Work> w) {
    auto self = shared_from_this();  // the service outlives no rollout of its own
    co_await notify_started(w);
    deploy::RolloutReport report = co_await w->rollout->run();
    ++stats.rollouts_by_status[std::string(deploy::to_string(report.status))];
    stats.rollouts_by_duration
        .try_emplace(std::string(deploy::to_string(report.status)), rollout_duration_buckets())
        .first->second.observe(std::chrono::duration<double>(report.duration).count());
    for (const auto& n : report.nodes)
        if (n.state == deploy::NodeState::done)
            node_outcome_metric(deploy::to_string(n.report.outcome));
        else if (n.state == deploy::NodeState::skipped)
            node_outcome_metric("SKIPPED");
    const bool success = report.status == deploy::RolloutStatus::succeeded;
    // The nodes now on the SR's build stay claimed while the PM decides; a failed rollout's
    // claim ends (its nodes were rolled back or left as the gate found them).
    if (success)
        hold(w->task.sr_id, ClaimKind::awaiting_verdict, deployed_in(report));
    else
        release_claims(w->task.sr_id);
    std::string reason = report.reason;
    if (reason.empty() && !success)
        reason = std::to_string(report.failed) + " of " + std::to_string(report.nodes.size()) +
                 " node(s) failed";
    // Arguments as named values: GCC 12 destroys temporaries of a conditional expression
    // inside a co_await expression twice.
    const TaskEvent event = success ? TaskEvent::rollout_succeeded : TaskEvent::rollout_failed;
    const std::string task_reason = success ? std::string() : reason;
    std::string detail = "rollout " + std::string(deploy::to_string(report.status)) + ": " +
                         std::to_string(report.deployed) + " deployed, " +
                         std::to_string(report.failed) + " failed, " +
                         std::to_string(report.skipped) + " not started";
    if (!reason.empty()) detail += "; " + reason;
    w->finishing = true;
    (void)co_await advance(w->task, event, task_reason, detail, w->principal);
    co_await failpoint_pause("WORK_FINISH");
    json::object counts{{"total", report.nodes.size()},
                        {"deployed", report.deployed},
                        {"failed", report.failed},
                        {"skipped", report.skipped}};
    json::object extra;
    extra["rollout_status"] = deploy::to_string(report.status);
    extra["counts"] = counts;
    const std::string_view hook = success ? "pm_review_needed" : "deployment_failed";
    co_await notify(hook, w->task, std::move(extra));
    w->final_body = json::object{{"sr_id", w->task.sr_id},
                                 {"success", success},
                                 {"rollout_id", w->rollout_id},
                                 {"status", w->task.status},
                                 {"reason", w->task.reason}};
    end_work(w->task.sr_id, w);
}

// Rolls back every node the SR deployed (deployed_nodes) to the first backup the SR took of it,
// after checking on each node that the SR's approved release is still the live one: a node
// running anything else is refused by name and left as it is. Nodes whose latest row says
// ROLLED_BACK_BY_PM are done already (a re-run after a restart). Returns (rolled back, failed).
//
// A rollback resumed after a crash does not verify: a node it was restoring when the process
// died may hold the old build already (the restore is one rename) or be mid-step under its own
// lock, and refusing it would leave it so; the SR's claim kept every other SR off these nodes
// all along (recovery runs before the listener opens).
asio::awaitable<std::pair<std::size_t, std::size_t>> Coordinator::Impl::pm_rollback_nodes(
    const store::TaskRecord& task, bool verify_live, bool check_marker) {
    const std::string inst = task.inst_id, sys = task.system_name;
    auto deployed = co_await deployed_nodes(task.sr_id);
    auto rows = co_await read([&](store::Database& db) { return db.inventory_nodes(inst, sys); });
    auto expected = co_await approved_specs(task);
    if (!deployed || !rows || !expected) {
        logger->error("SR {}: cannot read the rollouts' nodes for the rollback", task.sr_id);
        co_return std::make_pair(std::size_t{0}, std::size_t{1});
    }
    std::vector<store::NodeResult> todo;
    for (auto& [name, d] : *deployed) {
        store::NodeResult r = d.latest;
        r.backup_path = d.first_backup;
        todo.push_back(std::move(r));
    }
    const auto nodes = nodes_by_name(*rows);
    auto ok = std::make_shared<std::size_t>(0);
    auto failed = std::make_shared<std::size_t>(0);
    auto settings =
        std::make_shared<deploy::PipelineSettings>(pipeline_settings(task.sr_id, task.rollout_id));
    settings->reclaim_own_lock = true;  // a restart may find this rollback's own locks
    auto live = std::make_shared<std::vector<deploy::ArtifactSpec>>();
    if (verify_live) *live = std::move(*expected);
    deploy::MarkerExpectation expect;
    if (verify_live && check_marker) expect.sr_id = task.sr_id;
    const std::function<asio::awaitable<void>(std::size_t)> one =
        [this, &todo, &nodes, settings, live, ok, failed,
         expect](std::size_t i) -> asio::awaitable<void> {
        store::NodeResult r = todo[i];
        auto it = nodes.find(r.node);
        deploy::NodeReport rep;
        if (it == nodes.end()) {
            rep.outcome = deploy::NodeOutcome::failed_unchanged;
            rep.error = Error(errc::invalid_argument,
                              "node '" + r.node + "' is no longer in the inventory");
        } else {
            rep = co_await deploy::rollback_release(it->second, r.backup_path, *settings, *live,
                                                    expect);
        }
        const bool good = rep.outcome == deploy::NodeOutcome::rolled_back;
        ++*(good ? ok : failed);
        if (good)
            r.status = "ROLLED_BACK_BY_PM";
        else if (rep.failed_step == "VERIFY_LIVE" && rep.error.code == errc::precheck_failed)
            r.status = "PM_ROLLBACK_REFUSED";  // runs another release now: not overwritten
        else
            r.status = "PM_ROLLBACK_FAILED";
        r.step = good ? "ROLLBACK" : rep.failed_step;
        r.error = good ? std::string() : rep.error.message;
        r.finished_ms = now_ms();
        node_outcome_metric(r.status);
        deps.audit->upsert_node_result(std::move(r));
    };
    co_await run_bounded(todo.size(), deps.engine.rollout.max_sessions, one);
    co_return std::make_pair(*ok, *failed);
}

asio::awaitable<void> Coordinator::Impl::run_pm_rollback(std::shared_ptr<Work> w) {
    auto self = shared_from_this();
    store::AuditEvent e;
    e.sr_id = w->task.sr_id;
    e.rollout_id = w->task.rollout_id;
    const std::string kind = w->operator_rollback ? "OPERATOR_ROLLBACK" : "PM_ROLLBACK";
    e.step = kind;
    e.event = kind + "_START";
    e.principal = w->principal;
    deps.audit->record(e);
    auto [ok, failed] = co_await pm_rollback_nodes(w->task, !w->resumed, w->operator_rollback);
    e.event = kind + "_DONE";
    e.detail = std::to_string(ok) + " rolled back, " + std::to_string(failed) + " failed";
    deps.audit->record(e);
    release_claims(w->task.sr_id);
    const bool good = failed == 0;
    std::string reason = w->task.reason;
    if (!good)
        reason = std::to_string(failed) +
                 " node(s) could not be rolled back or no longer run this release (left as "
                 "they are); see GET /api/deploy/" +
                 w->task.sr_id + " and the audit log";
    const TaskEvent event = good ? TaskEvent::rollback_succeeded : TaskEvent::rollback_failed;
    w->finishing = true;
    (void)co_await advance(w->task, event, reason, e.detail, w->principal);
    co_await failpoint_pause("WORK_FINISH");
    json::object extra;
    extra["rolled_back"] = ok;
    extra["failed"] = failed;
    const std::string_view hook = good ? "rollback_completed" : "rollback_failed";
    co_await notify(hook, w->task, std::move(extra));
    w->final_body = json::object{{"sr_id", w->task.sr_id},
                                 {"status", w->task.status},
                                 {"rolled_back", ok},
                                 {"failed", failed}};
    end_work(w->task.sr_id, w);
}

asio::awaitable<void> Coordinator::Impl::drain(std::chrono::milliseconds grace) {
    stopping = true;
    for (auto& [sr, w] : active)
        if (w->rollout)
            w->rollout->stop_starting(
                "service stopping (SIGTERM): no new node starts; nodes in flight finish");
    const auto deadline = Clock::now() + grace;
    bool cancelled = false;
    while (!active.empty()) {
        for (auto& [sr, w] : active)
            if (w->rollout) {
                w->rollout->stop_starting("service stopping (SIGTERM): no new node starts");
                if (cancelled) w->rollout->cancel("service stopping: shutdown grace exceeded");
            }
        if (!cancelled && Clock::now() >= deadline) {
            cancelled = true;
            logger->warn("shutdown grace of {} s exceeded: cancelling {} rollout(s)",
                         grace.count() / 1000, active.size());
            for (auto& [sr, w] : active)
                if (w->rollout)
                    w->rollout->cancel(
                        "service stopping: shutdown grace exceeded; nodes in "
                        "flight are rolled back");
        }
        changed.expires_at(cancelled ? Clock::time_point::max() : deadline);
        boost::system::error_code ec;
        co_await changed.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    (void)co_await durable();
}

// --- operations -------------------------------------------------------------------------------

Coordinator::Coordinator(asio::any_io_executor executor, DeployServiceDeps deps)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(deps))) {
    if (!impl_->deps.audit) throw std::logic_error("the coordinator needs an audit writer");
}

Coordinator::~Coordinator() = default;

asio::awaitable<void> Coordinator::read_on_pool(std::function<void(store::Database&)> fn) {
    co_await impl_->read([fn = std::move(fn)](store::Database& db) {
        fn(db);
        return 0;
    });
}

asio::awaitable<ServiceResult<Coordinator::TaskView>> Coordinator::create_task(
    NewTask request, std::string principal) {
    Impl& m = *impl_;
    const std::string sr_id = request.sr_id;
    if (!request.requester.empty())
        if (auto ok = check_identity("requester", request.requester); !ok) co_return ok.error();
    auto existing = co_await m.read([&](store::Database& db) { return db.task(sr_id); });
    if (!existing) co_return store_error(existing.error());
    if (*existing || m.active.count(sr_id))
        co_return ServiceError(ServiceErrc::conflict, "task " + sr_id + " exists already");
    store::TaskRecord t;
    t.sr_id = sr_id;
    t.inst_id = request.inst_id;
    t.system_name = request.system_name;
    t.requester = request.requester;
    t.status = std::string(to_string(TaskStatus::created));
    t.created_ms = now_ms();
    t.updated_ms = t.created_ms;
    json::object payload;
    if (!request.title.empty()) payload["title"] = request.title;
    t.payload = json::serialize(payload);
    m.deps.audit->upsert_task(t);
    m.audit_task(t, principal, "TASK_CREATED", "requested by " + t.requester);
    if (auto d = co_await m.durable(); !d) co_return store_error(d.error());
    TaskView v;
    v.task = std::move(t);
    co_return v;
}

asio::awaitable<ServiceResult<Coordinator::TaskView>> Coordinator::task(std::string sr_id) {
    Impl& m = *impl_;
    auto t = co_await m.read([&](store::Database& db) { return db.task(sr_id); });
    if (!t) co_return store_error(t.error());
    if (!*t) co_return no_task(sr_id);
    auto arts = co_await m.read([&](store::Database& db) { return db.artifacts_for(sr_id); });
    if (!arts) co_return store_error(arts.error());
    TaskView v;
    v.task = std::move(**t);
    v.artifacts = std::move(*arts);
    co_return v;
}

asio::awaitable<ServiceResult<Coordinator::Imported>> Coordinator::import_inventory(
    json::object body, std::string principal) {
    Impl& m = *impl_;
    // The engine's own strict parser judges the document: the same errors as `guardia deploy`;
    // then the service's rules for credentials (key_dirs, passwords bound to hosts).
    auto inv = deploy::parse_inventory(json::serialize(body), "request body",
                                       m.deps.engine.command_policy);
    if (!inv) co_return ServiceError(ServiceErrc::bad_request, inv.error().message);
    if (auto ok = admit_inventory(*inv, m.deps.engine, m.deps.credentials.get(), "request body");
        !ok)
        co_return ServiceError(ServiceErrc::bad_request, ok.error().message);
    const auto& nodes = body.at("nodes").as_array();
    auto stored = co_await m.read([](store::Database& db) { return db.inventory_nodes("", ""); });
    if (!stored) co_return store_error(stored.error());
    const InventoryChanges changes = diff_inventory(*stored, nodes);
    Imported out;
    std::vector<std::string>& names = out.names;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
        store::InventoryNodeRecord r;
        r.name = inv->nodes[i].name;
        r.inst_id = inv->nodes[i].inst_id;
        r.system_name = inv->nodes[i].system_name;
        r.payload = json::serialize(nodes[i]);
        m.deps.audit->upsert_inventory_node(std::move(r));
        names.push_back(inv->nodes[i].name);
    }
    store::AuditEvent e;
    e.step = "INVENTORY";
    e.event = "INVENTORY_IMPORTED";
    e.detail = std::to_string(nodes.size()) + " node(s): " + changes_summary(changes);
    e.principal = principal;
    m.deps.audit->record(std::move(e));
    if (auto d = co_await m.durable(); !d) co_return store_error(d.error());
    out.changes = changes_json(changes);
    co_return out;
}

asio::awaitable<ServiceResult<std::vector<std::string>>> Coordinator::list_inventory(
    std::string inst_id, std::string system_name) {
    auto rows = co_await impl_->read(
        [&](store::Database& db) { return db.inventory_nodes(inst_id, system_name); });
    if (!rows) co_return store_error(rows.error());
    std::vector<std::string> out;
    for (auto& r : *rows) out.push_back(std::move(r.payload));
    co_return out;
}

asio::awaitable<ServiceResult<store::ArtifactRecord>> Coordinator::stage(StageRequest request,
                                                                         std::string principal) {
    Impl& m = *impl_;
    const std::string sr_id = request.sr_id, name = request.name;
    const std::string sha256 = lower(request.sha256);
    if (!valid_artifact_name(name))
        co_return ServiceError(ServiceErrc::bad_request,
                               "name: 1-128 characters of A-Z a-z 0-9 . _ - (not only dots)");
    if (!valid_sha256(sha256))
        co_return ServiceError(ServiceErrc::bad_request,
                               "sha256: required, 64 hexadecimal characters");
    co_await m.settle(sr_id);
    auto t = co_await m.read([&](store::Database& db) { return db.task(sr_id); });
    if (!t) co_return store_error(t.error());
    if (!*t) co_return no_task(sr_id);
    if (m.active.count(sr_id) || !can_stage(status_of(**t)))
        co_return ServiceError(ServiceErrc::conflict,
                               "task " + sr_id + " is " +
                                   (m.active.count(sr_id) ? m.active[sr_id]->task.status
                                                          : (*t)->status) +
                                   ": artifacts can be staged in CREATED or FAILED_ROLLBACK");
    ++m.staging_now[sr_id];
    ++m.staging_started[sr_id];
    struct Staging {
        std::map<std::string, int>& now;
        const std::string& sr;
        ~Staging() {
            if (--now[sr] == 0) now.erase(sr);
        }
    } staging{m.staging_now, sr_id};
    const std::string dir = m.deps.service.state_dir + "/artifacts/" + sr_id;
    const std::string final_path = dir + "/" + name;
    // Unique per staging: two uploads of one name never write the same temp file.
    const std::string tmp = final_path + ".staging-" + std::to_string(::getpid()) + "-" +
                            std::to_string(++m.staging_seq);
    struct Staged {
        Result<std::int64_t> size = Error(errc::invalid_argument, "not run");
        std::string actual;
    };
    const ArtifactWriter& write_to = request.write;
    Staged st = co_await run_blocking([&]() {
        Staged s;
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        if (ec) {
            s.size = Error(errc::local_io_failed, "cannot create " + dir + ": " + ec.message());
            return s;
        }
        s.size = write_to(tmp);
        if (!s.size) {
            std::filesystem::remove(tmp, ec);
            return s;
        }
        auto d = deploy::describe_artifact(tmp, 0);  // hashes; keeps no bytes
        if (!d) {
            s.size = d.error();
        } else {
            s.actual = d->sha256;
            if (s.actual == sha256) std::filesystem::rename(tmp, final_path, ec);
            if (s.actual != sha256 || ec) std::filesystem::remove(tmp, ec);
        }
        return s;
    });
    if (!st.size) co_return staging_failure(st.size.error());
    if (st.actual != sha256) {
        // The digest of bytes the caller did not send (the path form) is never told: it would
        // let a caller learn the hash of any file the service can read, and retry with it.
        std::string msg = request.caller_sent_bytes
                              ? "sha256 of the received bytes is " + st.actual + ", not " +
                                    sha256 + ": nothing staged"
                              : "the file's sha256 is not " + sha256 + ": nothing staged";
        co_return ServiceError(ServiceErrc::checksum_mismatch, std::move(msg));
    }
    store::ArtifactRecord a;
    a.sr_id = sr_id;
    a.name = name;
    a.path = final_path;
    a.sha256 = sha256;
    a.size = *st.size;
    a.created_ms = now_ms();
    m.deps.audit->upsert_artifact(a);
    store::AuditEvent e;
    e.sr_id = sr_id;
    e.step = "ARTIFACT";
    e.event = "ARTIFACT_STAGED";
    e.detail = name + " sha256 " + sha256 + " (" + std::to_string(a.size) + " bytes)";
    e.principal = principal;
    m.deps.audit->record(std::move(e));
    // Re-staging after a trigger voids that trigger's approval: the approver approved other
    // bytes. The next trigger approves anew (and records the new set).
    store::TaskRecord task = **t;
    auto payload = payload_of(task);
    if (!task.approver.empty() || payload.contains("approved_artifacts")) {
        const std::string was = task.approver;
        task.approver.clear();
        payload.erase("approved_artifacts");
        task.payload = json::serialize(payload);
        task.updated_ms = now_ms();
        m.deps.audit->upsert_task(task);
        m.audit_task(task, principal, "APPROVAL_VOIDED",
                     "artifact " + name + " re-staged after the trigger approved by " + was +
                         ": a new trigger must approve the new set");
    }
    if (auto d = co_await m.durable(); !d) co_return store_error(d.error());
    co_return a;
}

asio::awaitable<ServiceResult<Coordinator::Answer>> Coordinator::trigger(TriggerRequest request,
                                                                         std::string principal) {
    Impl& m = *impl_;
    const std::string sr_id = request.sr_id, approver = request.approver;
    if (!valid_sr_id(sr_id)) co_return no_task(sr_id);
    // Idempotency: the same key for the same request gets the first answer again.
    // The key is the client's own (another client's keys are not visible to it), and the
    // request it names includes the approved set when the request names one.
    std::string request_id = "POST /api/deploy/trigger " + sr_id + " " + approver;
    if (request.expected) request_id += " " + json::serialize(to_json(*request.expected));
    const std::string key = request.idempotency_key.empty()
                                ? std::string()
                                : principal + "\x1f" + request.idempotency_key;
    if (!key.empty()) {
        std::optional<Impl::IdemAnswer> seen;
        if (auto it = m.idempotent.find(key); it != m.idempotent.end()) seen = it->second;
        if (!seen) {
            auto k = co_await m.read([&](store::Database& db) { return db.idempotency(key); });
            if (!k) co_return store_error(k.error());
            if (*k) seen = Impl::IdemAnswer{(*k)->request, (*k)->status, (*k)->body};
        }
        if (seen) {
            if (seen->request != request_id)
                co_return ServiceError(
                    ServiceErrc::idempotency_key_reused,
                    "Idempotency-Key was used for another request: " + seen->request);
            Answer a;
            a.status = seen->status;
            auto v = json::parse(seen->body);
            if (v.is_object()) a.body = std::move(v.get_object());
            co_return a;
        }
    }

    co_await m.settle(sr_id);
    auto task = co_await m.read([&](store::Database& db) { return db.task(sr_id); });
    if (!task) co_return store_error(task.error());
    if (!*task) co_return no_task(sr_id);
    store::TaskRecord t = **task;
    if (auto ok = check_approver(t.requester, approver, m.deps.service.forbid_self_approval); !ok)
        co_return ok.error();
    if (m.active.count(sr_id))
        co_return ServiceError(ServiceErrc::conflict,
                               "SR " + sr_id + " is already " + m.active[sr_id]->task.status);
    if (!transition(status_of(t), TaskEvent::trigger))
        co_return ServiceError(ServiceErrc::conflict,
                               "task " + sr_id + " is " + t.status +
                                   ": only CREATED or FAILED_ROLLBACK tasks can be deployed");
    const std::uint64_t stagings_before = m.staging_started[sr_id];
    auto arts = co_await m.read([&](store::Database& db) { return db.artifacts_for(sr_id); });
    if (!arts) co_return store_error(arts.error());
    if (arts->empty())
        co_return ServiceError(ServiceErrc::conflict, "task " + sr_id + " has no staged artifact");
    ArtifactSet staged_set;
    for (const auto& a : *arts) staged_set[a.name] = a.sha256;
    if (request.expected)
        if (auto ok = check_expected_set(*request.expected, staged_set); !ok) co_return ok.error();
    const std::string inst = t.inst_id, sys = t.system_name;
    auto rows = co_await m.read([&](store::Database& db) { return db.inventory_nodes(inst, sys); });
    if (!rows) co_return store_error(rows.error());
    if (rows->empty())
        co_return ServiceError(ServiceErrc::conflict, "no inventory node has inst_id " + inst +
                                                          " and system_name " + sys);
    auto inventory = m.inventory_from(*rows, "inventory of " + inst + "/" + sys);
    if (!inventory) co_return ServiceError(ServiceErrc::conflict, inventory.error().message);
    if (auto ok = deploy::validate_rollout(m.deps.engine.rollout, *inventory); !ok)
        co_return ServiceError(ServiceErrc::conflict, "configuration: " + ok.error().message);
    if (m.staging_now.count(sr_id) || m.staging_started[sr_id] != stagings_before)
        co_return ServiceError(ServiceErrc::conflict,
                               "an artifact of SR " + sr_id +
                                   " is being staged (or just was): trigger again");
    // Claim the SR and its nodes before the next suspension: a concurrent trigger of this SR
    // sees it running, one of another SR sees the nodes held.
    if (m.active.count(sr_id))
        co_return ServiceError(ServiceErrc::conflict,
                               "SR " + sr_id + " is already " + m.active[sr_id]->task.status);
    if (m.stopping) co_return stopping_error();
    if (auto held = m.claim_conflicts(sr_id, inventory->nodes); !held.empty()) {
        ServiceError e(ServiceErrc::node_claimed,
                       "SR " + sr_id + " would deploy to nodes another SR's release holds: " +
                           describe(held) +
                           ". Accept or reject that SR first (its PM rollback needs these nodes "
                           "as it left them).");
        json::array by;
        for (const auto& c : held) {
            json::array names;
            for (const auto& n : c.nodes) names.push_back(json::string(n));
            by.push_back(json::object{
                {"sr_id", c.sr_id}, {"state", to_string(c.kind)}, {"nodes", std::move(names)}});
        }
        e.details["claimed_by"] = std::move(by);
        co_return e;
    }
    auto w = std::make_shared<Work>(m.executor);
    w->kind = WorkKind::deploy;
    w->principal = principal;
    m.active[sr_id] = w;
    m.hold(sr_id, ClaimKind::deploying, inventory->nodes);
    // Any exit before run_deploy owns `w` (an exception included) releases both claims.
    struct Release {
        Impl& m;
        const std::string& sr;
        std::shared_ptr<Work> w;
        bool armed = true;
        ~Release() {
            if (!armed) return;
            m.release_claims(sr);
            m.end_work(sr, w);
        }
    } release{m, sr_id, w};

    // The staged files are hashed again: what ships is what was approved.
    std::vector<store::ArtifactRecord> staged = *arts;
    auto specs = co_await run_blocking([&staged]() -> Result<std::vector<deploy::ArtifactSpec>> {
        std::vector<deploy::ArtifactSpec> out;
        for (const auto& s : staged) {
            auto d = deploy::describe_artifact(s.path);
            if (!d) return d.error();
            if (d->sha256 != s.sha256)
                return Error(errc::checksum_mismatch,
                             "staged artifact " + s.name + " changed on disk since it was staged");
            d->file_name = s.name;
            out.push_back(std::move(*d));
        }
        return out;
    });
    if (!specs) co_return ServiceError(ServiceErrc::conflict, specs.error().message);
    w->created_ms = now_ms();
    w->rollout_id = sr_id + "-" + utc_compact() + "-" + std::to_string(::getpid()) + "-" +
                    std::to_string(++m.rollout_seq);
    t.approver = approver;
    t.rollout_id = w->rollout_id;
    // The approved set: what this trigger ships, by sha256. Re-staging voids it (stage()).
    auto payload = payload_of(t);
    payload["approved_artifacts"] = to_json(staged_set);
    payload["approved_by_principal"] = principal;
    // Everyone who ever approved this SR: none of them may give its PM verdict (four eyes).
    json::array approvers;
    if (const auto* a = payload.if_contains("approvers"); a && a->is_array()) approvers = a->get_array();
    approvers.push_back(json::string(approver));
    payload["approvers"] = std::move(approvers);
    t.payload = json::serialize(payload);
    w->task = t;
    std::string approved;
    for (const auto& [name, sha] : staged_set)
        approved += (approved.empty() ? "" : ", ") + name + " " + sha;
    if (auto d = co_await m.advance(w->task, TaskEvent::trigger, "",
                                    "approved by " + approver + ": " + approved, principal);
        !d)
        co_return store_error(d.error());
    auto settings = m.pipeline_settings(sr_id, w->rollout_id);
    w->rollout =
        std::make_unique<deploy::Rollout>(m.executor, std::move(*inventory), std::move(*specs),
                                          m.deps.engine.rollout, std::move(settings));
    Impl* self = &m;
    std::weak_ptr<Work> weak = w;
    w->step_timer = std::make_unique<WorkObserver>(
        [self](const std::string& step, double s) {
            self->stats.steps.try_emplace(step, step_duration_buckets()).first->second.observe(s);
        },
        [self, weak](const deploy::TierProgress& tier) {
            auto work = weak.lock();
            if (!work) return;
            json::object extra{{"tier", tier.tier},
                               {"awaiting_approval", true},
                               {"counts", tier_counts(tier)}};
            self->notify_later(event_tier_gate, work->task, std::move(extra));
        });
    w->step_timer->set_tier_notice(
        [self, weak](std::string_view event, const deploy::TierProgress& tier,
                     const std::string& reason) {
            if (auto work = weak.lock()) self->notify_tier(event, work->task, tier, reason);
        });
    w->rollout->set_observer(w->step_timer.get());
    if (m.stopping)  // drain() began while this trigger was hashing or writing DEPLOYING
        w->rollout->stop_starting("service stopping (SIGTERM): no new node starts");
    release.armed = false;
    asio::co_spawn(m.executor, m.run_deploy(w), asio::detached);

    Answer a;
    a.status = 202;
    a.body = json::object{{"sr_id", sr_id}, {"rollout_id", w->rollout_id}, {"status", "DEPLOYING"}};
    a.work = w;
    if (!key.empty()) {
        m.idempotent[key] = Impl::IdemAnswer{request_id, 202, json::serialize(a.body)};
        store::IdempotencyRecord k;
        k.key = key;
        k.request = request_id;
        k.status = 202;
        k.body = json::serialize(a.body);
        k.created_ms = now_ms();
        m.deps.audit->record_idempotency(std::move(k));
        (void)co_await m.durable();
    }
    co_return a;
}

asio::awaitable<ServiceResult<store::TaskRecord>> Coordinator::Impl::idle_task(std::string sr_id) {
    co_await settle(sr_id);
    auto task = co_await read([&](store::Database& db) { return db.task(sr_id); });
    if (!task) co_return store_error(task.error());
    if (!*task) co_return no_task(sr_id);
    if (active.count(sr_id))
        co_return ServiceError(ServiceErrc::conflict,
                               "SR " + sr_id + " is " + active[sr_id]->task.status);
    co_return **task;
}

asio::awaitable<ServiceResult<Coordinator::Answer>> Coordinator::verdict(VerdictRequest request,
                                                                         std::string principal) {
    Impl& m = *impl_;
    const std::string sr_id = request.sr_id;
    auto task = co_await m.idle_task(sr_id);
    if (!task) co_return task.error();
    store::TaskRecord t = *task;
    if (status_of(t) != TaskStatus::pending_pm_validation)
        co_return ServiceError(ServiceErrc::conflict,
                               "task " + sr_id + " is " + t.status +
                                   ": a verdict is taken in PENDING_PM_VALIDATION only");
    std::vector<std::string> approvers{t.approver};
    const json::object payload = payload_of(t);
    if (const auto* a = payload.if_contains("approvers"); a && a->is_array())
        for (const auto& v : a->get_array())
            if (v.is_string()) approvers.emplace_back(v.get_string());
    if (auto ok = check_verdict_author(request.pm_id, t.requester, approvers,
                                       m.deps.service.four_eyes);
        !ok)
        co_return ok.error();
    const std::string who =
        "PM " + request.pm_id + (request.comment.empty() ? "" : ": " + request.comment);
    Answer a;
    if (request.accepted) {
        // Claimed while COMPLETED becomes durable: a concurrent reject must get 409, not roll back.
        auto claim = std::make_shared<Work>(m.executor);
        claim->kind = WorkKind::verdict;
        claim->task = t;
        m.active[sr_id] = claim;
        auto d = co_await m.advance(t, TaskEvent::accept, request.comment, "accepted by " + who,
                                    principal);
        m.end_work(sr_id, claim);
        if (!d) co_return store_error(d.error());
        m.release_claims(sr_id);  // the release is the nodes' new normal
        a.status = 200;
        a.body = json::object{{"sr_id", sr_id}, {"status", t.status}};
        co_return a;
    }
    if (m.stopping) co_return stopping_error();
    auto w = std::make_shared<Work>(m.executor);
    w->kind = WorkKind::rollback;
    w->rollout_id = t.rollout_id;
    w->task = t;
    w->principal = principal;
    m.active[sr_id] = w;
    m.hold_again(sr_id, ClaimKind::rolling_back);
    if (auto d = co_await m.advance(w->task, TaskEvent::reject, request.comment,
                                    "rejected by " + who, principal);
        !d) {
        m.end_work(sr_id, w);
        co_return store_error(d.error());
    }
    asio::co_spawn(m.executor, m.run_pm_rollback(w), asio::detached);
    a.status = 202;
    a.body = json::object{{"sr_id", sr_id}, {"status", to_string(TaskStatus::rolling_back)}};
    a.work = w;
    co_return a;
}

asio::awaitable<ServiceResult<Coordinator::Answer>> Coordinator::rollback(std::string sr_id,
                                                                          std::string principal) {
    Impl& m = *impl_;
    auto task = co_await m.idle_task(sr_id);
    if (!task) co_return task.error();
    store::TaskRecord t = *task;
    const TaskStatus from = status_of(t);
    if (!transition(from, TaskEvent::operator_rollback))
        co_return ServiceError(ServiceErrc::conflict,
                               "task " + sr_id + " is " + t.status +
                                   ": an operator rollback is taken in PENDING_PM_VALIDATION, "
                                   "COMPLETED or FAILED_ROLLBACK only");
    if (m.stopping) co_return stopping_error();
    // The nodes it deployed; another SR may have claimed them since (accepted, then redeployed).
    auto held = co_await m.claimed_nodes(t);
    if (!held) co_return store_error(Error(errc::invalid_argument, "cannot read the SR's nodes"));
    if (auto busy = m.claim_conflicts(sr_id, *held); !busy.empty())
        co_return ServiceError(ServiceErrc::node_claimed,
                               "SR " + sr_id + " deployed to nodes another SR holds now: " +
                                   describe(busy) + ". Finish that SR first.");
    if (m.stopping) co_return stopping_error();  // the service began to stop meanwhile
    if (m.active.count(sr_id))  // taken while the nodes were read
        co_return ServiceError(ServiceErrc::conflict,
                               "SR " + sr_id + " is " + m.active[sr_id]->task.status);
    auto w = std::make_shared<Work>(m.executor);
    w->kind = WorkKind::rollback;
    w->operator_rollback = true;
    w->rollout_id = t.rollout_id;
    w->task = t;
    w->principal = principal;
    m.active[sr_id] = w;
    m.hold(sr_id, ClaimKind::rolling_back, *held);
    if (auto d = co_await m.advance(w->task, TaskEvent::operator_rollback,
                                    "rolled back on demand by " + principal,
                                    "operator rollback requested by " + principal, principal);
        !d) {
        if (from == TaskStatus::pending_pm_validation)
            m.hold_again(sr_id, ClaimKind::awaiting_verdict);
        else
            m.release_claims(sr_id);
        m.end_work(sr_id, w);
        co_return store_error(d.error());
    }
    asio::co_spawn(m.executor, m.run_pm_rollback(w), asio::detached);
    Answer a;
    a.status = 202;
    a.body = json::object{{"sr_id", sr_id}, {"status", to_string(TaskStatus::rolling_back)}};
    a.work = w;
    co_return a;
}

asio::awaitable<ServiceResult<Coordinator::Answer>> Coordinator::control(ControlCall call,
                                                                         std::string principal) {
    Impl& m = *impl_;
    const std::string sr_id = call.sr_id;
    auto it = m.active.find(sr_id);
    if (it == m.active.end() || it->second->kind != WorkKind::deploy || !it->second->rollout) {
        auto task = co_await m.read([&](store::Database& db) { return db.task(sr_id); });
        if (!task) co_return store_error(task.error());
        if (!*task) co_return no_task(sr_id);
        co_return ServiceError(ServiceErrc::no_rollout_in_flight,
                               "SR " + sr_id + " has no rollout in flight (task " +
                                   (*task)->status + "): nothing to " +
                                   std::string(deploy::to_string(call.request)));
    }
    std::shared_ptr<Work> w = it->second;
    deploy::Rollout& rollout = *w->rollout;
    const deploy::ControlState before = rollout.control_state();
    deploy::ControlDecision d;
    switch (call.request) {
        case deploy::ControlRequest::pause:
            d = rollout.pause(principal);
            break;
        case deploy::ControlRequest::resume:
            d = rollout.resume(principal, call.may_approve, call.may_operate);
            break;
        case deploy::ControlRequest::abort:
            d = rollout.abort(call.on_abort, principal);
            break;
    }
    if (!d.allowed) {
        const std::string state(deploy::to_string(before));
        ServiceError e;
        if (d.refusal == deploy::ControlRefusal::operator_required) {
            e = ServiceError(ServiceErrc::forbidden,
                             "client '" + principal + "' lacks the role 'operate' that " +
                                 std::string(deploy::to_string(call.request)) +
                                 " needs (rollout " + w->rollout_id + " is " + state +
                                 "; the role 'validate' only opens a tier gate)");
        } else if (d.refusal == deploy::ControlRefusal::approver_required) {
            e = ServiceError(ServiceErrc::approval_needs_validate,
                             "rollout " + w->rollout_id + " waits for approval of tier " +
                                 std::to_string(rollout.progress().awaiting_tier) +
                                 ": only a client with the role 'validate' may resume it ('" +
                                 principal + "' lacks it)");
        } else {
            std::string why;
            switch (d.refusal) {
                case deploy::ControlRefusal::already_paused:
                    why = "it is paused already";
                    break;
                case deploy::ControlRefusal::not_paused:
                    why = "it is not paused";
                    break;
                case deploy::ControlRefusal::awaiting_approval:
                    why = "it waits for a tier approval already (no node starts)";
                    break;
                default:
                    why = "it is stopping (aborted, cancelled or ending)";
                    break;
            }
            e = ServiceError(ServiceErrc::control_refused,
                             "cannot " + std::string(deploy::to_string(call.request)) +
                                 " rollout " + w->rollout_id + " of SR " + sr_id + ": " + why);
        }
        e.details["state"] = state;
        e.details["refusal"] = deploy::to_string(d.refusal);
        co_return e;
    }
    // The audit rows and the rollouts row's new status are durable before the answer.
    if (auto ok = co_await m.durable(); !ok) co_return store_error(ok.error());
    const auto& p = rollout.progress();
    json::object extra{{"principal", principal},
                       {"rollout_state", deploy::to_string(rollout.control_state())}};
    std::string_view hook = event_rollout_paused;
    if (call.request == deploy::ControlRequest::resume) {
        hook = event_rollout_resumed;
        if (before == deploy::ControlState::awaiting_approval) extra["approved_tier"] = true;
    } else if (call.request == deploy::ControlRequest::abort) {
        hook = event_rollout_aborted;
        extra["reason"] = p.reason;
        const auto policy = call.on_abort.value_or(m.deps.engine.rollout.on_abort);
        extra["on_abort"] =
            policy == deploy::AbortPolicy::roll_back_all ? "roll_back_all" : "keep_deployed";
    }
    co_await m.notify(hook, w->task, std::move(extra));
    Answer a;
    a.status = call.request == deploy::ControlRequest::abort ? 202 : 200;
    a.body = json::object{{"sr_id", sr_id},
                          {"rollout_id", w->rollout_id},
                          {"state", deploy::to_string(rollout.control_state())},
                          {"previous_state", deploy::to_string(before)},
                          {"by", principal}};
    if (call.request == deploy::ControlRequest::abort) {
        a.body["reason"] = p.reason;
        a.work = w;
    }
    co_return a;
}

asio::awaitable<json::object> Coordinator::wait(std::shared_ptr<Work> work) {
    co_await Impl::wait_done(work);
    co_return work->final_body;
}

std::optional<Coordinator::Live> Coordinator::live(const std::string& sr_id) const {
    auto it = impl_->active.find(sr_id);
    if (it == impl_->active.end() || !it->second->rollout) return std::nullopt;
    Live l;
    l.progress = &it->second->rollout->progress();
    l.task_status = it->second->task.status;
    l.rollout_id = it->second->rollout_id;
    l.created_ms = it->second->created_ms;
    return l;
}

asio::awaitable<std::size_t> Coordinator::recover() {
    co_return co_await impl_->recover();
}

asio::awaitable<void> Coordinator::drain(std::chrono::milliseconds grace) {
    co_await impl_->drain(grace);
}

bool Coordinator::stopping() const {
    return impl_->stopping;
}

std::size_t Coordinator::running() const {
    return impl_->active.size();
}

std::size_t Coordinator::deploying() const {
    std::size_t n = 0;
    for (const auto& [sr, w] : impl_->active) n += w->kind == WorkKind::deploy ? 1 : 0;
    return n;
}

std::size_t Coordinator::rolling_back() const {
    std::size_t n = 0;
    for (const auto& [sr, w] : impl_->active) n += w->kind == WorkKind::rollback ? 1 : 0;
    return n;
}

const ClaimTable& Coordinator::claims() const {
    return impl_->claims;
}

const Coordinator::Stats& Coordinator::stats() const {
    return impl_->stats;
}

const DeployServiceDeps& Coordinator::deps() const {
    return impl_->deps;
}

// --- identifiers --------------------------------------------------------------------------------

namespace {
bool id_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-' || c == ':';
}
}  // namespace

bool valid_sr_id(std::string_view s) {
    if (s.empty() || s.size() > 128) return false;
    if (s.find_first_not_of('.') == std::string_view::npos) return false;
    return std::all_of(s.begin(), s.end(), id_char);
}

bool valid_artifact_name(std::string_view s) {
    if (s.empty() || s.size() > 128) return false;
    if (s.find_first_not_of('.') == std::string_view::npos) return false;
    return std::all_of(s.begin(), s.end(), [](char c) { return c != ':' && id_char(c); });
}

bool valid_sha256(std::string_view s) {
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

}  // namespace guardia::service
