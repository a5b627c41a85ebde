#include "cli_recovery.hpp"

#include "guardia/deploy/owner.hpp"
#include "guardia/deploy/recovery.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>

#include <fstream>
#include <map>
#include <sstream>

namespace guardia::cli {

namespace asio = boost::asio;
namespace json = boost::json;

// The nodes the database recorded (record_inventory, or the service's imports), each parsed
// and admitted on its own: one bad row does not hide the others.
std::map<std::string, deploy::Node> stored_nodes(store::Database& db, const Engine& engine) {
    std::map<std::string, deploy::Node> out;
    auto rows = db.inventory_nodes("", "");
    if (!rows) return out;
    for (const auto& row : *rows) {
        json::error_code ec;
        auto node = json::parse(row.payload, ec);
        if (ec) continue;
        auto inv = deploy::parse_inventory(
            json::serialize(json::object{{"nodes", json::array{std::move(node)}}}),
            "stored inventory node " + row.name, engine.config.command_policy);
        if (!inv || inv->nodes.empty()) continue;
        if (!engine.credentials->admit(inv->nodes.front(), engine.credentials->policy())) continue;
        out[row.name] = inv->nodes.front();
    }
    return out;
}

namespace {

std::string sql_text(std::string_view s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
    return out + "'";
}

// Sets the rollout's owner to this process if it still is what `r` says (one statement, on a
// connection of its own, committed before any node is touched). False: someone else did.
bool claim(const std::string& db_path, const store::RolloutRecord& r) {
    try {
        store::Database db(db_path);
        auto changed = db.exec("UPDATE rollouts SET owner = " + sql_text(deploy::local_owner_id()) +
                               " WHERE id = " + sql_text(r.id) + " AND owner = " + sql_text(r.owner) +
                               " AND finished_ms IS NULL");
        if (!changed) throw AuditUnavailable("the audit database cannot be written: " +
                                             changed.error().message + " (nothing was started)");
        auto n = db.query_int64("SELECT changes()");
        return n && *n == 1;
    } catch (const std::runtime_error& e) {
        if (dynamic_cast<const AuditUnavailable*>(&e)) throw;
        throw AuditUnavailable(std::string("the audit database cannot be written: ") + e.what());
    }
}

}  // namespace

void record_inventory(const std::string& inventory_path, store::AuditWriter& audit) {
    std::ifstream in(inventory_path);
    std::stringstream text;
    text << in.rdbuf();
    json::error_code ec;
    auto doc = json::parse(text.str(), ec);
    if (ec || !doc.is_object()) return;  // load_inventory accepted it: cannot happen
    const auto* nodes = doc.as_object().if_contains("nodes");
    if (!nodes || !nodes->is_array()) return;
    for (const auto& n : nodes->as_array()) {
        if (!n.is_object()) continue;
        const auto& o = n.as_object();
        auto text_of = [&](const char* key) {
            const auto* v = o.if_contains(key);
            return v && v->is_string() ? std::string(v->as_string()) : std::string();
        };
        store::InventoryNodeRecord r;
        r.name = text_of("name");
        if (r.name.empty()) continue;
        r.inst_id = text_of("inst_id");
        r.system_name = text_of("system_name");
        r.payload = json::serialize(n);
        audit.upsert_inventory_node(std::move(r));
    }
}

CliRecoveryOutcome recover_database(const std::string& db_path, const Engine& engine,
                                    store::AuditWriter& audit, const std::string& origin,
                                    bool force) {
    CliRecoveryOutcome out;
    // What the writer replayed from a spill journal must be in the store before it is read:
    // a rollout that ended ABORTED while the disk was full is not in flight.
    {
        asio::io_context flush(1);
        Result<void> flushed;
        asio::co_spawn(
            flush, [&]() -> asio::awaitable<void> { flushed = co_await audit.durable(); },
            asio::detached);
        flush.run();
        if (!flushed)
            throw AuditUnavailable("the audit database cannot be written: " +
                                   flushed.error().message + " (nothing was started)");
    }
    auto db = store::Database::open_read_only(db_path);
    if (!db) throw UsageError(db.error().message);
    auto unfinished = db->unfinished_rollouts();
    if (!unfinished) throw UsageError(unfinished.error().message);
    if (unfinished->empty()) return out;

    std::map<std::string, deploy::Node> nodes = stored_nodes(*db, engine);
    for (const auto& n : engine.inventory.nodes) nodes[n.name] = n;  // the file given wins

    std::vector<deploy::RecoveryInput> todo;
    for (const auto& r : *unfinished) {
        // Only a rollout whose process is known to be gone; with --force (an operator who
        // knows), also one whose process cannot be judged: another machine, or a row written
        // before rollouts named their process. Never a live one.
        const auto live = deploy::owner_liveness(r.owner);
        if (live == deploy::OwnerLiveness::alive ||
            (live == deploy::OwnerLiveness::unknown && !force)) {
            ++out.still_running;
            out.lines.push_back(
                "rollout " + r.id + " is unfinished but run by " +
                (r.owner.empty() ? std::string("a guardia that did not record itself") : r.owner) +
                (live == deploy::OwnerLiveness::alive
                     ? ", which is alive: left alone"
                     : ", which cannot be judged from here: left alone (guardia recover --force "
                       "once you know that process is gone)"));
            continue;
        }
        // Claim it: the row names this process from now on, so a second recovery (another
        // `guardia deploy` started at the same time on this database) sees a live owner and
        // leaves it alone. Compare-and-set on the owner the row had when it was read.
        if (!claim(db_path, r)) {
            ++out.still_running;
            out.lines.push_back("rollout " + r.id +
                                " is being recovered by another guardia process: left alone");
            continue;
        }
        auto results = db->node_results(r.id);
        auto arts = db->artifacts_for(r.sr_id);
        auto rows = db->audit_for_rollout(r.id);
        if (!results) throw UsageError(results.error().message);
        if (!arts) throw UsageError(arts.error().message);
        if (!rows) throw UsageError(rows.error().message);
        deploy::RecoveryInput in;
        in.rollout = r;
        in.results = std::move(*results);
        in.nodes = nodes;
        in.audit = std::move(*rows);
        in.origin = origin;
        for (const auto& a : *arts) {
            deploy::ArtifactSpec s;
            s.file_name = a.name;
            s.sha256 = a.sha256;
            s.local_path = a.path;
            in.artifacts.push_back(std::move(s));
        }
        todo.push_back(std::move(in));
    }
    if (todo.empty()) return out;

    deploy::PipelineSettings settings = engine.config.pipeline;
    settings.owner = deploy::local_owner_id();
    settings.known_hosts = engine.known_hosts;
    settings.host_key_policy = engine.host_key_policy;
    settings.credentials = engine.credentials;
    settings.audit = &audit;

    asio::io_context ioc(1);
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
            for (auto& in : todo) {
                const std::string rid = in.rollout.id, owner = in.rollout.owner;
                auto rep = co_await deploy::recover_rollout(std::move(in), settings,
                                                            engine.config.rollout.max_sessions);
                ++out.rollouts;
                out.lines.push_back("rollout " + rid + " (left by " +
                                    (owner.empty() ? std::string("an earlier guardia") : owner) +
                                    "): " + rep.reason);
                for (const auto& n : rep.nodes) {
                    if (n.status == "SKIPPED") continue;
                    if (n.status == "RECOVERY_FAILED") ++out.nodes_left;
                    out.lines.push_back("  " + n.node + "  " + n.status +
                                        (n.error.empty() ? std::string() : "  " + n.error));
                }
            }
            out.written = co_await audit.durable();
        },
        asio::detached);
    ioc.run();
    return out;
}

}  // namespace guardia::cli
