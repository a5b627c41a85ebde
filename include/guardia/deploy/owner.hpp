// Who runs a rollout and holds its node locks: "guardia@<host>:<pid>". Written into every
// node lock's owner file and into the rollout's row, so that a process that died can be told
// from one that still runs: recovery never takes over a live rollout, and a node lock whose
// owner is a guardia process on this host that no longer exists is known stale at once.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace guardia::deploy {

std::string local_owner_id();  // this process
std::string local_host_name();

struct OwnerId {
    std::string host;
    long pid = 0;
};
// "guardia@<host>:<pid>" -> {host, pid}; nullopt for anything else. Pure.
std::optional<OwnerId> parse_owner(std::string_view owner);

enum class OwnerLiveness {
    alive,    // a guardia process with that pid runs on this host (or it is this process)
    gone,     // on this host, and no guardia process has that pid any more
    unknown,  // another host, or not an owner we can read: assume it may still run
};
std::string_view to_string(OwnerLiveness liveness) noexcept;

// Pure: `guardia_runs(pid)` says whether a guardia process with that pid exists here.
OwnerLiveness owner_liveness(std::string_view owner, std::string_view this_host, long this_pid,
                             const std::function<bool(long pid)>& guardia_runs);
// This host, this process, and the process table (/proc/<pid>/comm): a pid reused by another
// program counts as gone; a process we may not inspect counts as alive.
OwnerLiveness owner_liveness(std::string_view owner);

}  // namespace guardia::deploy
