// Read-only queries behind `guardia status`, `guardia history` and `guardia audit --rollout`
// (docs/OPERATIONS.md). Opens the file with Database::open_read_only(): never creates,
// configures or migrates it; a missing file or a file that is not a Guardia store is an error
// naming it. Returns plain values; the command line formats them.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/store/database.hpp"
#include "guardia/store/records.hpp"

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace guardia::store {

// One tier of a rollout as its TIER_START / TIER_DONE audit events tell it (the node rows do
// not hold the tier). A tier the rollout never started (it stopped before) has no entry.
struct TierSummary {
    TierSummary() {}
    int tier = 0;
    std::size_t total = 0;
    bool finished = false;  // TIER_DONE written; the counts below are meaningful then
    std::size_t deployed = 0, failed = 0, not_started = 0;
};

// A node that failed: not DEPLOYED / DRY_RUN_OK, not untouched (PENDING, RUNNING, SKIPPED),
// not undone on purpose after deploying (ROLLED_BACK_BY_POLICY, ROLLED_BACK_BY_PM).
bool is_failed_status(std::string_view status);

struct RolloutSummary {
    RolloutSummary() {}
    RolloutRecord rollout;
    std::size_t nodes = 0;  // node rows of the rollout
    // Node rows per status ("DEPLOYED", "ROLLED_BACK", "SKIPPED", ...), by status name.
    std::vector<std::pair<std::string, std::size_t>> by_status;
    std::size_t count(std::string_view status) const;
    // Filled by RolloutReader::summary() only (history leaves them empty):
    std::vector<TierSummary> tiers;   // run order
    std::vector<NodeResult> failed;   // is_failed_status(), by node name
    std::string target;               // the ROLLOUT_TARGET audit detail; empty: whole inventory
};

class RolloutReader {
  public:
    static Result<RolloutReader> open(std::string path);

    const std::string& path() const noexcept { return db_.path(); }

    // The id of the most recent rollout (by start time); empty when the store has none.
    Result<std::optional<std::string>> latest_rollout_id();
    // One rollout with tiers, failed nodes and targeting; empty when the id is unknown.
    Result<std::optional<RolloutSummary>> summary(std::string_view rollout_id);
    // Rollouts newest first (of one SR when `sr_id` is not empty), at most `limit` (>= 1),
    // with their per-status counts.
    Result<std::vector<RolloutSummary>> history(std::string_view sr_id, int limit);
    // The rollout's audit rows in order, only those of `node` when it is not empty.
    Result<std::vector<AuditRow>> audit(std::string_view rollout_id, std::string_view node);
    // The node rows of a rollout, by node name.
    Result<std::vector<NodeResult>> node_results(std::string_view rollout_id);

  private:
    explicit RolloutReader(Database db) : db_(std::move(db)) {}
    Result<std::vector<std::pair<std::string, std::size_t>>> status_counts(
        std::string_view rollout_id);

    Database db_;
};

// Parses "tier N: M node(s), ..." (TIER_START) and "tier N: X deployed|ready, Y failed,
// Z not started" (TIER_DONE) into `tiers` (found or appended by tier number). Pure; false
// when the detail does not have that form.
bool apply_tier_event(std::vector<TierSummary>& tiers, std::string_view event,
                      std::string_view detail);

}  // namespace guardia::store
