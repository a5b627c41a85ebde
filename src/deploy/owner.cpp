#include "guardia/deploy/owner.hpp"

#include <unistd.h>

#include <cctype>
#include <charconv>
#include <climits>
#include <fstream>
#include <sstream>

namespace guardia::deploy {

namespace {

std::string first_line(const char* path) {
    std::ifstream f(path);
    std::string line;
    if (f) std::getline(f, line);
    return line;
}

// The first 8 hex digits of an id file (machine-id, boot_id); "0" when there is none.
std::string short_id(const char* path) {
    std::string out;
    for (char c : first_line(path)) {
        if (c == '-') continue;
        if (!std::isxdigit(static_cast<unsigned char>(c))) break;
        out += c;
        if (out.size() == 8) break;
    }
    return out.empty() ? "0" : out;
}

// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), if that process is a
// guardia; the command name sits in parentheses and may itself hold spaces or ')'.
std::optional<std::string> guardia_start_time(long pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string stat;
    if (!f || !std::getline(f, stat)) return std::nullopt;
    const auto open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close < open)
        return std::nullopt;
    if (stat.compare(open + 1, 7, "guardia") != 0) return std::nullopt;  // another program
    std::istringstream rest(stat.substr(close + 1));
    std::string field;
    for (int i = 3; i <= 22; ++i)  // fields 3 (state) .. 22 (starttime)
        if (!(rest >> field)) return std::nullopt;
    return field;
}

bool all_alnum(std::string_view s) {
    if (s.empty()) return false;
    for (char c : s)
        if (!std::isalnum(static_cast<unsigned char>(c))) return false;
    return true;
}

}  // namespace

std::string local_host_name() {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) return "unknown";
    return host;
}

LocalIdentity local_identity() {
    static const LocalIdentity me = [] {
        LocalIdentity i;
        i.host = local_host_name();
        i.machine = short_id("/etc/machine-id");
        i.boot = short_id("/proc/sys/kernel/random/boot_id");
        i.pid = static_cast<long>(::getpid());
        const auto start = guardia_start_time(i.pid).value_or("0");
        i.owner = "guardia@" + i.host + ":" + std::to_string(i.pid) + ":" + i.machine + "-" +
                  i.boot + "-" + start;
        return i;
    }();
    return me;
}

std::string local_owner_id() {
    return local_identity().owner;
}

std::optional<OwnerId> parse_owner(std::string_view owner) {
    constexpr std::string_view prefix = "guardia@";
    if (owner.substr(0, prefix.size()) != prefix) return std::nullopt;
    owner.remove_prefix(prefix.size());
    OwnerId id;
    // <host>:<pid>[:<machine>-<boot>-<start>]; the host may not hold ':'.
    const auto c1 = owner.find(':');
    if (c1 == std::string_view::npos || c1 == 0) return std::nullopt;
    id.host = std::string(owner.substr(0, c1));
    auto rest = owner.substr(c1 + 1);
    const auto c2 = rest.find(':');
    const auto digits = rest.substr(0, c2);
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id.pid);
    if (ec != std::errc() || end != digits.data() + digits.size() || id.pid <= 0 ||
        id.pid > INT_MAX)
        return std::nullopt;
    if (c2 == std::string_view::npos) return id;
    const auto inst = rest.substr(c2 + 1);
    const auto d1 = inst.find('-');
    const auto d2 = d1 == std::string_view::npos ? d1 : inst.find('-', d1 + 1);
    if (d2 == std::string_view::npos) return std::nullopt;
    id.machine = std::string(inst.substr(0, d1));
    id.boot = std::string(inst.substr(d1 + 1, d2 - d1 - 1));
    id.start = std::string(inst.substr(d2 + 1));
    if (!all_alnum(id.machine) || !all_alnum(id.boot) || !all_alnum(id.start)) return std::nullopt;
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

OwnerLiveness owner_liveness(std::string_view owner, const LocalIdentity& me,
                             const std::function<std::optional<std::string>(long pid)>& start_of) {
    if (!owner.empty() && owner == me.owner) return OwnerLiveness::alive;
    const auto id = parse_owner(owner);
    if (!id) return OwnerLiveness::unknown;
    if (id->start.empty()) {
        if (id->host != me.host) return OwnerLiveness::unknown;
        // The older form names no instance: a process with our own pid may be a restarted us.
        if (id->pid == me.pid) return OwnerLiveness::unknown;
        return start_of(id->pid) ? OwnerLiveness::alive : OwnerLiveness::gone;
    }
    // The machine decides (a renamed host is still this machine); without a machine-id ("0"),
    // the host name must match too.
    if (id->machine != me.machine || (me.machine == "0" && id->host != me.host))
        return OwnerLiveness::unknown;  // another machine, maybe of the same name
    if (id->boot != me.boot) return OwnerLiveness::gone;  // rebooted since: all of it is gone
    const auto start = start_of(id->pid);
    return start && *start == id->start ? OwnerLiveness::alive : OwnerLiveness::gone;
}

OwnerLiveness owner_liveness(std::string_view owner) {
    return owner_liveness(owner, local_identity(), guardia_start_time);
}

}  // namespace guardia::deploy
