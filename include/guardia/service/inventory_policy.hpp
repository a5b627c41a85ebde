// What the service accepts in an inventory on top of the parser's rules, and what an import
// changed (docs/SECURITY.md, "Inputs from API callers"; docs/API.md, POST /api/inventory).
// Pure functions: the handlers call them at import and when stored nodes are read back for a
// rollout, so a stricter configuration applies to nodes imported before it.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/deploy/credential_store.hpp"
#include "guardia/deploy/engine_config.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/store/records.hpp"

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace guardia::service {

// Every node's credentials must pass the service's policy (deploy::service_credential_policy):
// auth.key_file resolves inside ssh.key_dirs (default /etc/guardia/keys), auth.password_ref is
// in the credentials file, bound to hosts, and the node's host is one of them. `credentials`
// may be null (then no password ref is admitted). The first refusal is returned, prefixed by
// `source`: "request body: node 'web-01': field 'auth.key_file': '/root/k' outside ssh.key_dirs
// [...]: ...". Every node's tier must be one of the configuration's rollout.tiers.
Result<void> admit_inventory(const deploy::Inventory& inventory, const deploy::EngineConfig& engine,
                             const deploy::CredentialStore* credentials, std::string_view source);

// What an import does to the stored inventory, node by node (by name).
struct InventoryChanges {
    InventoryChanges() {}
    std::vector<std::string> added;
    std::vector<std::pair<std::string, std::vector<std::string>>> changed;  // name, fields
    std::vector<std::string> unchanged;
};

// `stored`: the inventory before the import (any nodes; only the imported names matter).
// `imported`: the node objects of the request. Each list is sorted by name. A changed node lists its changed
// fields by dotted name, sorted ("auth.key_file", "health.path", "host", "tier"); a field given
// on one side only counts as changed.
InventoryChanges diff_inventory(const std::vector<store::InventoryNodeRecord>& stored,
                                const boost::json::array& imported);

// {"added": [names], "changed": [{"name", "fields": [...]}], "unchanged": [names]}
boost::json::object changes_json(const InventoryChanges& changes);

// "added 1 (node-0012); changed 1 (node-0016: health.path, tier); unchanged 1 (node-0011)" for
// the audit detail; each list is cut after `max_names` names ("..., and 3 more").
std::string changes_summary(const InventoryChanges& changes, std::size_t max_names = 20);

}  // namespace guardia::service
