// Who runs a rollout and holds its node locks: "guardia@<host>:<pid>:<instance>", where the
// instance is "<machine>-<boot>-<start>" (the first 8 characters of /etc/machine-id and of the
// kernel's boot_id, and the process's start time in clock ticks since boot). Written into
// every node lock's owner file and into the rollout's row, so that a process that died can be
// told from one that still runs: recovery never takes over a live rollout, and a node lock
// whose owner is a guardia process on this machine that no longer exists is known stale at
// once. The pid alone is not enough: a restarted container's service is pid 1 again, and a
// reboot hands out the same pids; the hostname alone is not either: cloned machines share it.
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
    std::string machine, boot, start;  // empty in the older "guardia@<host>:<pid>" form
};
// Parses either form; nullopt for anything else (a pid must be 1..INT_MAX). Pure.
std::optional<OwnerId> parse_owner(std::string_view owner);

enum class OwnerLiveness {
    alive,    // that very process still runs (or it is this process)
    gone,     // on this machine, and that process no longer exists (or the machine rebooted)
    unknown,  // another machine, or an owner we cannot judge: assume it may still run
};
std::string_view to_string(OwnerLiveness liveness) noexcept;

// This process, as owner_liveness needs it.
struct LocalIdentity {
    std::string owner;  // local_owner_id()
    std::string host, machine, boot;
    long pid = 0;
};
LocalIdentity local_identity();

// Pure. `start_of(pid)`: the start time of the guardia process with that pid, nullopt when no
// guardia process has it (none at all, or another program).
OwnerLiveness owner_liveness(std::string_view owner, const LocalIdentity& me,
                             const std::function<std::optional<std::string>(long pid)>& start_of);
// With this process and the process table (/proc/<pid>/stat).
OwnerLiveness owner_liveness(std::string_view owner);

}  // namespace guardia::deploy
