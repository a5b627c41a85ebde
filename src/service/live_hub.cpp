#include "guardia/service/live_hub.hpp"

namespace guardia::service {

namespace json = boost::json;

std::string sse_event(std::uint64_t id, std::string_view event, std::string_view data) {
    std::string out = "id: " + std::to_string(id) + "\nevent: ";
    out += event;
    out += '\n';
    std::size_t start = 0;
    for (;;) {
        const auto end = data.find('\n', start);
        out += "data: ";
        for (char ch : data.substr(start, end == std::string_view::npos ? end : end - start))
            if (ch != '\r') out += ch;
        out += '\n';
        if (end == std::string_view::npos) break;
        start = end + 1;
    }
    out += '\n';
    return out;
}

std::string sse_keepalive() {
    return ": keepalive\n\n";
}

std::uint64_t live_slot(std::chrono::steady_clock::time_point t) {
    const auto since = t.time_since_epoch();
    if (since.count() <= 0) return 0;
    return static_cast<std::uint64_t>(since / live_flush_interval);
}

std::chrono::steady_clock::time_point live_slot_start(std::uint64_t slot) {
    using D = std::chrono::steady_clock::duration;
    return std::chrono::steady_clock::time_point(
        std::chrono::duration_cast<D>(live_flush_interval * static_cast<std::int64_t>(slot)));
}

std::string_view to_string(LiveEvent e) {
    switch (e) {
        case LiveEvent::snapshot:
            return "snapshot";
        case LiveEvent::nodes:
            return "nodes";
        case LiveEvent::rollout:
            return "rollout";
        case LiveEvent::task:
            return "task";
    }
    return "nodes";
}

namespace {

json::value field(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    return v ? *v : json::value(nullptr);
}

}  // namespace

std::vector<LiveMessage> RolloutDiff::update(const json::object& doc) {
    std::vector<LiveMessage> out;
    json::array changed;
    if (const auto* ns = doc.if_contains("nodes"); ns && ns->is_array()) {
        for (const auto& n : ns->as_array()) {
            if (!n.is_object()) continue;
            const auto* name = n.as_object().if_contains("name");
            if (!name || !name->is_string()) continue;
            auto& last = nodes_[std::string(name->as_string())];
            if (last != n) {
                last = n;
                changed.push_back(n);
            }
        }
    }
    const auto ts = field(doc, "task_status"), ro = field(doc, "rollout"), g = field(doc, "gate");
    const bool rollout_changed = ts != task_status_ || ro != rollout_ || g != gate_;
    task_status_ = ts;
    rollout_ = ro;
    gate_ = g;
    if (first_) {
        first_ = false;
        out.emplace_back(LiveEvent::snapshot, doc);
        return out;
    }
    if (!changed.empty())
        out.emplace_back(LiveEvent::nodes, json::object{{"nodes", std::move(changed)},
                                                        {"counts", field(doc, "counts")},
                                                        {"tiers", field(doc, "tiers")}});
    if (rollout_changed)
        out.emplace_back(LiveEvent::rollout,
                         json::object{{"task_status", ts}, {"rollout", ro}, {"gate", g}});
    return out;
}

std::vector<LiveMessage> TaskListDiff::update(const json::array& tasks) {
    std::vector<LiveMessage> out;
    for (const auto& t : tasks) {
        if (!t.is_object()) continue;
        const auto* sr = t.as_object().if_contains("sr_id");
        if (!sr || !sr->is_string()) continue;
        auto [it, added] = tasks_.try_emplace(std::string(sr->as_string()), t);
        if (!added && it->second == t) continue;
        it->second = t;
        if (!first_) out.emplace_back(LiveEvent::task, t.as_object());
    }
    first_ = false;
    return out;
}

}  // namespace guardia::service
