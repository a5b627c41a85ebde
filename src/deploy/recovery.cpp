#include "guardia/deploy/recovery.hpp"

#include "guardia/store/audit_writer.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <memory>

namespace guardia::deploy {

namespace asio = boost::asio;

namespace {

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

}  // namespace

bool needs_recovery(std::string_view status) noexcept {
    return status == "RUNNING" || status == "PENDING" || status == "RECOVERY_FAILED";
}

std::vector<std::string> open_steps(const std::vector<store::AuditRow>& rows,
                                    std::string_view node) {
    std::vector<std::string> open;
    for (const auto& r : rows) {
        if (r.node != node) continue;
        if (r.event == "STEP_START") {
            open.push_back(r.step);
        } else if (r.event == "STEP_OK" || r.event == "STEP_FAILED" ||
                   r.event == "STEP_INTERRUPTED") {
            // The latest start of that step ends here.
            for (auto it = open.rbegin(); it != open.rend(); ++it)
                if (*it == r.step) {
                    open.erase(std::next(it).base());
                    break;
                }
        }
    }
    return open;
}

asio::awaitable<RecoveryReport> recover_rollout(RecoveryInput in, PipelineSettings settings,
                                                std::size_t max_sessions) {
    RecoveryReport out;
    const std::string rid = in.rollout.id, sr = in.rollout.sr_id;
    settings.sr_id = sr;
    settings.rollout_id = rid;
    settings.reclaim_own_lock = true;
    store::AuditWriter* audit = settings.audit;

    std::vector<store::NodeResult> todo;
    std::size_t pending = 0;
    for (const auto& n : in.results)
        if (needs_recovery(n.status)) {
            todo.push_back(n);
            pending += n.status == "PENDING" ? 1 : 0;
        }
    auto record = [&](store::AuditEvent e) {
        if (!audit) return;
        e.sr_id = sr;
        e.rollout_id = rid;
        audit->record(std::move(e));
    };
    {
        store::AuditEvent e;
        e.step = "RECOVERY";
        e.event = "RECOVERY_START";
        e.detail = "found in flight " + in.origin +
                   " (the process running it ended during it): " +
                   std::to_string(todo.size() - pending) + " node(s) running, " +
                   std::to_string(pending) + " not started (checked too)";
        record(std::move(e));
    }

    auto ex = co_await asio::this_coro::executor;
    auto shared_settings = std::make_shared<const PipelineSettings>(settings);
    auto one = [&](std::size_t i) -> asio::awaitable<void> {
        store::NodeResult n = todo[i];
        NodeReport rep;
        auto it = in.nodes.find(n.node);
        // Each step the dead process began and never ended is closed first (its intent row is
        // in the log; its outcome is what the recovery below finds, in NODE_RECOVERED), so that
        // the log reads in order: the interrupted step, then what was done about it.
        if (it != in.nodes.end())
            for (const auto& step : open_steps(in.audit, n.node)) {
                store::AuditEvent e;
                e.node = n.node;
                e.step = step;
                e.event = "STEP_INTERRUPTED";
                e.detail = "the guardia process ended during this step; recovery " + in.origin +
                           " follows";
                record(std::move(e));
            }
        if (it == in.nodes.end()) {
            rep.outcome = NodeOutcome::failed_unchanged;
            rep.error = Error(errc::invalid_argument,
                              "node '" + n.node +
                                  "' is not in the inventory: give the inventory it was deployed "
                                  "with, or recover it by hand");
        } else {
            rep = co_await recover_node(it->second, in.artifacts, n.backup_path, *shared_settings);
        }
        // Not inspected (unreachable, unknown): the node may still be mid-step under the
        // rollout's lock. It stays to be recovered next time, and the rollout with it.
        const bool inspected = it != in.nodes.end() && rep.failed_step != "CONNECT" &&
                               rep.failed_step != "RECOVER_INSPECT";
        if (n.status == "PENDING" && !rep.lock_released &&
            (rep.outcome == NodeOutcome::failed_unchanged || !inspected)) {
            n.status = "SKIPPED";  // never started (a node we cannot reach was never reached)
            n.step = "";
            n.error = inspected ? "not started: the rollout was interrupted"
                                : "not started: the rollout was interrupted (" +
                                      rep.error.message + ")";
        } else if (!inspected) {
            n.status = "RECOVERY_FAILED";
            n.step = "RECOVERY";
            n.error = rep.error.message + "; retried at the next recovery";
        } else {
            n.status = std::string(to_string(rep.outcome));
            n.step = rep.failed_step.empty() ? "RECOVERY" : rep.failed_step;
            n.error = rep.error.message;
        }
        if (!rep.backup_path.empty()) n.backup_path = rep.backup_path;
        n.finished_ms = now_ms();
        store::AuditEvent e;
        e.node = n.node;
        e.step = "RECOVERY";
        e.event = "NODE_RECOVERED";
        e.detail = n.status + (n.error.empty() ? std::string() : ": " + n.error);
        record(std::move(e));
        if (audit) audit->upsert_node_result(n);
        ++out.counts[n.status];
        out.nodes.push_back(std::move(n));
    };

    // At most max_sessions nodes at once, on this coroutine's executor.
    const std::size_t limit = std::max<std::size_t>(1, max_sessions);
    std::size_t running = 0, finished = 0;
    asio::steady_timer wake(ex);
    auto wait = [&]() -> asio::awaitable<void> {
        wake.expires_at(asio::steady_timer::time_point::max());
        boost::system::error_code ec;
        co_await wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    };
    for (std::size_t i = 0; i < todo.size(); ++i) {
        while (running >= limit) co_await wait();
        ++running;
        asio::co_spawn(
            ex,
            [&, i]() -> asio::awaitable<void> {
                try {
                    co_await one(i);
                } catch (const std::exception&) {
                    // recover_node reports node failures itself
                }
                --running;
                ++finished;
                wake.cancel();
            },
            asio::detached);
    }
    while (finished < todo.size()) co_await wait();

    std::string summary;
    for (const auto& [k, v] : out.counts)
        summary += (summary.empty() ? "" : ", ") + std::to_string(v) + " " + lower(k);
    out.reason = "interrupted: the guardia process running the rollout ended during it "
                 "(crash or kill); recovered " +
                 in.origin + (summary.empty() ? std::string() : ": " + summary);
    store::RolloutRecord done = in.rollout;
    done.status = "ABORTED";
    done.reason = out.reason;
    out.finished = out.counts.count("RECOVERY_FAILED") == 0;
    // finished_ms stays empty while a node could not be recovered: the next recovery retries.
    if (out.finished)
        done.finished_ms = now_ms();
    else
        done.reason += "; not finished: node(s) left to recover next time";
    if (audit) audit->upsert_rollout(done);
    store::AuditEvent e;
    e.step = "RECOVERY";
    e.event = "ROLLOUT_ABORTED";
    e.detail = done.reason;
    record(std::move(e));
    co_return out;
}

}  // namespace guardia::deploy
