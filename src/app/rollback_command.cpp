// `guardia rollback --rollout ID`: puts back, on every node a rollout deployed, the release that
// ran there before it, from the backup that rollout took of the node.
//
// Each node is claimed by its lock like in any rollout, then VERIFY_LIVE checks (read-only) that
// the node still runs that rollout's release: its files have the sha256s the rollout shipped,
// its release marker names the rollout, and the backup is still there. A node that fails any of
// these is refused by name and left exactly as it is. The others are restored exactly (shutdown,
// restore of the files and of the release marker saved with the backup, startup, health).
//
// Audit: the rollback is a rollout of its own in the store (id "<ID>-rollback-<stamp>-<pid>",
// same SR), with one node row per node (ROLLED_BACK, REFUSED, ROLLBACK_FAILED or
// FAILED_UNCHANGED) and every step's rows under that id; its reason names the rollout undone.
//
// Exit codes: 0 every node restored; 1 some node refused or failed; 2 bad usage or input (an
// unknown rollout id is named); 3 the audit database could not be written.
#include "cli.hpp"
#include "cli_recovery.hpp"
#include "commands.hpp"
#include "progress.hpp"

#include "guardia/deploy/release_marker.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <unistd.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sys/stat.h>

namespace guardia::cli {

namespace asio = boost::asio;
namespace json = boost::json;

namespace {

const char* rollback_usage =
    "usage: guardia rollback --rollout ID [--db FILE] [--config FILE] [--inventory FILE]\n"
    "                        [--known-hosts FILE] [--host-key-policy strict|accept-new] [--json]\n"
    "                        [--report full|summary|auto]\n"
    "\n"
    "Restores every node that rollout ID deployed from the backup that rollout took of it.\n"
    "A node that no longer runs that rollout's release (its files differ, its release marker\n"
    "names another rollout, or the backup is gone) is refused by name and left as it is.\n"
    "\n"
    "  --rollout ID       the rollout to undo (required; guardia deploy prints its id)\n"
    "  --db FILE          the audit database that rollout was recorded in\n"
    "                     (default: the configuration's db, else ./guardia.db)\n"
    "  --config FILE      engine configuration (credentials, timeouts, max_sessions)\n"
    "  --inventory FILE   where to reach the nodes (default: the inventory the database recorded)\n"
    "  --known-hosts FILE known_hosts to verify host keys with\n"
    "  --host-key-policy P  strict (default) or accept-new\n"
    "  --json             one JSON object on stdout\n"
    "  --report MODE      the plain report: full (a line per node), summary (counts and the\n"
    "                     nodes not restored) or auto (default: full below 1,000 nodes,\n"
    "                     summary from 1,000); --json always lists every node\n"
    "  -h, --help         this text\n"
    "\n"
    "Exit 0 every node restored, 1 some node refused or failed, 2 bad input (unknown rollout),\n"
    "3 the audit database could not be written.\n";

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// A node's row for the rollback's own rollout.
store::NodeResult row_for(const std::string& rollout_id, const std::string& node,
                          const std::string& backup_path, const deploy::NodeReport& rep) {
    store::NodeResult r;
    r.rollout_id = rollout_id;
    r.node = node;
    r.backup_path = backup_path;
    r.finished_ms = now_ms();
    if (rep.failed_step == "VERIFY_LIVE" && rep.error.code == errc::precheck_failed)
        r.status = "REFUSED";
    else
        r.status = std::string(deploy::to_string(rep.outcome));
    r.step = rep.outcome == deploy::NodeOutcome::rolled_back ? "ROLLBACK" : rep.failed_step;
    r.error = rep.error.message;
    return r;
}

}  // namespace

int rollback_command(int argc, char** argv) {
    Common common;
    std::string target;
    ReportMode report_mode = ReportMode::automatic;
    Args args(argc, argv, 2);
    while (!args.done()) {
        const std::string f = args.flag();
        if (common_flag(f, args, common)) continue;
        if (f == "--rollout")
            target = args.value();
        else if (f == "--report")
            report_mode = report_mode_flag(args.value());
        else if (f == "--help" || f == "-h") {
            std::fputs(rollback_usage, stdout);
            return 0;
        } else
            throw UsageError("unknown option " + f + "\n" + rollback_usage);
    }
    if (target.empty())
        throw UsageError(std::string("--rollout ID is required\n") + rollback_usage);
    Engine engine = load_engine(common, !common.inventory_path.empty());
    std::string db_path = common.db_path.empty() ? engine.config.db : common.db_path;
    if (db_path.empty()) db_path = "guardia.db";
    struct stat st {};
    if (::stat(db_path.c_str(), &st) != 0)
        throw UsageError("--db " + db_path + ": no such database");

    // What the rollout deployed, read before anything starts.
    auto db = store::Database::open_read_only(db_path);
    if (!db) throw UsageError(db.error().message);
    auto rollout = db->rollout(target);
    if (!rollout) throw UsageError(rollout.error().message);
    if (!*rollout) throw UsageError("--rollout " + target + ": no such rollout in " + db_path);
    if (!(*rollout)->finished_ms)
        throw UsageError("--rollout " + target + " is still in flight (or was interrupted: run "
                         "guardia recover first)");
    const std::string sr_id = (*rollout)->sr_id;
    auto results = db->node_results(target);
    auto arts = db->artifacts_for(sr_id);
    if (!results) throw UsageError(results.error().message);
    if (!arts) throw UsageError(arts.error().message);
    std::map<std::string, deploy::Node> nodes = stored_nodes(*db, engine);
    for (const auto& n : engine.inventory.nodes) nodes[n.name] = n;  // the file given wins
    std::vector<deploy::ArtifactSpec> shipped;
    for (const auto& a : *arts) {
        deploy::ArtifactSpec s;
        s.file_name = a.name;
        s.sha256 = a.sha256;
        shipped.push_back(std::move(s));
    }
    std::vector<store::NodeResult> todo;
    for (const auto& r : *results)
        if (r.status == "DEPLOYED") todo.push_back(r);

    const std::string id =
        target + "-rollback-" + utc_stamp_compact() + "-" + std::to_string(::getpid());
    std::unique_ptr<store::AuditWriter> audit;
    try {
        audit = std::make_unique<store::AuditWriter>(db_path);
    } catch (const std::exception& e) {
        throw UsageError(std::string("audit database: ") + e.what());
    }
    audit->set_redactions(engine.credentials->secrets());
    audit->start();

    deploy::PipelineSettings settings = engine.config.pipeline;
    settings.sr_id = sr_id;
    settings.rollout_id = id;
    settings.owner = owner_id();
    settings.known_hosts = engine.known_hosts;
    settings.host_key_policy = engine.host_key_policy;
    settings.credentials = engine.credentials;
    settings.audit = audit.get();

    store::RolloutRecord record;
    record.id = id;
    record.sr_id = sr_id;
    record.status = "RUNNING";
    record.reason = "rollback of rollout " + target;
    record.created_ms = now_ms();
    record.owner = settings.owner;
    std::vector<store::NodeResult> rows;
    std::size_t restored = 0;
    Result<void> started, flushed;
    auto note = [&](const char* event, std::string detail) {
        store::AuditEvent e;
        e.sr_id = sr_id;
        e.rollout_id = id;
        e.step = "ROLLBACK";
        e.event = event;
        e.principal = settings.owner;
        e.detail = std::move(detail);
        audit->record(std::move(e));
    };
    asio::io_context ioc(1);
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
            audit->upsert_rollout(record);
            note("OPERATOR_ROLLBACK_START", "rollback of rollout " + target + ": " +
                                                std::to_string(todo.size()) + " node(s) it deployed");
            // Audit or stop: nothing is touched unless the store took the rollback's rows.
            started = co_await audit->durable();
            if (!started) co_return;
            auto ex = co_await asio::this_coro::executor;
            asio::steady_timer wake(ex);
            auto woken = [&]() -> asio::awaitable<void> {
                wake.expires_at(asio::steady_timer::time_point::max());
                boost::system::error_code ec;
                co_await wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            };
            std::size_t running = 0, finished = 0;
            const std::size_t limit = std::max<std::size_t>(1, engine.config.rollout.max_sessions);
            rows.resize(todo.size());
            for (std::size_t i = 0; i < todo.size(); ++i) {
                while (running >= limit) co_await woken();
                ++running;
                asio::co_spawn(
                    ex,
                    [&, i]() -> asio::awaitable<void> {
                        const store::NodeResult& r = todo[i];
                        deploy::NodeReport rep;
                        auto it = nodes.find(r.node);
                        if (it == nodes.end()) {
                            rep.failed_step = "VALIDATE";
                            rep.error = Error(errc::invalid_argument,
                                              "node '" + r.node +
                                                  "' is in no inventory known: give --inventory");
                        } else {
                            deploy::MarkerExpectation expect;
                            expect.rollout_id = target;
                            rep = co_await deploy::rollback_release(it->second, r.backup_path,
                                                                    settings, shipped, expect);
                        }
                        rows[i] = row_for(id, r.node, r.backup_path, rep);
                        audit->upsert_node_result(rows[i]);
                        --running;
                        ++finished;
                        wake.cancel();
                    },
                    asio::detached);
            }
            while (finished < todo.size()) co_await woken();
            for (const auto& r : rows) restored += r.status == "ROLLED_BACK" ? 1 : 0;
            record.status = restored == rows.size() ? "ROLLED_BACK" : "FAILED";
            record.reason = "rollback of rollout " + target + ": " + std::to_string(restored) +
                            " of " + std::to_string(rows.size()) + " node(s) restored";
            record.finished_ms = now_ms();
            audit->upsert_rollout(record);
            note("OPERATOR_ROLLBACK_DONE", record.reason);
            flushed = co_await audit->durable();
        },
        asio::detached);
    ioc.run();
    audit->stop();
    if (!started)
        throw AuditUnavailable("the audit database cannot be written: " + started.error().message +
                               " (nothing was started)");

    if (common.json) {
        json::array list;
        for (const auto& r : rows)
            list.push_back(json::object{{"node", r.node},
                                        {"status", r.status},
                                        {"step", r.step},
                                        {"error", r.error},
                                        {"backup_path", r.backup_path}});
        std::cout << json::serialize(json::object{{"rollout_id", id},
                                                  {"rolls_back", target},
                                                  {"sr_id", sr_id},
                                                  {"status", record.status},
                                                  {"restored", restored},
                                                  {"not_restored", rows.size() - restored},
                                                  {"nodes", std::move(list)}})
                  << std::endl;
    } else {
        std::printf("guardia rollback: rollout %s (rollback of %s, SR %s)\n", id.c_str(),
                    target.c_str(), sr_id.c_str());
        const bool every = report_every_node(report_mode, rows.size());
        if (!every)
            std::printf("summary: only the nodes not restored (--report full or --json: every node)\n");
        ReportRows listed(every);
        for (const auto& r : rows) {
            if (!listed.show(r.status == "ROLLED_BACK")) continue;
            std::printf("%-24s %-16s %s\n", r.node.c_str(), r.status.c_str(),
                        r.status == "ROLLED_BACK" ? ("restored from " + r.backup_path).c_str()
                                                  : r.error.c_str());
        }
        if (listed.more() > 0)
            std::printf("... and %zu more node(s) not restored (--report full or --json)\n",
                        listed.more());
        std::printf("%zu of %zu node(s) restored\n", restored, rows.size());
    }
    if (!flushed) {
        std::fprintf(stderr, "guardia rollback: ERROR: audit log not fully written: %s\n",
                     flushed.error().message.c_str());
        return 3;
    }
    return restored == rows.size() ? 0 : 1;
}

}  // namespace guardia::cli
