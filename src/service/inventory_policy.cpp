#include "guardia/service/inventory_policy.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <map>
#include <set>

namespace guardia::service {

namespace json = boost::json;

Result<void> admit_inventory(const deploy::Inventory& inventory, const deploy::EngineConfig& engine,
                             const deploy::CredentialStore* credentials, std::string_view source) {
    const auto policy = deploy::service_credential_policy(engine.key_dirs);
    std::shared_ptr<deploy::CredentialStore> none;
    if (credentials == nullptr) {
        auto empty = deploy::CredentialStore::open("");
        if (!empty) return empty.error();
        none = *empty;
        credentials = none.get();
    }
    for (const auto& node : inventory.nodes)
        if (auto ok = credentials->admit(node, policy); !ok)
            return Error(ok.error().code, std::string(source) + ": " + ok.error().message);
    // Tiers 1..99 parse; the service takes only those its rollout configuration runs, so that
    // a node of an unlisted tier is refused at import, not at the next trigger.
    for (const auto& node : inventory.nodes) {
        bool listed = false;
        for (const auto& t : engine.rollout.tiers) listed = listed || t.tier == node.tier;
        if (!listed)
            return Error(errc::invalid_argument,
                         std::string(source) + ": node '" + node.name + "': field 'tier': tier " +
                             std::to_string(node.tier) +
                             " is not in the service's rollout configuration (rollout.tiers)");
    }
    return {};
}

namespace {

void diff_fields(const json::object& before, const json::object& after, const std::string& prefix,
                 std::vector<std::string>& out) {
    std::set<std::string> keys;
    for (const auto& kv : before) keys.insert(std::string(kv.key()));
    for (const auto& kv : after) keys.insert(std::string(kv.key()));
    for (const auto& k : keys) {
        const json::value* b = before.if_contains(k);
        const json::value* a = after.if_contains(k);
        if (b && a && b->is_object() && a->is_object()) {
            diff_fields(b->get_object(), a->get_object(), prefix + k + ".", out);
        } else if (!b || !a || *b != *a) {
            out.push_back(prefix + k);
        }
    }
}

std::string names(const std::vector<std::string>& v, std::size_t max) {
    std::string out;
    for (std::size_t i = 0; i < v.size() && i < max; ++i) out += (i ? ", " : "") + v[i];
    if (v.size() > max) out += ", and " + std::to_string(v.size() - max) + " more";
    return out;
}

}  // namespace

InventoryChanges diff_inventory(const std::vector<store::InventoryNodeRecord>& stored,
                                const json::array& imported) {
    std::map<std::string, const std::string*> by_name;
    for (const auto& r : stored) by_name[r.name] = &r.payload;
    InventoryChanges c;
    for (const auto& v : imported) {
        if (!v.is_object()) continue;
        const auto& obj = v.get_object();
        const auto* n = obj.if_contains("name");
        if (!n || !n->is_string()) continue;
        const std::string name(n->get_string());
        auto it = by_name.find(name);
        if (it == by_name.end()) {
            c.added.push_back(name);
            continue;
        }
        boost::system::error_code ec;
        json::value before = json::parse(*it->second, ec);
        std::vector<std::string> fields;
        if (ec || !before.is_object())
            fields.push_back("(stored node unreadable)");
        else
            diff_fields(before.get_object(), obj, "", fields);
        if (fields.empty())
            c.unchanged.push_back(name);
        else
            c.changed.emplace_back(name, std::move(fields));
    }
    std::sort(c.added.begin(), c.added.end());
    std::sort(c.changed.begin(), c.changed.end());
    std::sort(c.unchanged.begin(), c.unchanged.end());
    return c;
}

json::object changes_json(const InventoryChanges& c) {
    json::array added, changed, unchanged;
    for (const auto& n : c.added) added.emplace_back(json::string(n));
    for (const auto& [n, fields] : c.changed) {
        json::array f;
        for (const auto& x : fields) f.emplace_back(json::string(x));
        changed.emplace_back(json::object{{"name", n}, {"fields", std::move(f)}});
    }
    for (const auto& n : c.unchanged) unchanged.emplace_back(json::string(n));
    return json::object{{"added", std::move(added)},
                        {"changed", std::move(changed)},
                        {"unchanged", std::move(unchanged)}};
}

std::string changes_summary(const InventoryChanges& c, std::size_t max_names) {
    std::string out = "added " + std::to_string(c.added.size());
    if (!c.added.empty()) out += " (" + names(c.added, max_names) + ")";
    out += "; changed " + std::to_string(c.changed.size());
    if (!c.changed.empty()) {
        std::vector<std::string> items;
        for (const auto& [n, fields] : c.changed) {
            std::string f;
            for (std::size_t i = 0; i < fields.size(); ++i) f += (i ? ", " : "") + fields[i];
            items.push_back(n + ": " + f);
        }
        // "; " would be ambiguous inside the list: changed nodes are separated by " | ".
        std::string joined;
        for (std::size_t i = 0; i < items.size() && i < max_names; ++i)
            joined += (i ? " | " : "") + items[i];
        if (items.size() > max_names)
            joined += " | and " + std::to_string(items.size() - max_names) + " more";
        out += " (" + joined + ")";
    }
    out += "; unchanged " + std::to_string(c.unchanged.size());
    if (!c.unchanged.empty()) out += " (" + names(c.unchanged, max_names) + ")";
    return out;
}

}  // namespace guardia::service
