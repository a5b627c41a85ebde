#include "targeting_flags.hpp"

#include "guardia/store/database.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>

namespace guardia::cli {

bool targeting_flag(const std::string& flag, Args& args, Targeting& t) {
    if (flag == "--limit") {
        auto v = deploy::parse_limit(args.value());
        if (!v) throw UsageError(v.error().message);
        t.filter.limit.insert(t.filter.limit.end(), v->begin(), v->end());
    } else if (flag == "--tier") {
        auto v = deploy::parse_tiers(args.value());
        if (!v) throw UsageError(v.error().message);
        t.filter.tiers.insert(t.filter.tiers.end(), v->begin(), v->end());
    } else if (flag == "--retry-failed") {
        if (!t.filter.retry_rollout.empty()) throw UsageError("--retry-failed is given twice");
        t.filter.retry_rollout = args.value();
        if (t.filter.retry_rollout.empty()) throw UsageError("--retry-failed needs a rollout id");
    } else {
        return false;
    }
    return true;
}

bool apply_targeting(Targeting& t, Engine& engine, const std::string& db) {
    if (!t.filter.any()) return true;
    if (!t.filter.retry_rollout.empty()) {
        auto store = store::Database::open_read_only(db);
        if (!store) throw UsageError("--retry-failed: " + store.error().message);
        auto row = store->rollout(t.filter.retry_rollout);
        if (!row) throw UsageError("--retry-failed: " + row.error().message);
        if (!*row)
            throw UsageError("--retry-failed: no rollout '" + t.filter.retry_rollout + "' in " +
                             db);
        auto results = store->node_results(t.filter.retry_rollout);
        if (!results) throw UsageError("--retry-failed: " + results.error().message);
        t.filter.retry = deploy::not_deployed(*results);
        std::size_t gone = 0;
        for (const auto& name : t.filter.retry)
            gone += std::none_of(engine.inventory.nodes.begin(), engine.inventory.nodes.end(),
                                 [&](const deploy::Node& n) { return n.name == name; });
        if (gone > 0)
            std::fprintf(stderr,
                         "guardia: --retry-failed: %zu node(s) not deployed by rollout %s are not "
                         "in this inventory (not retried)\n",
                         gone, t.filter.retry_rollout.c_str());
    }
    const std::size_t total = engine.inventory.nodes.size();
    auto selected = deploy::select_nodes(engine.inventory, t.filter);
    if (!selected) throw UsageError(selected.error().message);
    t.description = deploy::describe_selection(t.filter, *selected, total);
    engine.inventory = std::move(*selected);
    return !engine.inventory.nodes.empty();
}

int nothing_to_retry(const Targeting& t, const char* command, bool as_json) {
    if (as_json)
        std::cout << boost::json::serialize(
                         boost::json::object{{"retry_failed", t.filter.retry_rollout},
                                             {"nothing_to_retry", true},
                                             {"nodes", boost::json::array()}})
                  << std::endl;
    std::fprintf(stderr, "guardia %s: nothing to retry: every selected node of rollout %s ended "
                         "DEPLOYED\n",
                 command, t.filter.retry_rollout.c_str());
    return 0;
}

void record_targeting(const Targeting& t, store::AuditWriter& audit, const std::string& sr_id,
                      const std::string& run_id) {
    if (!t.filter.any()) return;
    store::AuditEvent e;
    e.sr_id = sr_id;
    e.rollout_id = run_id;
    e.step = "ROLLOUT";
    e.event = "ROLLOUT_TARGET";
    e.detail = t.description;
    audit.record(std::move(e));
}

}  // namespace guardia::cli
