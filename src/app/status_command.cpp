// `guardia status [ROLLOUT_ID]` and `guardia history [--sr SR]`: what the store says about
// rollouts, read-only (guardia/store/reader.hpp; never creates or migrates a database).
//
// Exit codes: 0 found (history: also when the list is empty); 2 bad usage or input: unknown
// rollout id, no rollout at all (status), a missing file or one that is not a Guardia store.
#include "cli.hpp"
#include "commands.hpp"
#include "store_view.hpp"

#include "guardia/deploy/owner.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>

namespace guardia::cli {

namespace json = boost::json;

namespace {

const char* status_usage =
    "usage: guardia status [ROLLOUT_ID] [--db FILE] [--config FILE] [--json]\n"
    "  ROLLOUT_ID       the rollout to show (default: the most recent one)\n"
    "  --db FILE        the store to read (default: the config's store.db, else ./guardia.db)\n"
    "  --config FILE    the configuration whose store.db is read when --db is not given\n"
    "  --json           one JSON document instead of the text report\n"
    "Exit 0 found, 2 unknown rollout or bad input. The store is only read.\n";

const char* history_usage =
    "usage: guardia history [--sr SR] [--limit N] [--db FILE] [--config FILE] [--json]\n"
    "  --sr SR          only the rollouts of that SR\n"
    "  --limit N        at most N rollouts, newest first (default 20)\n"
    "  --db FILE        the store to read (default: the config's store.db, else ./guardia.db)\n"
    "  --config FILE    the configuration whose store.db is read when --db is not given\n"
    "  --json           a JSON array instead of the table\n"
    "Exit 0 (also when no rollout matches), 2 bad input. The store is only read.\n";

// "finished", or what owner_liveness says of an unfinished rollout's process.
std::string owner_state(const store::RolloutRecord& r) {
    if (r.finished_ms) return "finished";
    return std::string(deploy::to_string(deploy::owner_liveness(r.owner)));
}

std::optional<std::int64_t> duration_ms(const store::RolloutRecord& r) {
    if (!r.finished_ms) return std::nullopt;
    return *r.finished_ms - r.created_ms;
}

json::object counts_json(const store::RolloutSummary& s) {
    json::object c{{"total", s.nodes}};
    for (const auto& [status, n] : s.by_status) c[status] = n;
    return c;
}

std::string counts_text(const store::RolloutSummary& s) {
    std::string out;
    for (const auto& [status, n] : s.by_status)
        out += (out.empty() ? "" : ", ") + std::to_string(n) + " " + status;
    return out.empty() ? "-" : out;
}

json::object rollout_json(const store::RolloutSummary& s) {
    const auto& r = s.rollout;
    json::object o{{"rollout_id", r.id},         {"sr_id", r.sr_id},
                   {"status", r.status},         {"reason", r.reason},
                   {"started_ms", r.created_ms}, {"started", utc_time(r.created_ms)}};
    o["finished_ms"] = r.finished_ms ? json::value(*r.finished_ms) : json::value(nullptr);
    o["finished"] = r.finished_ms ? json::value(utc_time(*r.finished_ms)) : json::value(nullptr);
    const auto d = duration_ms(r);
    o["duration_ms"] = d ? json::value(*d) : json::value(nullptr);
    o["counts"] = counts_json(s);
    return o;
}

int show_status(const std::string& db, std::string id, bool as_json) {
    auto reader = open_reader(db);
    if (id.empty()) {
        auto latest = reader.latest_rollout_id();
        if (!latest) throw UsageError(latest.error().message);
        if (!*latest) throw UsageError("no rollout in " + db);
        id = **latest;
    }
    auto found = reader.summary(id);
    if (!found) throw UsageError(found.error().message);
    if (!*found) throw UsageError("no rollout '" + id + "' in " + db);
    const auto& s = **found;
    const std::string state = owner_state(s.rollout);
    if (as_json) {
        json::object o = rollout_json(s);
        o["owner"] = s.rollout.owner;
        o["owner_state"] = state;
        o["running"] = state == "alive";
        o["target"] = s.target.empty() ? json::value(nullptr) : json::value(s.target);
        json::array tiers;
        for (const auto& t : s.tiers)
            tiers.push_back(json::object{{"tier", t.tier},
                                         {"total", t.total},
                                         {"finished", t.finished},
                                         {"deployed", t.deployed},
                                         {"failed", t.failed},
                                         {"not_started", t.not_started}});
        o["tiers"] = std::move(tiers);
        json::array failed;
        for (const auto& n : s.failed)
            failed.push_back(json::object{
                {"name", n.node}, {"status", n.status}, {"step", n.step}, {"error", n.error}});
        o["failed_nodes"] = std::move(failed);
        std::cout << json::serialize(o) << std::endl;
        return 0;
    }
    const auto& r = s.rollout;
    std::printf("rollout   %s\nsr        %s\nstatus    %s\n", r.id.c_str(), r.sr_id.c_str(),
                r.status.c_str());
    if (!r.reason.empty()) std::printf("reason    %s\n", printable(r.reason).c_str());
    std::printf("started   %s\n", utc_time(r.created_ms).c_str());
    if (r.finished_ms)
        std::printf("finished  %s (%s)\n", utc_time(*r.finished_ms).c_str(),
                    seconds_text(*duration_ms(r)).c_str());
    else if (state == "alive")
        std::printf("running   yes: %s is alive\n", r.owner.c_str());
    else if (state == "gone")
        std::printf("running   no: %s ended without finishing it (guardia recover)\n",
                    r.owner.c_str());
    else
        std::printf("running   unknown: %s may still run it (another host)\n",
                    r.owner.empty() ? "its process" : r.owner.c_str());
    if (!s.target.empty()) std::printf("target    %s\n", s.target.c_str());
    std::printf("nodes     %zu: %s\n", s.nodes, counts_text(s).c_str());
    if (!s.tiers.empty()) {
        std::printf("\n%4s %6s  %8s %6s %11s\n", "TIER", "NODES", "DEPLOYED", "FAILED",
                    "NOT_STARTED");
        for (const auto& t : s.tiers)
            if (t.finished)
                std::printf("%4d %6zu  %8zu %6zu %11zu\n", t.tier, t.total, t.deployed, t.failed,
                            t.not_started);
            else
                std::printf("%4d %6zu  (in progress or interrupted)\n", t.tier, t.total);
    }
    if (!s.failed.empty()) {
        std::printf("\nfailed nodes:\n%-24s %-16s %-12s %s\n", "NODE", "STATUS", "STEP", "ERROR");
        for (const auto& n : s.failed)
            std::printf("%-24s %-16s %-12s %s\n", n.node.c_str(), n.status.c_str(),
                        n.step.c_str(), printable(n.error).c_str());
    }
    return 0;
}

}  // namespace

int status_command(int argc, char** argv) {
    ReaderFlags rf;
    std::string id;
    Args args(argc, argv, 2);
    if (argc > 2 && argv[2][0] != '-') {
        id = argv[2];
        args.skip();
    }
    while (!args.done()) {
        const std::string f = args.flag();
        if (reader_flag(f, args, rf)) continue;
        if (f == "--help" || f == "-h") {
            std::fputs(status_usage, stdout);
            return 0;
        } else
            throw UsageError("unknown option " + f + "\n" + status_usage);
    }
    return show_status(rf.db_path(), id, rf.json);
}

int history_command(int argc, char** argv) {
    ReaderFlags rf;
    std::string sr;
    int limit = 20;
    Args args(argc, argv, 2);
    while (!args.done()) {
        const std::string f = args.flag();
        if (reader_flag(f, args, rf)) continue;
        if (f == "--sr")
            sr = args.value();
        else if (f == "--limit") {
            const std::string v = args.value();
            try {
                std::size_t used = 0;
                limit = std::stoi(v, &used);
                if (used != v.size()) limit = 0;
            } catch (...) {
                limit = 0;
            }
            if (limit < 1 || limit > 10000)
                throw UsageError("--limit '" + v + "' is not a number 1..10000");
        } else if (f == "--help" || f == "-h") {
            std::fputs(history_usage, stdout);
            return 0;
        } else
            throw UsageError("unknown option " + f + "\n" + history_usage);
    }
    auto reader = open_reader(rf.db_path());
    auto rows = reader.history(sr, limit);
    if (!rows) throw UsageError(rows.error().message);
    if (rf.json) {
        json::array out;
        for (const auto& s : *rows) out.push_back(rollout_json(s));
        std::cout << json::serialize(out) << std::endl;
        return 0;
    }
    int id_w = 7, sr_w = 2;  // "ROLLOUT", "SR"
    for (const auto& s : *rows) {
        id_w = std::max(id_w, static_cast<int>(s.rollout.id.size()));
        sr_w = std::max(sr_w, static_cast<int>(s.rollout.sr_id.size()));
    }
    std::printf("%-*s %-*s %-10s %-24s %9s  %s\n", id_w, "ROLLOUT", sr_w, "SR", "STATUS",
                "STARTED", "DURATION", "NODES");
    for (const auto& s : *rows) {
        const auto d = duration_ms(s.rollout);
        std::printf("%-*s %-*s %-10s %-24s %9s  %zu: %s\n", id_w, s.rollout.id.c_str(), sr_w,
                    s.rollout.sr_id.c_str(), s.rollout.status.c_str(),
                    utc_time(s.rollout.created_ms).c_str(), d ? seconds_text(*d).c_str() : "-",
                    s.nodes, counts_text(s).c_str());
    }
    if (rows->empty()) std::printf("(no rollout%s)\n", sr.empty() ? "" : (" of SR " + sr).c_str());
    return 0;
}

}  // namespace guardia::cli
