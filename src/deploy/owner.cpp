#include "guardia/deploy/owner.hpp"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <fstream>

namespace guardia::deploy {

std::string local_host_name() {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) return "unknown";
    return host;
}

std::string local_owner_id() {
    return "guardia@" + local_host_name() + ":" + std::to_string(::getpid());
}

std::optional<OwnerId> parse_owner(std::string_view owner) {
    constexpr std::string_view prefix = "guardia@";
    if (owner.substr(0, prefix.size()) != prefix) return std::nullopt;
    owner.remove_prefix(prefix.size());
    const auto colon = owner.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return std::nullopt;
    OwnerId id;
    id.host = std::string(owner.substr(0, colon));
    const auto digits = owner.substr(colon + 1);
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id.pid);
    if (ec != std::errc() || end != digits.data() + digits.size() || id.pid <= 0)
        return std::nullopt;
    return id;
}

std::string_view to_string(OwnerLiveness l) noexcept {
    switch (l) {
        case OwnerLiveness::alive: return "alive";
        case OwnerLiveness::gone: return "gone";
        case OwnerLiveness::unknown: return "unknown";
    }
    return "unknown";
}

OwnerLiveness owner_liveness(std::string_view owner, std::string_view this_host, long this_pid,
                             const std::function<bool(long pid)>& guardia_runs) {
    const auto id = parse_owner(owner);
    if (!id || id->host != this_host) return OwnerLiveness::unknown;
    if (id->pid == this_pid) return OwnerLiveness::alive;
    return guardia_runs(id->pid) ? OwnerLiveness::alive : OwnerLiveness::gone;
}

OwnerLiveness owner_liveness(std::string_view owner) {
    auto guardia_runs = [](long pid) {
        if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return false;
        // Exists (or we may not signal it). A pid the kernel gave to another program since:
        // its command name says so. Unreadable: assume it is ours and alive.
        std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
        std::string name;
        if (!comm || !std::getline(comm, name)) return true;
        return name.rfind("guardia", 0) == 0;
    };
    return owner_liveness(owner, local_host_name(), static_cast<long>(::getpid()), guardia_runs);
}

}  // namespace guardia::deploy
