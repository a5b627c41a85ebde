#include "guardia/http/health_check.hpp"

#include <algorithm>
#include <charconv>
#include <optional>

namespace guardia::http {

std::string_view probe_kind_name(ProbeKind kind) {
    switch (kind) {
        case ProbeKind::http: return "http";
        case ProbeKind::https: return "https";
        case ProbeKind::tcp: return "tcp";
        case ProbeKind::command: return "command";
    }
    return "http";
}

bool parse_probe_kind(std::string_view word, ProbeKind& out) {
    for (auto k : {ProbeKind::http, ProbeKind::https, ProbeKind::tcp, ProbeKind::command})
        if (probe_kind_name(k) == word) {
            out = k;
            return true;
        }
    return false;
}

void StatusSet::add(int lo, int hi) {
    if (!explicit_) ranges_.clear();
    explicit_ = true;
    ranges_.emplace_back(lo, hi);
}

bool StatusSet::contains(int status) const {
    return std::any_of(ranges_.begin(), ranges_.end(),
                       [status](const auto& r) { return status >= r.first && status <= r.second; });
}

std::string StatusSet::describe() const {
    std::string out;
    for (const auto& [lo, hi] : ranges_) {
        if (!out.empty()) out += ", ";
        out += std::to_string(lo);
        if (hi != lo) {  // not "-" + std::to_string: GCC bug 105329 at -O3
            out += '-';
            out += std::to_string(hi);
        }
    }
    return out;
}

namespace {

constexpr int min_status = 100, max_status = 599;

std::optional<int> status_number(std::string_view s) {
    int v = 0;
    if (s.empty() || s.size() > 3) return std::nullopt;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
    return v;
}

Error status_error(std::string what) {
    return Error(errc::invalid_argument, std::move(what));
}

}  // namespace

Result<void> add_status_entry(StatusSet& set, std::int64_t status) {
    if (status < min_status || status > max_status)
        return status_error("must be a status from 100 to 599");
    set.add(static_cast<int>(status), static_cast<int>(status));
    return {};
}

Result<void> add_status_entry(StatusSet& set, std::string_view text) {
    const auto dash = text.find('-');
    if (dash == std::string_view::npos) {
        auto v = status_number(text);
        if (!v) return status_error("must be a status (\"204\") or a range (\"200-299\")");
        return add_status_entry(set, std::int64_t{*v});
    }
    auto lo = status_number(text.substr(0, dash));
    auto hi = status_number(text.substr(dash + 1));
    if (!lo || !hi) return status_error("must be a status (\"204\") or a range (\"200-299\")");
    if (*lo < min_status || *hi > max_status)
        return status_error("range must lie within 100-599");
    if (*lo > *hi) return status_error("range must be 'LOW-HIGH' with LOW <= HIGH");
    set.add(*lo, *hi);
    return {};
}

}  // namespace guardia::http
