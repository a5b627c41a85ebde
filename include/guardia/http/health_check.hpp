// The health check's vocabulary: which kind of probe, and which HTTP statuses count as
// healthy. Pure code with no I/O, so the inventory parser (and its fuzz target) can use it
// without the probe's networking (health_probe.hpp).
#pragma once

#include "guardia/core/error.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace guardia::http {

enum class ProbeKind { http, https, tcp, command };

// "http", "https", "tcp", "command" (and back: nothing for an unknown word).
std::string_view probe_kind_name(ProbeKind kind);
bool parse_probe_kind(std::string_view word, ProbeKind& out);

// The HTTP statuses an attempt accepts: single statuses and inclusive ranges, 100..599.
class StatusSet {
  public:
    StatusSet() : ranges_{{200, 200}} {}  // the default: exactly 200
    // Replaces the default by the first entry added, then accumulates.
    void add(int lo, int hi);
    bool contains(int status) const;
    bool is_default() const { return ranges_.size() == 1 && ranges_[0] == std::pair{200, 200}; }
    std::string describe() const;  // "200", "200, 204", "200-299, 304"

  private:
    std::vector<std::pair<int, int>> ranges_;
    bool explicit_ = false;
};

// One entry of a status list written as text: "204" or "200-299". Returns what is wrong
// ("must be a status from 100 to 599", "must be 'LOW-HIGH' with LOW <= HIGH") or adds it.
Result<void> add_status_entry(StatusSet& set, std::string_view text);
Result<void> add_status_entry(StatusSet& set, std::int64_t status);

}  // namespace guardia::http
