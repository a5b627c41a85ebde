#include "guardia/store/reader.hpp"

#include "detail/sqlite.hpp"

#include <algorithm>
#include <cstdio>

namespace guardia::store {

using detail::sqlite_error;
using detail::Statement;

bool is_failed_status(std::string_view status) {
    // Undone on purpose after deploying (abort policy, PM rejection): not a failure.
    return status != "DEPLOYED" && status != "DRY_RUN_OK" && status != "PENDING" &&
           status != "RUNNING" && status != "SKIPPED" && status != "ROLLED_BACK_BY_POLICY" &&
           status != "ROLLED_BACK_BY_PM";
}

std::size_t RolloutSummary::count(std::string_view status) const {
    for (const auto& [s, n] : by_status)
        if (s == status) return n;
    return 0;
}

bool apply_tier_event(std::vector<TierSummary>& tiers, std::string_view event,
                      std::string_view detail) {
    const std::string text(detail);
    int tier = 0;
    unsigned long a = 0, b = 0, c = 0;
    char word[16] = {};
    TierSummary parsed;
    if (event == "TIER_START") {
        if (std::sscanf(text.c_str(), "tier %d: %lu node", &tier, &a) != 2) return false;
        parsed.total = a;
    } else if (event == "TIER_DONE") {
        if (std::sscanf(text.c_str(), "tier %d: %lu %15[a-z], %lu failed, %lu not started", &tier,
                        &a, word, &b, &c) != 5)
            return false;
        parsed.finished = true;
        parsed.deployed = a;
        parsed.failed = b;
        parsed.not_started = c;
    } else {
        return false;
    }
    auto it = std::find_if(tiers.begin(), tiers.end(),
                           [&](const TierSummary& t) { return t.tier == tier; });
    if (it == tiers.end()) {
        tiers.emplace_back();
        it = std::prev(tiers.end());
        it->tier = tier;
    }
    if (parsed.finished) {
        it->finished = true;
        it->deployed = parsed.deployed;
        it->failed = parsed.failed;
        it->not_started = parsed.not_started;
        if (it->total == 0) it->total = a + b + c;
    } else {
        it->total = parsed.total;
    }
    return true;
}

Result<RolloutReader> RolloutReader::open(std::string path) {
    auto db = Database::open_read_only(std::move(path));
    if (!db) return db.error();
    return RolloutReader(std::move(*db));
}

Result<std::optional<std::string>> RolloutReader::latest_rollout_id() {
    auto stmt = Statement::prepare(db_.native_handle(),
                                   "SELECT id FROM rollouts ORDER BY created_ms DESC, id DESC"
                                   " LIMIT 1");
    if (!stmt) return stmt.error();
    const int rc = stmt->step();
    if (rc == SQLITE_DONE) return std::optional<std::string>();
    if (rc != SQLITE_ROW)
        return sqlite_error(db_.native_handle(), rc, "store " + path() + ": reading rollouts");
    return std::optional<std::string>(stmt->text(0));
}

Result<std::vector<std::pair<std::string, std::size_t>>> RolloutReader::status_counts(
    std::string_view rollout_id) {
    auto stmt = Statement::prepare(db_.native_handle(),
                                   "SELECT status, count(*) FROM node_results"
                                   " WHERE rollout_id = ?1 GROUP BY status ORDER BY status");
    if (!stmt) return stmt.error();
    stmt->bind(1, rollout_id);
    std::vector<std::pair<std::string, std::size_t>> out;
    int rc;
    while ((rc = stmt->step()) == SQLITE_ROW)
        out.emplace_back(stmt->text(0), static_cast<std::size_t>(stmt->int64(1)));
    if (rc != SQLITE_DONE)
        return sqlite_error(db_.native_handle(), rc,
                            "store " + path() + ": counting the nodes of rollout " +
                                std::string(rollout_id));
    return out;
}

Result<std::optional<RolloutSummary>> RolloutReader::summary(std::string_view rollout_id) {
    auto row = db_.rollout(rollout_id);
    if (!row) return row.error();
    if (!*row) return std::optional<RolloutSummary>();
    RolloutSummary s;
    s.rollout = std::move(**row);
    auto counts = status_counts(rollout_id);
    if (!counts) return counts.error();
    s.by_status = std::move(*counts);
    for (const auto& [status, n] : s.by_status) s.nodes += n;
    auto nodes = db_.node_results(rollout_id);
    if (!nodes) return nodes.error();
    for (auto& n : *nodes)
        if (is_failed_status(n.status)) s.failed.push_back(std::move(n));
    auto events = db_.audit_for_rollout(rollout_id);
    if (!events) return events.error();
    for (const auto& e : *events) {
        if (!e.node.empty()) continue;
        if (e.event == "ROLLOUT_TARGET") s.target = e.detail;
        (void)apply_tier_event(s.tiers, e.event, e.detail);
    }
    return std::optional<RolloutSummary>(std::move(s));
}

Result<std::vector<RolloutSummary>> RolloutReader::history(std::string_view sr_id, int limit) {
    if (limit < 1) return Error(errc::invalid_argument, "history limit must be at least 1");
    auto stmt = Statement::prepare(
        db_.native_handle(),
        "SELECT id, sr_id, status, reason, created_ms, finished_ms, owner FROM rollouts"
        " WHERE ?1 = '' OR sr_id = ?1 ORDER BY created_ms DESC, id DESC LIMIT ?2");
    if (!stmt) return stmt.error();
    stmt->bind(1, sr_id);
    stmt->bind(2, std::int64_t{limit});
    std::vector<RolloutSummary> out;
    int rc;
    while ((rc = stmt->step()) == SQLITE_ROW) {
        RolloutSummary s;
        s.rollout.id = stmt->text(0);
        s.rollout.sr_id = stmt->text(1);
        s.rollout.status = stmt->text(2);
        s.rollout.reason = stmt->text(3);
        s.rollout.created_ms = stmt->int64(4);
        s.rollout.finished_ms = stmt->optional_int64(5);
        s.rollout.owner = stmt->text(6);
        out.push_back(std::move(s));
    }
    if (rc != SQLITE_DONE)
        return sqlite_error(db_.native_handle(), rc, "store " + path() + ": reading rollouts");
    for (auto& s : out) {
        auto counts = status_counts(s.rollout.id);
        if (!counts) return counts.error();
        s.by_status = std::move(*counts);
        for (const auto& [status, n] : s.by_status) s.nodes += n;
    }
    return out;
}

Result<std::vector<AuditRow>> RolloutReader::audit(std::string_view rollout_id,
                                                   std::string_view node) {
    auto rows = db_.audit_for_rollout(rollout_id);
    if (!rows || node.empty()) return rows;
    std::vector<AuditRow> out;
    for (auto& r : *rows)
        if (r.node == node) out.push_back(std::move(r));
    return out;
}

Result<std::vector<NodeResult>> RolloutReader::node_results(std::string_view rollout_id) {
    return db_.node_results(rollout_id);
}

}  // namespace guardia::store
