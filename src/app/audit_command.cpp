// `guardia audit --rollout ID [--node NODE] [--db FILE] [--json]`: a rollout's audit rows in
// order (guardia/store/reader.hpp, read-only); exit 0, 2 unknown rollout or bad input.
//
// `guardia audit verify --db FILE [--json]`: walks the audit log's hash chain
// (guardia/store/audit_chain.hpp) and reports the first altered, deleted or inserted row.
//
// Exit codes: 0 the chain is intact; 3 the chain is broken (the report names the first bad
// row); 2 bad usage or input (missing file, not a Guardia store, a store from before the
// chain): the message names the file. 1 is not used, so that scripts can tell "tampered"
// from every other outcome.
#include "cli.hpp"
#include "commands.hpp"
#include "store_view.hpp"

#include "guardia/store/audit_chain.hpp"

#include <boost/json.hpp>

#include <cstdio>
#include <iostream>

namespace guardia::cli {

namespace json = boost::json;

namespace {

enum class AuditExit : int {
    intact = 0,
    bad_input = 2,  // the exit code of every command's usage and input errors
    broken = 3,
};

const char* audit_usage =
    "usage: guardia audit verify --db FILE [--json]\n"
    "       guardia audit --rollout ID [--node NODE] [--db FILE] [--config FILE] [--json]\n"
    "\n"
    "audit --rollout: the rollout's audit rows in order (time, node, step, event, exit code,\n"
    "duration, message); exit 0, 2 unknown rollout or bad input.\n"
    "  --rollout ID     the rollout whose rows are listed (required)\n"
    "  --node NODE      only that node's rows\n"
    "  --db FILE        the store to read (default: the config's store.db, else ./guardia.db)\n"
    "  --config FILE    the configuration whose store.db is read when --db is not given\n"
    "  --json           a JSON array of row objects instead of the table\n"
    "\n"
    "audit verify:\n"
    "Checks the hash chain of the audit log in FILE (opened read-only) and reports the\n"
    "first altered, deleted or inserted row. Exit 0 intact, 3 broken, 2 bad input.\n"
    "The chain cannot see rows deleted from its end: keep the printed last id and hash\n"
    "somewhere else and compare them later.\n"
    "\n"
    "  --db FILE    the audit database to check (required)\n"
    "  --json       one JSON object on stdout\n"
    "  -h, --help   this help\n";

json::object report_json(const std::string& db, const store::ChainReport& r) {
    json::object o{{"db", db}, {"status", r.first_break ? "broken" : "intact"}, {"rows", r.rows}};
    o["first_id"] = r.first_id ? json::value(*r.first_id) : json::value(nullptr);
    o["last_id"] = r.last_id ? json::value(*r.last_id) : json::value(nullptr);
    o["last_hash"] = r.last_id ? json::value(r.last_hash) : json::value(nullptr);
    if (r.first_break) {
        const auto& b = *r.first_break;
        o["break"] = json::object{{"row_id", b.row_id},
                                  {"fault", std::string(store::to_string(b.fault))},
                                  {"previous_id", b.previous_id},
                                  {"message", b.message}};
    }
    return o;
}

void print_text(const std::string& db, const store::ChainReport& r) {
    if (r.first_break) {
        const auto& b = *r.first_break;
        std::printf("audit chain of %s: BROKEN at row %lld (%s)\n  %s\n", db.c_str(),
                    static_cast<long long>(b.row_id),
                    std::string(store::to_string(b.fault)).c_str(), b.message.c_str());
    } else {
        std::printf("audit chain of %s: intact\n", db.c_str());
    }
    if (r.last_id)
        std::printf("rows: %lld (ids %lld..%lld)\nlast row: id %lld hash %s\n",
                    static_cast<long long>(r.rows), static_cast<long long>(*r.first_id),
                    static_cast<long long>(*r.last_id), static_cast<long long>(*r.last_id),
                    r.last_hash.c_str());
    else
        std::printf("rows: 0\n");
    // Said every time: an intact chain is not proof that nothing was cut from its end.
    std::printf(
        "note: rows deleted from the end cannot be detected by the chain; compare the last id\n"
        "      and hash with a copy kept elsewhere.\n");
}

int rollout_rows(int argc, char** argv) {
    ReaderFlags rf;
    std::string rollout, node;
    Args args(argc, argv, 2);
    while (!args.done()) {
        const std::string f = args.flag();
        if (reader_flag(f, args, rf)) continue;
        if (f == "--rollout")
            rollout = args.value();
        else if (f == "--node")
            node = args.value();
        else if (f == "--help" || f == "-h") {
            std::fputs(audit_usage, stdout);
            return 0;
        } else
            throw UsageError("unknown option '" + f + "'");
    }
    if (rollout.empty()) throw UsageError("--rollout ID is required (or: audit verify)");
    const std::string db = rf.db_path();
    auto reader = open_reader(db);
    auto rows = reader.audit(rollout, node);
    if (!rows) throw UsageError(rows.error().message);
    if (rows->empty()) {
        auto known = reader.summary(rollout);
        if (!known) throw UsageError(known.error().message);
        if (!*known) throw UsageError("no rollout '" + rollout + "' in " + db);
    }
    if (rf.json) {
        json::array out;
        for (const auto& r : *rows) {
            json::object o{{"id", r.id},         {"ts_ms", r.ts_ms},   {"time", utc_time(r.ts_ms)},
                           {"sr_id", r.sr_id},   {"node", r.node},     {"step", r.step},
                           {"event", r.event},   {"message", r.detail}};
            o["exit_code"] = r.exit_code ? json::value(*r.exit_code) : json::value(nullptr);
            o["duration_ms"] = r.duration_ms ? json::value(*r.duration_ms) : json::value(nullptr);
            if (!r.principal.empty()) o["principal"] = r.principal;
            out.push_back(std::move(o));
        }
        std::cout << json::serialize(out) << std::endl;
        return 0;
    }
    std::printf("%-24s %-20s %-12s %-20s %4s %9s  %s\n", "TIME", "NODE", "STEP", "EVENT", "EXIT",
                "DURATION", "MESSAGE");
    for (const auto& r : *rows) {
        const std::string exit_text = r.exit_code ? std::to_string(*r.exit_code) : "-";
        const std::string dur = r.duration_ms ? std::to_string(*r.duration_ms) + " ms" : "-";
        std::printf("%-24s %-20s %-12s %-20s %4s %9s  %s\n", utc_time(r.ts_ms).c_str(),
                    r.node.empty() ? "-" : r.node.c_str(), r.step.c_str(), r.event.c_str(),
                    exit_text.c_str(), dur.c_str(), printable(r.detail).c_str());
    }
    return 0;
}

}  // namespace

int audit_command(int argc, char** argv) {
    if (argc < 3) {
        std::fputs(audit_usage, stderr);
        return static_cast<int>(AuditExit::bad_input);
    }
    const std::string sub = argv[2];
    if (sub.rfind("--", 0) == 0 && sub != "--help") return rollout_rows(argc, argv);
    if (sub == "--help" || sub == "-h" || sub == "help") {
        std::fputs(audit_usage, stdout);
        return 0;
    }
    if (sub != "verify") throw UsageError("unknown subcommand '" + sub + "' (try: audit verify)");
    std::string db;
    bool as_json = false;
    Args args(argc, argv, 3);
    while (!args.done()) {
        const std::string f = args.flag();
        if (f == "--db")
            db = args.value();
        else if (f == "--json")
            as_json = true;
        else if (f == "--help" || f == "-h") {
            std::fputs(audit_usage, stdout);
            return 0;
        } else
            throw UsageError("unknown option '" + f + "'");
    }
    if (db.empty()) throw UsageError("--db FILE is required");

    auto report = store::verify_audit_chain(db);
    if (!report) throw UsageError(report.error().message);
    if (as_json)
        std::cout << json::serialize(report_json(db, *report)) << std::endl;
    else
        print_text(db, *report);
    return static_cast<int>(report->first_break ? AuditExit::broken : AuditExit::intact);
}

}  // namespace guardia::cli
