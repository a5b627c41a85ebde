// `guardia exec`: one sanitized command on every node, per-node exit codes.
//
// Exit codes: 0 the command exited 0 on every node; 1 some node failed (non-zero exit,
// signal, unreachable, refused host key...); 2 bad usage or input, or a command the
// sanitizer refuses (nothing sent); 130 cancelled by SIGINT/SIGTERM.
#include "cli.hpp"
#include "commands.hpp"
#include "progress.hpp"
#include "targeting_flags.hpp"

#include "guardia/deploy/fanout.hpp"
#include "guardia/store/audit_writer.hpp"

#include <unistd.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/json.hpp>

#include <cstdio>
#include <iostream>

namespace guardia::cli {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace guardia::deploy;

namespace {

const char* exec_usage =
    "usage: guardia exec --inventory FILE [--config FILE] [--known-hosts FILE]\n"
    "                    [--host-key-policy strict|accept-new] [--timeout SECONDS]\n"
    "                    [--max-sessions N] [--db FILE] [--json] [--report full|summary|auto]\n"
    "                    [--limit PATTERNS] [--tier N] [--retry-failed ROLLOUT_ID] -- 'COMMAND'\n"
    "\n"
    "Runs one command (checked by the command sanitizer and exec.allow) on every node of the\n"
    "inventory and reports each node's exit code and output.\n"
    "\n"
    "  --inventory FILE     the nodes to run on (required)\n"
    "  --config FILE        engine configuration (default: $GUARDIA_CONFIG, else\n"
    "                       /etc/guardia/guardia.json if it exists, else built-in defaults)\n"
    "  --known-hosts FILE   SSH host keys (default: ssh.known_hosts, else ~/.ssh/known_hosts)\n"
    "  --host-key-policy P  strict or accept-new (default: ssh.host_key_policy, else strict)\n"
    "  --timeout SECONDS    per node, for the command (default: 60; at most 86400)\n"
    "  --max-sessions N     nodes at a time (default: rollout.max_sessions)\n"
    "  --db FILE            audit the run in this database (default: the configuration's\n"
    "                       store.db; without either nothing is audited)\n"
    "  --json               one JSON document on stdout\n"
    "  --report MODE        the plain report: full (a line per node), summary (counts and the\n"
    "                       nodes that failed) or auto (default: full below 1,000 nodes,\n"
    "                       summary from 1,000); --json always lists every node\n"
    "  --limit PATTERNS     only the nodes whose names match (comma-separated names or\n"
    "                       globs *, ?, [...]; repeatable); a pattern matching no node is an error\n"
    "  --tier N             only the nodes of tier N (1..99; comma list or repeatable)\n"
    "  --retry-failed ID    only the nodes that did not end DEPLOYED in rollout ID (read\n"
    "                       from the --db store); nothing left to retry: exit 0\n"
    "  -h, --help           this help\n"
    "  -- 'COMMAND'         the command, after --\n"
    "\n"
    "Exit 0 the command exited 0 on every node, 1 some node failed, 2 bad usage or input or a\n"
    "refused command (nothing sent), 130 cancelled.\n";

std::string one_line(std::string s, std::size_t max) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    auto nl = s.rfind('\n');
    if (nl != std::string::npos) s = s.substr(nl + 1);  // the last line says most
    if (s.size() > max) s = s.substr(0, max) + "...";
    for (auto& c : s)
        if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    return s;
}

}  // namespace

int exec_command(int argc, char** argv) {
    Common common;
    double timeout_s = 60;
    std::size_t max_sessions = 0;
    std::string command;
    ReportMode report_mode = ReportMode::automatic;
    Targeting targeting;
    Args args(argc, argv, 2);
    while (!args.done()) {
        if (args.at_separator()) {
            args.skip();
            auto rest = args.rest();
            for (const auto& w : rest) command += (command.empty() ? "" : " ") + w;
            break;
        }
        const std::string f = args.flag();
        if (common_flag(f, args, common) || targeting_flag(f, args, targeting)) continue;
        if (f == "--timeout") {
            try {
                timeout_s = std::stod(args.value());
            } catch (...) {
                throw UsageError("--timeout needs a number of seconds");
            }
            if (!(timeout_s > 0 && timeout_s <= 86400))
                throw UsageError("--timeout must be between 0 and 86400 s");
        } else if (f == "--max-sessions") {
            try {
                max_sessions = static_cast<std::size_t>(std::stoul(args.value()));
            } catch (...) {
                throw UsageError("--max-sessions needs a positive integer");
            }
            if (max_sessions == 0) throw UsageError("--max-sessions needs a positive integer");
        } else if (f == "--report") {
            report_mode = report_mode_flag(args.value());
        } else if (f == "--help" || f == "-h") {
            return print_help(exec_usage, common, true);
        } else
            throw UsageError("unknown option " + f + "\n" + exec_usage);
    }
    if (command.empty()) throw UsageError(std::string("the command goes after --\n") + exec_usage);

    Engine engine = load_engine(common);
    if (!apply_targeting(targeting, engine, resolve_db_path(common, engine.config)))
        return nothing_to_retry(targeting, "exec", common.json);
    FanoutOptions o;
    o.max_sessions = max_sessions ? max_sessions : engine.config.rollout.max_sessions;
    o.max_connections_per_second = engine.config.rollout.max_connections_per_second;
    o.connect_timeout = engine.config.pipeline.connect_timeout;
    o.command_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
    o.known_hosts = engine.known_hosts;
    o.host_key_policy = engine.host_key_policy;
    o.credentials = engine.credentials;
    o.policy = engine.config.command_policy;
    o.sr_id = "EXEC";
    o.run_id = "exec-" + utc_stamp_compact() + "-" + std::to_string(::getpid());
    std::unique_ptr<store::AuditWriter> audit;
    // --db, else the configuration's store.db; no ./guardia.db fallback: an ad-hoc exec
    // without a store is not audited (as before).
    const std::string db = common.db_path.empty() ? engine.config.db : common.db_path;
    if (!db.empty()) {
        try {
            audit = std::make_unique<store::AuditWriter>(db);
        } catch (const std::exception& e) {
            throw UsageError(std::string("audit database: ") + e.what());
        }
        audit->set_redactions(engine.credentials->secrets());
        audit->start();
        o.audit = audit.get();
        record_targeting(targeting, *audit, o.sr_id, o.run_id);
    }
    const std::size_t n = engine.inventory.nodes.size();
    // Before the Fanout: its timer must be destroyed before the io_context it belongs to.
    asio::io_context ioc(1);
    auto fan = Fanout::create(std::move(engine.inventory), command, std::move(o));
    if (!fan) throw UsageError(fan.error().message);

    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    bool cancelled = false;
    signals.async_wait([&](boost::system::error_code ec, int) {
        if (ec) return;
        cancelled = true;
        std::fprintf(stderr, "guardia exec: cancelling\n");
        (*fan)->cancel();
    });
    std::vector<FanoutResult> results;
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
            results = co_await (*fan)->run();
            if (audit) (void)co_await audit->durable();
            signals.cancel();
        },
        asio::detached);
    ioc.run();
    if (audit) audit->stop();

    std::size_t ok = 0;
    for (const auto& r : results) ok += r.succeeded() ? 1 : 0;
    if (common.json) {
        json::array nodes;
        for (const auto& r : results) {
            json::object j{
                {"name", r.node}, {"ok", r.succeeded()}, {"duration_ms", r.duration.count()}};
            if (r.ran) {
                j["exit_code"] = r.exit_code;
                if (!r.exit_signal.empty()) j["exit_signal"] = r.exit_signal;
                j["stdout"] = r.out;
                j["stderr"] = r.err;
            } else {
                j["error"] = r.error.message;
            }
            nodes.push_back(std::move(j));
        }
        std::cout << json::serialize(json::object{{"command", command},
                                                  {"nodes_total", n},
                                                  {"nodes_ok", ok},
                                                  {"cancelled", cancelled},
                                                  {"nodes", std::move(nodes)}})
                  << std::endl;
    } else {
        const bool every = report_every_node(report_mode, results.size());
        if (!every)
            std::printf("summary: only the nodes that failed (--report full or --json: every node)\n");
        ReportRows rows(every);
        for (const auto& r : results) {
            if (!rows.show(r.succeeded())) continue;
            std::string status, detail;
            if (r.ran && r.exit_signal.empty())
                status = "exit " + std::to_string(r.exit_code);
            else if (r.ran)
                status = "signal " + r.exit_signal;
            else
                status = "FAILED";
            if (!r.ran)
                detail = r.error.message;
            else if (r.exit_code != 0 && !r.err.empty())
                detail = one_line(r.err, 120);
            else
                detail = one_line(r.out, 120);
            std::printf("%-24s %-10s %6lld ms  %s\n", r.node.c_str(), status.c_str(),
                        static_cast<long long>(r.duration.count()), detail.c_str());
        }
        if (rows.more() > 0)
            std::printf("... and %zu more node(s) that failed (--report full or --json)\n",
                        rows.more());
        std::printf("\n%zu of %zu node(s) ok%s\n", ok, n, cancelled ? " (cancelled)" : "");
    }
    if (cancelled) return 130;
    return ok == n ? 0 : 1;
}

}  // namespace guardia::cli
