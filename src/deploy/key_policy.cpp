#include "guardia/deploy/key_policy.hpp"

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace guardia::deploy {

namespace {

struct FreeDeleter {
    void operator()(char* p) const noexcept { std::free(p); }
};

// realpath(3): every symbolic link followed, `.`/`..` resolved. Empty when it cannot.
std::string real(const std::string& p, int& err) {
    std::unique_ptr<char, FreeDeleter> r(::realpath(p.c_str(), nullptr));
    err = r ? 0 : errno;
    return r ? std::string(r.get()) : std::string();
}

bool inside(const std::string& path, const std::string& dir) {
    if (dir == "/") return true;
    return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
           path[dir.size()] == '/';
}

std::string list(const KeyDirs& d) {
    std::string out = "[";
    for (std::size_t i = 0; i < d.dirs.size(); ++i) out += (i ? ", " : "") + d.dirs[i];
    out += "]";
    if (d.defaulted) out += " (the service's default: ssh.key_dirs is not set)";
    return out;
}

std::string how_to() {
    return "put the key in one of them, or set ssh.key_dirs in the configuration to the "
           "directories holding the deploy keys (e.g. \"ssh\": {\"key_dirs\": [\"" +
           std::string(default_service_key_dir) + "\"]})";
}

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool glob(std::string_view p, std::string_view h) {
    // Iterative '*' matching with one backtrack point; '*' never crosses a '.'.
    std::size_t pi = 0, hi = 0, star = std::string_view::npos, mark = 0;
    while (hi < h.size()) {
        if (pi < p.size() && p[pi] == '*') {
            star = pi++;
            mark = hi;
        } else if (pi < p.size() && (p[pi] == '?' ? h[hi] != '.' : lower(p[pi]) == lower(h[hi]))) {
            ++pi;
            ++hi;
        } else if (star != std::string_view::npos && h[mark] != '.') {
            pi = star + 1;
            hi = ++mark;
        } else {
            return false;
        }
    }
    while (pi < p.size() && p[pi] == '*') ++pi;
    return pi == p.size();
}

}  // namespace

KeyDirs key_dirs_for_cli(const std::optional<std::vector<std::string>>& configured) {
    KeyDirs d;
    if (configured) {
        d.restricted = true;
        d.dirs = *configured;
    }
    return d;
}

KeyDirs key_dirs_for_service(const std::optional<std::vector<std::string>>& configured) {
    KeyDirs d;
    d.restricted = true;
    if (configured) {
        d.dirs = *configured;
    } else {
        d.dirs = {std::string(default_service_key_dir)};
        d.defaulted = true;
    }
    return d;
}

Result<std::string> resolve_key_file(const std::string& key_file, const KeyDirs& dirs) {
    if (!dirs.restricted) return key_file;
    if (key_file.empty() || key_file[0] != '/')
        return Error(errc::invalid_argument, "'" + key_file + "' must be an absolute path");
    // First on the text alone: a path that does not even name a key directory is refused
    // without touching the file system, so refusals tell nothing about files elsewhere.
    bool named_inside = false;
    for (const auto& dir : dirs.dirs) {
        int derr = 0;
        const std::string rdir = real(dir, derr);
        named_inside = named_inside || inside(key_file, dir) || (!rdir.empty() && inside(key_file, rdir));
    }
    if (!named_inside)
        return Error(errc::invalid_argument,
                     "'" + key_file + "' outside ssh.key_dirs " + list(dirs) + ": " + how_to());
    int err = 0;
    std::string resolved = real(key_file, err);
    if (resolved.empty() && err == ENOENT) {
        // Not there (yet): resolve its directory; the name itself is checked again at load.
        const auto slash = key_file.rfind('/');
        const std::string parent = slash == 0 ? "/" : key_file.substr(0, slash);
        const std::string base = key_file.substr(slash + 1);
        std::string p = real(parent, err);
        if (!p.empty()) resolved = (p == "/" ? "" : p) + "/" + base;
    }
    if (resolved.empty())
        return Error(errc::invalid_argument, "'" + key_file + "' cannot be resolved (" +
                                                 std::strerror(err) + "); keys must lie in ssh.key_dirs " +
                                                 list(dirs));
    for (const auto& dir : dirs.dirs) {
        int derr = 0;
        const std::string rdir = real(dir, derr);
        if (!rdir.empty() && inside(resolved, rdir)) return resolved;
    }
    std::string what = "'" + key_file + "'";
    if (resolved != key_file) what += " resolves to '" + resolved + "',";
    return Error(errc::invalid_argument,
                 what + " outside ssh.key_dirs " + list(dirs) + ": " + how_to());
}

// Four dot-separated labels of 1-3 digits: an IPv4 literal.
bool ipv4_literal(std::string_view h) {
    int labels = 0;
    std::size_t run = 0;
    for (char c : h) {
        if (c == '.') {
            if (run == 0) return false;
            ++labels;
            run = 0;
        } else if (c >= '0' && c <= '9' && run < 3) {
            ++run;
        } else {
            return false;
        }
    }
    return run > 0 && labels == 3;
}

// A pattern whose labels are all digits or wildcards ("10.1.2.*") names IPv4 addresses: it must
// never match a DNS name such as "10.1.2.com", which whoever owns "2.com" controls.
bool numeric_pattern(std::string_view p) {
    bool digit = false;
    for (char c : p) {
        if (c >= '0' && c <= '9') digit = true;
        else if (c != '.' && c != '*' && c != '?') return false;
    }
    return digit;
}

bool host_matches(std::string_view pattern, std::string_view host) {
    if (pattern.empty() || host.empty()) return false;
    if (numeric_pattern(pattern) && !ipv4_literal(host)) return false;
    return glob(pattern, host);
}

bool host_matches_any(const std::vector<std::string>& patterns, std::string_view host) {
    for (const auto& p : patterns)
        if (host_matches(p, host)) return true;
    return false;
}

std::optional<std::string> host_pattern_problem(std::string_view pattern) {
    if (pattern.empty()) return "must not be empty";
    if (pattern.size() > 255) return "must be at most 255 characters";
    for (char c : pattern)
        if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '/')
            return "must not contain whitespace, control characters or '/'";
    return std::nullopt;
}

}  // namespace guardia::deploy
