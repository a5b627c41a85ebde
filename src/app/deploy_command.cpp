// `guardia deploy`: a one-shot rollout without the service.
//
// Exit codes (a contract for scripts): 0 every node deployed (dry run: every node ready);
// 1 the rollout ran and some node did not deploy (FAILED or ABORTED); 2 bad usage or input
// (nothing was started); 3 the audit log could not be written (the rollout stopped: no node
// started after that; what could not be written is in the spill journal beside the database);
// 130 cancelled by SIGINT/SIGTERM (in-flight nodes rolled back).
//
// Before it starts, rollouts a killed guardia left unfinished in the same database are
// recovered (cli_recovery.hpp), and it says so.
#include "cli.hpp"
#include "cli_recovery.hpp"
#include "commands.hpp"
#include "progress.hpp"
#include "targeting_flags.hpp"

#include "guardia/core/local_io.hpp"
#include "guardia/deploy/rollout.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <spdlog/spdlog.h>
#include <pwd.h>
#include <unistd.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <set>

namespace guardia::cli {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace guardia::deploy;

namespace {

std::string local_user_name() {
    if (const passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_name) return pw->pw_name;
    return "uid " + std::to_string(::geteuid());
}

const char* deploy_usage =
    "usage: guardia deploy --inventory FILE --artifact FILE [--artifact FILE ...]\n"
    "                      [--sr-id ID] [--config FILE] [--dry-run] [--db FILE]\n"
    "                      [--known-hosts FILE] [--host-key-policy strict|accept-new]\n"
    "                      [--json] [--quiet] [--limit PATTERNS] [--tier N]\n"
    "                      [--retry-failed ROLLOUT_ID] [--report full|summary|auto]\n"
    "\n"
    "Rolls the artifacts out to the inventory's nodes, tier by tier, with backups, health\n"
    "checks, rollback of failed nodes and the safety gate (docs/OPERATIONS.md).\n"
    "\n"
    "  --inventory FILE     the nodes to deploy to (required)\n"
    "  --artifact FILE      a file to put in each node's deploy_path (required; repeat for\n"
    "                       several; file names must differ)\n"
    "  --sr-id ID           the service request the rollout belongs to (default: ADHOC-<time>-<pid>)\n"
    "  --config FILE        engine configuration (default: $GUARDIA_CONFIG, else\n"
    "                       /etc/guardia/guardia.json if it exists, else built-in defaults)\n"
    "  --db FILE            the audit database (default: the configuration's store.db,\n"
    "                       else ./guardia.db)\n"
    "  --dry-run            connect and check every node, change nothing\n"
    "  --known-hosts FILE   SSH host keys (default: ssh.known_hosts, else ~/.ssh/known_hosts)\n"
    "  --host-key-policy P  strict or accept-new (default: ssh.host_key_policy, else strict)\n"
    "  --json               the report as one JSON document on stdout\n"
    "  --quiet              no progress on stderr\n"
    "  --report MODE        the plain report: full (a row per node), summary (counts and the\n"
    "                       nodes that did not deploy) or auto (default: full below 1,000\n"
    "                       nodes, summary from 1,000); --json always lists every node\n"
    "  --limit PATTERNS     only the nodes whose names match (comma-separated names or\n"
    "                       globs *, ?, [...]; repeatable); a pattern matching no node is an error\n"
    "  --tier N             only the nodes of tier N (1..99; comma list or repeatable)\n"
    "  --retry-failed ID    only the nodes that did not end DEPLOYED in rollout ID (read\n"
    "                       from the --db store); nothing left to retry: exit 0\n"
    "  -h, --help           this help\n"
    "\n"
    "Signals: SIGUSR1 pauses (no new node starts, nodes in flight finish), SIGUSR2 resumes or\n"
    "approves a tier gate (rollout.tiers[].approve), SIGINT/SIGTERM cancel.\n"
    "\n"
    "Exit 0 every node deployed (dry run: ready), 1 some node did not, 2 bad usage or input\n"
    "(nothing started), 3 the audit log could not be written, 130 cancelled (SIGINT/SIGTERM).\n";

std::string node_state_text(const NodeProgress& n, bool dry_run) {
    if (n.state == NodeState::skipped) return "NOT_STARTED";
    if (n.state != NodeState::done) return "UNFINISHED";
    if (dry_run) return n.report.outcome == NodeOutcome::deployed ? "READY" : "NOT_READY";
    return std::string(to_string(n.report.outcome));
}

json::object report_json(const RolloutReport& r) {
    json::object o;
    o["rollout_id"] = r.rollout_id;
    o["sr_id"] = r.sr_id;
    o["status"] = std::string(to_string(r.status));
    o["reason"] = r.reason;
    o["dry_run"] = r.dry_run;
    o["duration_ms"] = r.duration.count();
    o["counts"] = {{"total", r.nodes.size()},
                   {"deployed", r.deployed},
                   {"failed", r.failed},
                   {"not_started", r.skipped}};
    json::array tiers;
    for (const auto& t : r.tiers)
        tiers.push_back(json::object{{"tier", t.tier},
                                     {"total", t.total},
                                     {"finished", t.finished},
                                     {"failed", t.failed},
                                     {"not_started", t.skipped}});
    o["tiers"] = std::move(tiers);
    json::array nodes;
    for (const auto& n : r.nodes) {
        json::object j{{"name", n.node.name},
                       {"tier", n.node.tier},
                       {"outcome", node_state_text(n, r.dry_run)},
                       {"step", n.step}};
        if (n.state == NodeState::done) {
            j["duration_ms"] = n.report.duration.count();
            if (n.report.outcome != NodeOutcome::deployed) {
                j["failed_step"] = n.report.failed_step;
                j["error"] = n.report.error.message;
                j["error_code"] = n.report.error.code.message();
            }
            if (!n.report.rollback_error.empty()) j["rollback_error"] = n.report.rollback_error;
            if (!n.report.backup_path.empty()) j["backup_path"] = n.report.backup_path;
            if (!r.dry_run) j["lock_released"] = n.report.lock_released;
        }
        if (n.abort_rollback)
            j["abort_rollback"] =
                json::object{{"outcome", std::string(to_string(n.abort_rollback->outcome))},
                             {"error", n.abort_rollback->error.message}};
        nodes.push_back(std::move(j));
    }
    o["nodes"] = std::move(nodes);
    return o;
}

// `every`: a row per node; else (a summary) rows only for the nodes that did not deploy (at
// most kSummaryReportRows), never for those not started.
void print_text_report(const RolloutReport& r, std::FILE* out, bool every) {
    std::fprintf(out, "\n%s report: rollout %s (sr %s)%s\n", r.dry_run ? "Dry-run" : "Rollout",
                 r.rollout_id.c_str(), r.sr_id.c_str(),
                 every ? ""
                       : ", summary: the nodes that did not deploy (--report full or --json: every "
                         "node)");
    std::fprintf(out, "%-24s %4s  %-16s %-16s %9s  %s\n", "NODE", "TIER", "OUTCOME", "STEP", "TIME",
                 "DETAIL");
    ReportRows rows(every);
    for (const auto& n : r.nodes) {
        if (!rows.show(n.state == NodeState::skipped ||
                       (n.state == NodeState::done && n.report.outcome == NodeOutcome::deployed)))
            continue;
        std::string detail;
        if (n.state == NodeState::done && n.report.outcome != NodeOutcome::deployed) {
            detail = n.report.error.message;
            if (!n.report.rollback_error.empty())
                detail += "; rollback: " + n.report.rollback_error;
        } else if (n.state == NodeState::done && !r.dry_run) {
            detail = n.report.backup_path.empty() ? "" : "backup " + n.report.backup_path;
        }
        if (n.abort_rollback)
            detail += std::string(detail.empty() ? "" : "; ") +
                      "abort policy: " + std::string(to_string(n.abort_rollback->outcome)) +
                      (n.abort_rollback->error.message.empty()
                           ? ""
                           : " (" + n.abort_rollback->error.message + ")");
        const std::string time =
            n.state == NodeState::done ? std::to_string(n.report.duration.count()) + " ms" : "-";
        std::fprintf(out, "%-24s %4d  %-16s %-16s %9s  %s\n", n.node.name.c_str(), n.node.tier,
                     node_state_text(n, r.dry_run).c_str(), n.step.c_str(), time.c_str(),
                     detail.c_str());
    }
    if (rows.more() > 0)
        std::fprintf(out, "... and %zu more node(s) that did not deploy (--report full or --json)\n",
                     rows.more());
    std::fprintf(out, "\n%s: %zu node(s): %zu %s, %zu failed, %zu not started, in %.1f s\n",
                 std::string(to_string(r.status)).c_str(), r.nodes.size(), r.deployed,
                 r.dry_run ? "ready" : "deployed", r.failed, r.skipped,
                 static_cast<double>(r.duration.count()) / 1000.0);
    if (!r.reason.empty()) std::fprintf(out, "reason: %s\n", r.reason.c_str());
}

}  // namespace

int deploy_command(int argc, char** argv) {
    Common common;
    std::vector<std::string> artifact_paths;
    std::string sr_id;
    bool dry_run = false, quiet = false;
    ReportMode report_mode = ReportMode::automatic;
    Targeting targeting;
    Args args(argc, argv, 2);
    while (!args.done()) {
        const std::string f = args.flag();
        if (common_flag(f, args, common) || targeting_flag(f, args, targeting)) continue;
        if (f == "--artifact")
            artifact_paths.push_back(args.value());
        else if (f == "--sr-id")
            sr_id = args.value();
        else if (f == "--dry-run")
            dry_run = true;
        else if (f == "--quiet")
            quiet = true;
        else if (f == "--report")
            report_mode = report_mode_flag(args.value());
        else if (f == "--help" || f == "-h")
            return print_help(deploy_usage, common, true);
        else
            throw UsageError("unknown option " + f + "\n" + deploy_usage);
    }
    if (artifact_paths.empty())
        throw UsageError(std::string("--artifact FILE is required\n") + deploy_usage);
    for (char c : sr_id)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
            throw UsageError("--sr-id must be letters, digits, '-', '_' or '.'");

    Engine engine = load_engine(common);
    if (!apply_targeting(targeting, engine, resolve_db_path(common, engine.config)))
        return nothing_to_retry(targeting, "deploy", common.json);
    if (auto ok = validate_rollout(engine.config.rollout, engine.inventory); !ok)
        throw UsageError(
            (engine.config_path.empty() ? std::string("rollout defaults") : engine.config_path) +
            ": " + ok.error().message);
    std::vector<ArtifactSpec> artifacts;
    std::set<std::string> names;
    for (const auto& p : artifact_paths) {
        auto a = describe_artifact(p);  // before the loop runs: blocking is fine here
        if (!a) throw UsageError(a.error().message);
        if (!names.insert(a->file_name).second)
            throw UsageError("--artifact " + p + ": another artifact has the same file name '" +
                             a->file_name + "'");
        artifacts.push_back(std::move(*a));
    }

    const std::string stamp = utc_stamp_compact();
    const bool adhoc = sr_id.empty();
    // An ad-hoc SR is this one rollout's own: two deploys started in the same second (scripts
    // deploying to two groups at once) must not share one, because the store keeps an SR's
    // artifacts by SR and name, and a rollback or a crash recovery of the first would then be
    // judged against the second's files.
    const std::string pid = std::to_string(::getpid());
    if (adhoc) sr_id = "ADHOC-" + stamp + "-" + pid;
    const std::string db = resolve_db_path(common, engine.config);

    PipelineSettings settings = engine.config.pipeline;
    settings.sr_id = sr_id;
    settings.rollout_id = adhoc ? sr_id : sr_id + "-" + stamp + "-" + pid;  // ad hoc: as before
    settings.owner = owner_id();
    settings.known_hosts = engine.known_hosts;
    settings.host_key_policy = engine.host_key_policy;
    settings.credentials = engine.credentials;

    std::unique_ptr<store::AuditWriter> audit;
    try {
        audit = std::make_unique<store::AuditWriter>(db);
    } catch (const std::exception& e) {
        throw UsageError(std::string("audit database: ") + e.what());
    }
    audit->set_redactions(engine.credentials->secrets());
    audit->start();
    settings.audit = audit.get();
    record_targeting(targeting, *audit, sr_id, settings.rollout_id);

    // What a killed guardia left in flight on this database is made safe first (a dry run
    // changes nothing, so it only says so).
    {
        CliRecoveryOutcome rec;
        if (!dry_run)
            rec = recover_database(db, engine, *audit, "at the start of guardia deploy", false);
        else if (auto ro = store::Database::open_read_only(db); ro) {
            if (auto u = ro->unfinished_rollouts(); u && !u->empty())
                rec.lines.push_back(std::to_string(u->size()) +
                                    " unfinished rollout(s) in this database: a real run (or "
                                    "guardia recover) recovers them first");
        }
        if (!quiet)
            for (const auto& l : rec.lines) std::fprintf(stderr, "guardia: recovery: %s\n", l.c_str());
        if (rec.rollouts > 0 && !quiet)
            std::fprintf(stderr, "guardia: recovered %zu unfinished rollout(s) left by a guardia "
                                 "process that ended; now deploying\n",
                         rec.rollouts);
    }
    if (!dry_run) {
        record_inventory(common.inventory_path, *audit);
        for (const auto& a : artifacts) {
            store::ArtifactRecord r;
            r.sr_id = sr_id;
            r.name = a.file_name;
            r.path = a.local_path;
            r.sha256 = a.sha256;
            r.size = static_cast<std::int64_t>(a.size);
            r.created_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
            audit->upsert_artifact(std::move(r));
        }
    }

    asio::io_context ioc(1);
    const std::size_t node_count = engine.inventory.nodes.size();
    std::vector<std::string> unverified_health;  // warned about below
    for (const auto& n : engine.inventory.nodes)
        if (n.health.insecure_skip_verify) unverified_health.push_back(n.name);
    Rollout rollout(ioc.get_executor(), std::move(engine.inventory), std::move(artifacts),
                    engine.config.rollout, settings);
    rollout.set_dry_run(dry_run);
    const bool terminal = ::isatty(STDERR_FILENO) == 1;
    ProgressDisplay progress(ioc.get_executor(), rollout, stderr, terminal, quiet);
    rollout.set_observer(&progress);

    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    int signal_count = 0;
    std::function<void(boost::system::error_code, int)> on_signal =
        [&](boost::system::error_code ec, int sig) {
            if (ec) return;
            if (++signal_count == 1) {
                progress.note(
                    std::string(sig == SIGINT ? "SIGINT" : "SIGTERM") +
                    ": cancelling -- no new node starts; nodes in flight stop and roll back");
                rollout.cancel(std::string(sig == SIGINT ? "SIGINT" : "SIGTERM") + " received");
            } else {
                progress.note(
                    "still cleaning up nodes in flight (their locks and rollbacks must finish)");
            }
            signals.async_wait(on_signal);
        };
    signals.async_wait(on_signal);
    // Operator control (docs/OPERATIONS.md): SIGUSR1 pauses, SIGUSR2 resumes or approves a tier
    // gate. The principal in the audit log is the local user running guardia.
    asio::signal_set control_signals(ioc, SIGUSR1, SIGUSR2);
    const std::string operator_name = "cli:" + local_user_name();
    std::function<void(boost::system::error_code, int)> on_control =
        [&](boost::system::error_code ec, int sig) {
            if (ec) return;
            const bool pause = sig == SIGUSR1;
            const auto d = pause ? rollout.pause(operator_name) : rollout.resume(operator_name);
            if (!d.allowed)
                progress.note(std::string(pause ? "SIGUSR1" : "SIGUSR2") + ": not applied (" +
                              std::string(to_string(d.refusal)) + ")");
            control_signals.async_wait(on_control);
        };
    control_signals.async_wait(on_control);

    if (!quiet)
        std::fprintf(stderr, "guardia: %s %zu node(s), rollout %s, audit log %s, configuration %s\n",
                     dry_run ? "dry run on" : "deploying to", node_count,
                     settings.rollout_id.c_str(), db.c_str(), describe_config(common).c_str());
    for (const auto& name : unverified_health)
        std::fprintf(stderr,
                     "guardia: warning: node '%s': its health check does not verify the "
                     "server's TLS certificate (insecure_skip_verify)\n",
                     name.c_str());
    RolloutReport report;
    Result<void> flushed;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
            progress.start();
            report = co_await rollout.run();
            progress.stop();
            flushed = co_await audit->durable();  // the report below is on disk first
            signals.cancel();
            control_signals.cancel();
        },
        asio::detached);
    ioc.run();
    audit->stop();
    const bool audit_failed = !flushed || report.audit_failed;
    if (!flushed)
        std::fprintf(stderr, "guardia: ERROR: audit log not fully written: %s\n",
                     flushed.error().message.c_str());

    if (common.json)
        std::cout << json::serialize(report_json(report)) << std::endl;
    else
        print_text_report(report, stdout, report_every_node(report_mode, report.nodes.size()));
    if (audit_failed) return 3;
    switch (report.status) {
        case RolloutStatus::succeeded:
            return 0;
        case RolloutStatus::cancelled:
            return 130;
        default:
            return report.failed == 0 && report.skipped == 0 &&
                           report.status != RolloutStatus::aborted
                       ? 0
                       : 1;
    }
}

}  // namespace guardia::cli
