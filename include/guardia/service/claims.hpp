// Which SR's release is on which node, for the service: a node deployed by an SR that awaits
// its PM verdict belongs to that SR until the release is accepted or rolled back, and a rollout
// or rollback in flight holds its nodes while it runs. A trigger of another SR that touches a
// claimed node is refused (409 node_claimed), so that a PM rollback of one SR can never restore
// a backup over another SR's build. Pure bookkeeping; the coordinator keeps it and rebuilds it
// from the store at start-up.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::service {

enum class ClaimKind {
    deploying,         // a rollout of the SR runs on the node
    awaiting_verdict,  // the SR deployed the node and waits for the PM
    rolling_back,      // the PM rejected the SR; its rollback runs
};

std::string_view to_string(ClaimKind kind) noexcept;  // "deploying", "awaiting its PM verdict", ...

class ClaimTable {
  public:
    // The SR now holds exactly `nodes` (its earlier claims are replaced).
    void claim(const std::string& sr_id, ClaimKind kind, const std::vector<std::string>& nodes);
    void release(const std::string& sr_id);

    struct Conflict {
        std::string sr_id;  // the SR holding them
        ClaimKind kind;
        std::vector<std::string> nodes;  // sorted
    };
    // Claims of SRs other than `sr_id` on any of `nodes`, one entry per holding SR, by SR id.
    std::vector<Conflict> conflicts(std::string_view sr_id,
                                    const std::vector<std::string>& nodes) const;

    std::vector<std::string> nodes_of(std::string_view sr_id) const;  // sorted
    std::size_t size() const;  // claimed (node, SR) pairs

  private:
    struct Held {
        ClaimKind kind;
        std::vector<std::string> nodes;
    };
    std::map<std::string, Held, std::less<>> by_sr_;
};

// "SR SR-A (awaiting its PM verdict) holds node-0001, node-0002; SR SR-C (deploying) holds
// node-0007" — at most `max_nodes` names per SR, then "and N more".
std::string describe(const std::vector<ClaimTable::Conflict>& conflicts,
                     std::size_t max_nodes = 20);

}  // namespace guardia::service
