#include "guardia/service/claims.hpp"

#include <algorithm>
#include <set>

namespace guardia::service {

std::string_view to_string(ClaimKind kind) noexcept {
    switch (kind) {
        case ClaimKind::deploying:
            return "deploying";
        case ClaimKind::awaiting_verdict:
            return "awaiting its PM verdict";
        case ClaimKind::rolling_back:
            return "rolling back";
    }
    return "unknown";
}

void ClaimTable::claim(const std::string& sr_id, ClaimKind kind,
                       const std::vector<std::string>& nodes) {
    Held h{kind, nodes};
    std::sort(h.nodes.begin(), h.nodes.end());
    h.nodes.erase(std::unique(h.nodes.begin(), h.nodes.end()), h.nodes.end());
    if (h.nodes.empty()) {
        release(sr_id);
        return;
    }
    by_sr_[sr_id] = std::move(h);
}

void ClaimTable::release(const std::string& sr_id) {
    by_sr_.erase(sr_id);
}

std::vector<ClaimTable::Conflict> ClaimTable::conflicts(
    std::string_view sr_id, const std::vector<std::string>& nodes) const {
    const std::set<std::string_view> wanted(nodes.begin(), nodes.end());
    std::vector<Conflict> out;
    for (const auto& [sr, held] : by_sr_) {
        if (sr == sr_id) continue;
        Conflict c{sr, held.kind, {}};
        for (const auto& n : held.nodes)
            if (wanted.count(n)) c.nodes.push_back(n);
        if (!c.nodes.empty()) out.push_back(std::move(c));
    }
    return out;
}

std::vector<std::string> ClaimTable::nodes_of(std::string_view sr_id) const {
    auto it = by_sr_.find(sr_id);
    return it == by_sr_.end() ? std::vector<std::string>{} : it->second.nodes;
}

std::size_t ClaimTable::size() const {
    std::size_t n = 0;
    for (const auto& [sr, held] : by_sr_) n += held.nodes.size();
    return n;
}

std::string describe(const std::vector<ClaimTable::Conflict>& conflicts, std::size_t max_nodes) {
    std::string out;
    for (const auto& c : conflicts) {
        if (!out.empty()) out += "; ";
        out += "SR " + c.sr_id + " (" + std::string(to_string(c.kind)) + ") holds ";
        for (std::size_t i = 0; i < c.nodes.size() && i < max_nodes; ++i)
            out += (i ? ", " : "") + c.nodes[i];
        if (c.nodes.size() > max_nodes)
            out += " and " + std::to_string(c.nodes.size() - max_nodes) + " more";
    }
    return out;
}

}  // namespace guardia::service
