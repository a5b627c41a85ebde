#include "guardia/deploy/targeting.hpp"

#include <algorithm>
#include <cctype>

namespace guardia::deploy {

namespace {

// Where the set starting at pattern[i] == '[' ends (the index of its ']'), or npos.
std::size_t set_end(std::string_view p, std::size_t i) {
    std::size_t j = i + 1;
    if (j < p.size() && (p[j] == '!' || p[j] == '^')) ++j;
    if (j < p.size() && p[j] == ']') ++j;  // a leading ']' is a member
    while (j < p.size() && p[j] != ']') ++j;
    return j < p.size() ? j : std::string_view::npos;
}

bool set_matches(std::string_view p, std::size_t i, std::size_t end, char c) {
    std::size_t j = i + 1;
    bool negate = false;
    if (p[j] == '!' || p[j] == '^') {
        negate = true;
        ++j;
    }
    bool hit = false;
    for (bool first = true; j < end; first = false) {
        if (p[j] == ']' && !first) break;
        if (j + 2 < end && p[j + 1] == '-') {
            if (p[j] <= c && c <= p[j + 2]) hit = true;
            j += 3;
        } else {
            if (p[j] == c) hit = true;
            ++j;
        }
    }
    return hit != negate;
}

bool glob_at(std::string_view p, std::size_t pi, std::string_view s, std::size_t si) {
    while (pi < p.size()) {
        const char c = p[pi];
        if (c == '*') {
            while (pi < p.size() && p[pi] == '*') ++pi;
            if (pi == p.size()) return true;
            for (std::size_t k = si; k <= s.size(); ++k)
                if (glob_at(p, pi, s, k)) return true;
            return false;
        }
        if (si == s.size()) return false;
        if (c == '?') {
            ++pi;
            ++si;
        } else if (c == '[' && set_end(p, pi) != std::string_view::npos) {
            const std::size_t end = set_end(p, pi);
            if (!set_matches(p, pi, end, s[si])) return false;
            pi = end + 1;
            ++si;
        } else {
            if (c != s[si]) return false;
            ++pi;
            ++si;
        }
    }
    return si == s.size();
}

// "a,b,,c" -> {"a", "b", "", "c"}; "" -> {""}.
std::vector<std::string> split_commas(std::string_view value) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (true) {
        const std::size_t comma = value.find(',', start);
        out.emplace_back(value.substr(
            start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
        if (comma == std::string_view::npos) return out;
        start = comma + 1;
    }
}

std::string joined(const std::vector<std::string>& parts) {
    std::string out;
    for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
    return out;
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view name) {
    return glob_at(pattern, 0, name, 0);
}

Result<std::vector<std::string>> parse_limit(std::string_view value) {
    std::vector<std::string> out;
    for (const auto& part : split_commas(value)) {
        if (part.empty())
            return Error(errc::invalid_argument,
                         "--limit '" + std::string(value) + "': an empty name or pattern");
        for (char c : part) {
            const bool name_char = std::isalnum(static_cast<unsigned char>(c)) || c == '.' ||
                                   c == '_' || c == '-';
            const bool glob_char = c == '*' || c == '?' || c == '[' || c == ']' || c == '!' ||
                                   c == '^';
            if (!name_char && !glob_char)
                return Error(errc::invalid_argument,
                             "--limit '" + part + "': '" + std::string(1, c) +
                                 "' is neither part of a node name nor of a glob");
        }
        out.push_back(part);
    }
    return out;
}

Result<std::vector<int>> parse_tiers(std::string_view value) {
    std::vector<int> out;
    for (const auto& part : split_commas(value)) {
        int tier = 0;
        bool ok = !part.empty() && part.size() <= 2;
        for (char c : part) {
            ok = ok && std::isdigit(static_cast<unsigned char>(c));
            tier = tier * 10 + (c - '0');
        }
        if (!ok || tier < 1 || tier > 99)
            return Error(errc::invalid_argument,
                         "--tier '" + std::string(value) + "': '" + part +
                             "' is not a tier 1..99");
        out.push_back(tier);
    }
    return out;
}

std::set<std::string> not_deployed(const std::vector<store::NodeResult>& results) {
    std::set<std::string> out;
    for (const auto& r : results)
        if (r.status != "DEPLOYED") out.insert(r.node);
    return out;
}

Result<Inventory> select_nodes(const Inventory& inventory, const TargetFilter& filter) {
    for (const auto& pattern : filter.limit)
        if (std::none_of(inventory.nodes.begin(), inventory.nodes.end(),
                         [&](const Node& n) { return glob_match(pattern, n.name); }))
            return Error(errc::invalid_argument,
                         "--limit '" + pattern + "' matches no node of the inventory");
    for (int tier : filter.tiers)
        if (std::none_of(inventory.nodes.begin(), inventory.nodes.end(),
                         [&](const Node& n) { return n.tier == tier; }))
            return Error(errc::invalid_argument,
                         "--tier " + std::to_string(tier) + ": no node of the inventory has it");
    Inventory out;
    for (const auto& n : inventory.nodes) {
        if (!filter.limit.empty() &&
            std::none_of(filter.limit.begin(), filter.limit.end(),
                         [&](const std::string& p) { return glob_match(p, n.name); }))
            continue;
        if (!filter.tiers.empty() &&
            std::find(filter.tiers.begin(), filter.tiers.end(), n.tier) == filter.tiers.end())
            continue;
        if (!filter.retry_rollout.empty() && filter.retry.count(n.name) == 0) continue;
        out.nodes.push_back(n);
    }
    if (out.nodes.empty() && filter.retry_rollout.empty() && filter.any())
        return Error(errc::invalid_argument,
                     "the selection matches no node (" +
                         describe_selection(filter, out, inventory.nodes.size()) + ")");
    return out;
}

std::string describe_selection(const TargetFilter& filter, const Inventory& selected,
                               std::size_t inventory_size) {
    std::string out;
    if (!filter.limit.empty()) out += "limit=" + joined(filter.limit) + "; ";
    if (!filter.tiers.empty()) {
        std::vector<std::string> t;
        for (int tier : filter.tiers) t.push_back(std::to_string(tier));
        out += "tier=" + joined(t) + "; ";
    }
    if (!filter.retry_rollout.empty()) out += "retry_failed=" + filter.retry_rollout + "; ";
    out += "selected " + std::to_string(selected.nodes.size()) + " of " +
           std::to_string(inventory_size) + " node(s)";
    std::vector<std::string> names;
    for (const auto& n : selected.nodes) names.push_back(n.name);
    if (!names.empty()) out += ": " + joined(names);
    return out;
}

}  // namespace guardia::deploy
