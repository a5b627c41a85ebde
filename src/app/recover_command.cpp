// `guardia recover --db FILE [--inventory FILE]`: finishes what a killed `guardia deploy` (or
// a service that died and will not start again) left in flight, from the command line.
//
// Exit codes: 0 nothing was left, or every node of every unfinished rollout is safe again
// (deployed, restored or untouched, lock released); 1 some node could not be inspected
// (unreachable, or not in any inventory known) or a rollout was left alone because its
// process still runs: run it again later; 2 bad usage or input; 3 the audit database could not
// be written (what was done is spilled beside it).
#include "cli.hpp"
#include "cli_recovery.hpp"
#include "commands.hpp"

#include "guardia/store/audit_writer.hpp"

#include <boost/json.hpp>

#include <cstdio>
#include <iostream>
#include <sys/stat.h>

namespace guardia::cli {

namespace json = boost::json;

namespace {

const char* recover_usage =
    "usage: guardia recover [--db FILE] [--inventory FILE] [--config FILE]\n"
    "                       [--known-hosts FILE] [--host-key-policy strict|accept-new]\n"
    "                       [--force] [--json]\n"
    "\n"
    "Recovers every rollout a guardia process left unfinished in FILE (it was killed or\n"
    "its machine went down): each node it was working on is inspected; one left mid-step\n"
    "under that rollout's lock is restored exactly from its backup and unlocked. Nodes are\n"
    "found in --inventory, else in the inventory the database recorded.\n"
    "\n"
    "  --db FILE            the audit database of the interrupted rollout (default: the\n"
    "                       configuration's store.db, else ./guardia.db; it must exist)\n"
    "  --inventory FILE     the inventory it deployed to (default: the one recorded)\n"
    "  --config FILE        engine configuration (credentials, timeouts) (default:\n"
    "                       $GUARDIA_CONFIG, else /etc/guardia/guardia.json if it exists,\n"
    "                       else built-in defaults)\n"
    "  --known-hosts FILE   SSH host keys (default: ssh.known_hosts, else ~/.ssh/known_hosts)\n"
    "  --host-key-policy P  strict or accept-new (default: ssh.host_key_policy, else strict)\n"
    "  --force              also recover rollouts whose process cannot be shown to be gone\n"
    "                       (e.g. run on another host)\n"
    "  --json               one JSON object on stdout\n"
    "  -h, --help           this help\n"
    "\n"
    "Exit 0 all safe (or nothing to do), 1 something left to recover, 2 bad input,\n"
    "3 the audit database could not be written.\n";

}  // namespace

int recover_command(int argc, char** argv) {
    Common common;
    bool force = false;
    Args args(argc, argv, 2);
    while (!args.done()) {
        const std::string f = args.flag();
        if (common_flag(f, args, common)) continue;
        if (f == "--force")
            force = true;
        else if (f == "--help" || f == "-h")
            return print_help(recover_usage, common, true);
        else
            throw UsageError("unknown option " + f + "\n" + recover_usage);
    }
    Engine engine = load_engine(common, !common.inventory_path.empty());
    const bool db_given = !common.db_path.empty();
    common.db_path = resolve_db_path(common, engine.config);
    struct stat st {};
    if (::stat(common.db_path.c_str(), &st) != 0)
        throw UsageError(db_given ? "--db " + common.db_path + ": no such database"
                                  : "no such database: " + common.db_path +
                                        " (the default: give --db FILE)\n" + recover_usage);

    std::unique_ptr<store::AuditWriter> audit;
    try {
        audit = std::make_unique<store::AuditWriter>(common.db_path);
    } catch (const std::exception& e) {
        throw UsageError(std::string("audit database: ") + e.what());
    }
    audit->set_redactions(engine.credentials->secrets());
    audit->start();
    CliRecoveryOutcome r =
        recover_database(common.db_path, engine, *audit, "by guardia recover", force);
    audit->stop();
    if (!r.written) {
        for (const auto& l : r.lines) std::fprintf(stderr, "%s\n", l.c_str());
        throw AuditUnavailable("the nodes were recovered, but the audit database could not record "
                               "it: " + r.written.error().message +
                               " (spilled beside the database; run guardia recover again once it "
                               "can be written)");
    }
    const bool clean = r.nodes_left == 0 && r.still_running == 0;
    if (common.json) {
        json::array lines;
        for (const auto& l : r.lines) lines.push_back(json::string(l));
        std::cout << json::serialize(json::object{{"db", common.db_path},
                                                  {"recovered_rollouts", r.rollouts},
                                                  {"left_running", r.still_running},
                                                  {"nodes_left", r.nodes_left},
                                                  {"status", clean ? "ok" : "incomplete"},
                                                  {"lines", std::move(lines)}})
                  << std::endl;
    } else {
        if (r.rollouts == 0 && r.still_running == 0)
            std::printf("guardia recover: nothing to recover in %s\n", common.db_path.c_str());
        for (const auto& l : r.lines) std::printf("%s\n", l.c_str());
        if (!clean)
            std::printf("guardia recover: %zu node(s) could not be recovered, %zu rollout(s) left "
                        "running: run guardia recover again once they are reachable\n",
                        r.nodes_left, r.still_running);
    }
    return clean ? 0 : 1;
}

}  // namespace guardia::cli
