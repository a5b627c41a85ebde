// Targeting: which nodes of an inventory a `guardia deploy` / `guardia exec` run touches
// (--limit, --tier, --retry-failed; docs/OPERATIONS.md). Pure: the command line reads the
// flags and the store, this decides.
//
// Filters combine as an intersection. Every filter must mean something on its own: a --limit
// pattern that matches no node of the inventory, or a --tier no node has, is an error naming
// it (a typo never deploys to nothing, nor to everyone).
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/store/records.hpp"

#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::deploy {

// Shell-style glob on a whole name: `*` any run, `?` one character, `[...]` one of a set
// (ranges `a-z`, negation `[!...]` or `[^...]`; `]` first in the set is literal). Anything
// else matches itself. A `[` without its `]` matches a literal `[`.
bool glob_match(std::string_view pattern, std::string_view name);

// One --limit value: comma-separated names or globs. Empty parts and characters a node
// name cannot hold (other than the glob's) are refused, naming the value.
Result<std::vector<std::string>> parse_limit(std::string_view value);
// One --tier value: a tier 1..99 or a comma list of them.
Result<std::vector<int>> parse_tiers(std::string_view value);

// The nodes of a rollout that did not end DEPLOYED (FAILED_UNCHANGED, ROLLED_BACK,
// ROLLBACK_FAILED, SKIPPED, PENDING, RUNNING, ...): what --retry-failed selects.
std::set<std::string> not_deployed(const std::vector<store::NodeResult>& results);

struct TargetFilter {
    TargetFilter() {}
    std::vector<std::string> limit;  // patterns; empty: no --limit
    std::vector<int> tiers;          // empty: no --tier
    std::string retry_rollout;       // empty: no --retry-failed
    std::set<std::string> retry;     // with retry_rollout: the nodes to retry

    bool any() const { return !limit.empty() || !tiers.empty() || !retry_rollout.empty(); }
};

// The selected nodes, in inventory order. Errors (errc::invalid_argument) name the culprit:
// a --limit pattern or a --tier that matches no node of the inventory, or a selection that is
// empty as a whole. With --retry-failed an empty selection is not an error (nothing is left
// to retry): the result is empty and the caller says so.
Result<Inventory> select_nodes(const Inventory& inventory, const TargetFilter& filter);

// For the audit log: "limit=a,b; tier=2; retry_failed=ID; selected 3 of 16 node(s): x,y,z".
std::string describe_selection(const TargetFilter& filter, const Inventory& selected,
                               std::size_t inventory_size);

}  // namespace guardia::deploy
