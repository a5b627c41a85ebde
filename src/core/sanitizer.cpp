#include "guardia/core/sanitizer.hpp"

#include "guardia/core/shell_syntax.hpp"

#include <algorithm>
#include <array>
#include <deque>
#include <unordered_set>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

namespace guardia {
namespace {

using shell::PartKind;
using shell::Redirect;
using shell::RedirectOp;
using shell::Script;
using shell::SimpleCommand;
using shell::Word;

// Scripts handed on as strings (sh -c, eval, su -c, ssh ...) nested deeper than this are
// refused rather than left unchecked.
constexpr int max_nesting = 8;
constexpr std::size_t max_fragment = 80;
constexpr std::size_t max_command_bytes = 64 * 1024;
// At most this many possible working directories are tracked; more collapse to "unknown".
constexpr std::size_t max_cwds = 8;

constexpr auto top_system_dirs = std::to_array<std::string_view>({
    "bin",  "boot", "dev", "efi",  "etc",  "home", "lib",  "lib32", "lib64",
    "libx32", "lost+found", "media", "mnt", "opt", "proc", "root", "run", "sbin",
    "snap", "srv",  "sys",  "tmp",  "usr",  "var",  "nix"});

// Second-level directories that recursive operations may not touch: every child of these...
constexpr auto all_children_protected = std::to_array<std::string_view>({
    "bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "proc", "root",
    "sbin", "sys", "usr", "nix"});
// ... and these children of /var and /run.
constexpr auto var_children_protected = std::to_array<std::string_view>({
    "lib", "log", "cache", "spool", "backups", "mail", "opt", "local", "tmp", "run", "lock",
    "www", "db", "empty"});

// Files whose removal or overwriting takes a system down or hands it over.
constexpr auto critical_etc_files = std::to_array<std::string_view>({
    "passwd", "shadow", "group", "gshadow", "sudoers", "fstab", "crypttab", "hosts",
    "hostname", "resolv.conf", "ld.so.preload", "ld.so.conf", "profile", "bashrc",
    "bash.bashrc", "environment", "shells", "crontab", "inittab", "rc.local", "securetty",
    "login.defs", "nsswitch.conf", "machine-id", "sysctl.conf", "modules"});
// Directories under /etc whose every file is critical (logins, privileges, boot hooks).
constexpr auto critical_etc_dirs = std::to_array<std::string_view>({
    "sudoers.d", "pam.d", "security", "ssh", "cron.d", "cron.daily", "cron.hourly",
    "cron.weekly", "cron.monthly", "profile.d", "ld.so.conf.d", "modprobe.d", "selinux"});
constexpr auto critical_home_files = std::to_array<std::string_view>({
    ".bashrc", ".profile", ".bash_profile", ".bash_login", ".zshrc"});

constexpr auto harmless_devices = std::to_array<std::string_view>({
    "null", "zero", "full", "random", "urandom", "stdout", "stderr", "stdin", "tty",
    "console", "ptmx", "kmsg", "fd", "pts"});
constexpr auto block_device_prefixes = std::to_array<std::string_view>({
    "sd", "hd", "vd", "xvd", "nvme", "mmcblk", "dm-", "md", "loop", "sr", "nbd", "rbd",
    "zram", "mapper"});

constexpr auto shells = std::to_array<std::string_view>({
    "sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "rbash", "ksh93", "yash", "posh",
    "fish", "lksh", "pdksh", "tcsh", "csh", "busybox-sh"});
constexpr auto interpreters = std::to_array<std::string_view>({
    "python", "perl", "ruby", "node", "nodejs", "php", "lua", "tclsh", "expect", "rscript",
    "pwsh", "jshell", "irb", "luajit", "pypy", "bun", "deno"});
constexpr auto awks = std::to_array<std::string_view>({"awk", "gawk", "mawk", "nawk", "busybox-awk"});
// Words in inline interpreter code that run commands or remove files.
// Words in inline interpreter code that run commands, remove or overwrite files, or reach
// code by other names. A word list, not a parser: see SECURITY.md.
constexpr std::string_view risky_code_words[] = {
    "os.system", "system(", "system ", "system'", "system\"", "exec", "popen", "spawn",
    "subprocess", "child_process", "rmtree", "unlink", "remove(", "rmdir", "fork", "passthru",
    "proc_open", "eval", "`", "qx", "%x", "kill", "truncate", "ctypes", "__import__",
    "getattr", "/dev/", "rmsync", "\"|", "'|", "|\"", "|'", "'w'", "\"w\"", "'wb'", "\"wb\"",
    "'a'", "\"a\"", "shell", "rmdirsync", "writefile"};

constexpr auto disk_tools = std::to_array<std::string_view>({
    "mke2fs", "wipefs", "blkdiscard", "mkdosfs", "mkntfs", "mkexfatfs", "cfdisk",
    "gdisk", "sgdisk", "format", "mklabel"});
constexpr auto power_tools = std::to_array<std::string_view>({
    "reboot", "shutdown", "halt", "poweroff", "kexec", "killall5"});
constexpr auto power_verbs = std::to_array<std::string_view>({
    "reboot", "poweroff", "halt", "kexec", "soft-reboot", "emergency", "rescue", "suspend",
    "hibernate", "hybrid-sleep", "suspend-then-hibernate", "sleep"});
constexpr auto power_targets = std::to_array<std::string_view>({
    "reboot.target", "poweroff.target", "halt.target", "kexec.target", "rescue.target",
    "emergency.target", "ctrl-alt-del.target", "soft-reboot.target"});

template <std::size_t N>
bool contains(const std::array<std::string_view, N>& list, std::string_view s) {
    return std::find(list.begin(), list.end(), s) != list.end();
}

bool is_power_target(std::string_view unit) {
    if (contains(power_targets, unit)) return true;
    return unit == "runlevel0.target" || unit == "runlevel6.target" || unit == "runlevel1.target" ||
           unit.starts_with("systemd-reboot") || unit.starts_with("systemd-poweroff") ||
           unit.starts_with("systemd-halt") || unit.starts_with("systemd-kexec");
}

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }
std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = lower(c);
    return out;
}
bool is_word_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}
bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// The fragment a refusal quotes: one line, trimmed, at most max_fragment characters.
std::string fragment_of(std::string_view s) {
    std::string out;
    for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        out += (u < 0x20 || u == 0x7f) ? ' ' : c;
    }
    auto b = out.find_first_not_of(' ');
    if (b == std::string::npos) return {};
    out = out.substr(b, out.find_last_not_of(' ') - b + 1);
    if (out.size() > max_fragment) {
        // Cut on a UTF-8 character boundary: the message must stay valid UTF-8 (JSON).
        std::size_t cut = max_fragment - 3;
        while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
        out = out.substr(0, cut) + "...";
    }
    return out;
}

// A parse error may quote a byte of the input: printable ASCII only in a message.
std::string ascii_only(std::string_view s) {
    std::string out;
    for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        out += (u < 0x20 || u >= 0x7f) ? '?' : c;
    }
    return out;
}

// "drop table", "drop database", "drop schema", "truncate table" with any whitespace, any case.
bool has_sql_destruction(std::string_view text) {
    std::string t = lower(text);
    std::size_t next_close = 0;
    for (std::string_view verb : {std::string_view("drop"), std::string_view("truncate")}) {
        next_close = 0;
        for (std::size_t at = t.find(verb); at != std::string::npos; at = t.find(verb, at + 1)) {
            if (at > 0 && is_word_char(t[at - 1])) continue;
            std::size_t p = at + verb.size();
            std::size_t ws = p;
            // Whitespace and SQL comments between the words.
            while (p < t.size()) {
                if (is_space(t[p])) {
                    ++p;
                } else if (t.compare(p, 2, "/*") == 0) {
                    // The next "*/" after p (closes are found once, in order: linear overall).
                    while (next_close < t.size() && (next_close < p + 2 || t.compare(next_close, 2, "*/") != 0))
                        next_close = t.find("*/", std::max(next_close + 1, p + 2));
                    p = next_close >= t.size() ? t.size() : next_close + 2;
                } else if (t.compare(p, 2, "--") == 0 || t[p] == '#') {
                    auto eol = t.find('\n', p);
                    p = eol == std::string::npos ? t.size() : eol + 1;
                } else {
                    break;
                }
            }
            if (p == ws) continue;
            for (std::string_view object : {std::string_view("table"), std::string_view("database"),
                                            std::string_view("schema")}) {
                if (verb == "truncate" && object != "table") continue;
                std::size_t end = p + object.size();
                if (end < t.size() && t[end] == 's') ++end;  // DROP TABLES
                if (t.compare(p, object.size(), object) == 0 && (end == t.size() || !is_word_char(t[end])))
                    return true;
            }
        }
    }
    return false;
}

// --- Paths -------------------------------------------------------------------------------

// A possible working directory: a normalised path ("/srv/app", "~" for the login's home,
// "~/x"), or nullopt when unknown (after cd to an expansion).
using Cwd = std::optional<std::string>;
using Cwds = std::vector<Cwd>;

void add_cwd(Cwds& set, const Cwd& c) {
    if (std::find(set.begin(), set.end(), c) != set.end()) return;
    if (set.size() >= max_cwds) {
        set.assign(1, std::nullopt);
        return;
    }
    set.push_back(c);
}

std::vector<std::string_view> split_path(std::string_view p) {
    std::vector<std::string_view> out;
    std::size_t i = 0;
    while (i < p.size()) {
        while (i < p.size() && p[i] == '/') ++i;
        std::size_t j = i;
        while (j < p.size() && p[j] != '/') ++j;
        if (j > i) out.push_back(p.substr(i, j - i));
        i = j;
    }
    return out;
}

// Lexical normalisation of `raw` against `cwd`: "//", "/./", "/../", "~", "~user",
// /proc/<pid|self>/root. nullopt: the result depends on what cannot be known.
std::optional<std::string> normalize(std::string_view raw, const Cwd& cwd) {
    std::string base;
    std::string_view rest;
    if (!raw.empty() && raw.front() == '~') {
        std::size_t slash = raw.find('/');
        std::string_view user = raw.substr(1, slash == std::string_view::npos ? raw.npos : slash - 1);
        if (user.empty()) base = "~";
        else if (user == "root") base = "/root";
        else return std::nullopt;  // ~user's home, ~+, ~-, ~N: only the node knows
        rest = slash == std::string_view::npos ? std::string_view() : raw.substr(slash);
    } else if (!raw.empty() && raw.front() == '/') {
        base = "/";
        rest = raw;
    } else {
        if (!cwd) return std::nullopt;
        base = *cwd;
        rest = raw;
    }
    bool home = base.front() == '~';
    std::vector<std::string> stack;
    for (auto seg : split_path(home ? std::string_view(base).substr(1) : std::string_view(base)))
        stack.emplace_back(seg);
    for (auto seg : split_path(rest)) {
        if (seg == ".") continue;
        if (seg == "..") {
            if (!stack.empty()) {
                stack.pop_back();
            } else if (home) {
                home = false;  // above the home directory: /home or /, whichever, is protected
            }
            continue;
        }
        stack.emplace_back(seg);
    }
    // /dev/stdin/x, /dev/fd/N/x, /proc/<pid>/fd/N/x: a path through an open descriptor.
    if (!home && stack.size() >= 3 && stack[0] == "dev" &&
        (stack[1] == "stdin" || stack[1] == "stdout" || stack[1] == "stderr" || stack[1] == "fd") &&
        !(stack[1] == "fd" && stack.size() == 3))
        return std::nullopt;
    if (!home && stack.size() >= 3 && stack[0] == "proc" && stack.size() >= 3 &&
        (stack[2] == "fd" || stack[2] == "cwd") )
        return std::nullopt;
    // /proc/<pid>/root is the process's root directory; /proc/<pid>/cwd its cwd.
    while (!home && stack.size() >= 3 && stack[0] == "proc" &&
           (stack[1] == "self" || stack[1] == "thread-self" ||
            std::all_of(stack[1].begin(), stack[1].end(), [](char c) { return c >= '0' && c <= '9'; }))) {
        if (stack[2] == "root") {
            stack.erase(stack.begin(), stack.begin() + 3);
        } else if (stack[2] == "cwd") {
            return std::nullopt;
        } else {
            break;
        }
    }
    std::string out = home ? "~" : "";
    for (const auto& s : stack) out += "/" + s;
    if (out.empty()) out = "/";
    return out;
}

// Segments of a normalised path; a home path starts with "~".
std::vector<std::string_view> segments(std::string_view p) {
    if (!p.empty() && p.front() == '~') {
        auto rest = split_path(p.substr(1));
        rest.insert(rest.begin(), "~");
        return rest;
    }
    return split_path(p);
}

bool is_top_system(const std::vector<std::string_view>& s) {
    return s.empty() || (s.size() == 1 && (s[0] == "~" || contains(top_system_dirs, s[0])));
}

// "/", a top-level system directory, the home directory, or a protected second level.
bool protected_for_recursion(std::string_view p) {
    auto s = segments(p);
    if (is_top_system(s)) return true;
    if (s.size() == 2) {
        if (contains(all_children_protected, s[0])) return true;
        if ((s[0] == "var") && contains(var_children_protected, s[1])) return true;
        if (s[0] == "run" && (s[1] == "systemd" || s[1] == "user" || s[1] == "dbus" || s[1] == "sshd" ||
                              s[1] == "lock" || s[1] == "udev" || s[1] == "mount" || s[1] == "initramfs"))
            return true;
        if (s[0] == "~" && (s[1] == ".ssh" || s[1] == ".gnupg")) return true;
        if (s[0] == "boot" || s[0] == "efi") return true;
    }
    return false;
}

// A file whose removal or overwriting breaks or hands over the system.
bool is_critical_file(std::string_view p) {
    auto s = segments(p);
    if (is_top_system(s)) return true;
    auto under = [&](std::initializer_list<std::string_view> prefix) {
        if (s.size() <= prefix.size()) return false;
        std::size_t i = 0;
        for (auto seg : prefix)
            if (s[i++] != seg) return false;
        return true;
    };
    if (s[0] == "etc") {
        if (s.size() == 2 && contains(critical_etc_files, s[1])) return true;
        if (s.size() >= 3 && contains(critical_etc_dirs, s[1])) return true;
    }
    if (s[0] == "boot" || s[0] == "efi" || s[0] == "bin" || s[0] == "sbin" || s[0] == "lib" ||
        s[0] == "lib32" || s[0] == "lib64" || s[0] == "libx32" || s[0] == "proc" ||
        s[0] == "sys")
        return true;
    if (s[0] == "usr" && s.size() >= 2 && s[1] != "local") return true;
    if (under({"root", ".ssh"}) || under({"~", ".ssh"}) || under({"var", "spool", "cron"}))
        return true;
    if (s.size() >= 4 && s[0] == "home" && s[2] == ".ssh") return true;
    if (s.size() == 2 && (s[0] == "root" || s[0] == "~") && contains(critical_home_files, s[1]))
        return true;
    if (s.size() == 3 && s[0] == "home" && contains(critical_home_files, s[2])) return true;
    return false;
}

// A file that may not be written. Kernel tunables under /proc/sys and /sys are written in
// everyday operations; the ones that reboot, crash, power off or drop devices are not.
bool is_write_protected(std::string_view p) {
    auto s = segments(p);
    if (!s.empty() && s[0] == "proc" && s.size() >= 2 && s[1] == "sys") {
        return s.size() == 4 && s[2] == "kernel" && (s[3] == "sysrq" || s[3] == "panic" || s[3] == "core_pattern");
    }
    if (!s.empty() && s[0] == "sys" && s.size() >= 2) {
        if (s[1] == "power" || s[1] == "firmware") return true;
        auto last = s.back();
        return last == "delete" || last == "remove" || last == "unbind" || last == "reset";
    }
    return is_critical_file(p);
}

enum class DeviceKind { none, harmless, block, other };

DeviceKind device_kind(std::string_view p) {
    auto s = segments(p);
    if (s.size() < 2 || s[0] != "dev") return DeviceKind::none;
    std::string name = lower(s[1]);
    // Writing to /dev/stdin or /dev/fd/N (N other than 1, 2) reopens whatever that descriptor
    // was opened on: "cp /dev/null /dev/stdin < /etc/shadow".
    if (name == "stdin") return DeviceKind::other;
    if (name == "fd") return s.size() == 3 && (s[2] == "1" || s[2] == "2") ? DeviceKind::harmless : DeviceKind::other;
    if (contains(harmless_devices, std::string_view(name)) || name == "shm" || name == "mqueue")
        return DeviceKind::harmless;
    for (auto prefix : block_device_prefixes)
        if (name.starts_with(prefix)) return DeviceKind::block;
    if (name == "disk" || name == "root" || name == "mem" || name == "kmem" || name == "port")
        return DeviceKind::block;
    return DeviceKind::other;
}

std::string basename_of(std::string_view s) {
    while (s.size() > 1 && s.back() == '/') s.remove_suffix(1);
    auto slash = s.rfind('/');
    return std::string(slash == std::string_view::npos ? s : s.substr(slash + 1));
}

// Variables through which a value becomes code run by the shell or the loader.
bool is_code_variable(std::string_view assignment) {
    auto eq = assignment.find('=');
    std::string_view name = assignment.substr(0, eq);
    if (name.ends_with("+")) name.remove_suffix(1);
    std::string_view value = eq == std::string_view::npos ? std::string_view() : assignment.substr(eq + 1);
    static const auto names = std::to_array<std::string_view>({
        "BASH_ENV", "ENV", "LD_PRELOAD", "LD_AUDIT", "PROMPT_COMMAND", "PS4", "SHELLOPTS",
        "BASHOPTS", "LD_LIBRARY_PATH"});
    return contains(names, name) || name.starts_with("BASH_FUNC_") || name.starts_with("BASH_CMDS") ||
           name.starts_with("BASH_ALIASES") || name.starts_with("GIT_CONFIG") || value.starts_with("() {") ||
           value.starts_with("(){");
}

// Variables whose value is a command line that git or a tool runs: judged as a script.
std::optional<std::string_view> command_variable_value(std::string_view assignment) {
    auto eq = assignment.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    std::string_view name = assignment.substr(0, eq);
    static const auto names = std::to_array<std::string_view>({
        "GIT_SSH_COMMAND", "GIT_SSH", "GIT_EXTERNAL_DIFF", "GIT_PROXY_COMMAND", "GIT_EDITOR",
        "GIT_PAGER", "LESSOPEN", "LESSCLOSE"});
    if (contains(names, name)) return assignment.substr(eq + 1);
    return std::nullopt;
}

// GNU sed's e command and the e flag of s/// run the pattern space as a shell command.
bool sed_script_executes(std::string_view script) {
    std::size_t i = 0;
    while (i < script.size()) {
        // One command: skip separators and an address.
        while (i < script.size() && (is_space(script[i]) || script[i] == ';' || script[i] == '{' || script[i] == '}')) ++i;
        while (i < script.size() && (std::isdigit(static_cast<unsigned char>(script[i])) || script[i] == '$' ||
                                     script[i] == ',' || script[i] == '~' || script[i] == '!' || script[i] == '+')) ++i;
        if (i < script.size() && (script[i] == '/' || script[i] == '\\')) {
            char d = script[i] == '/' ? '/' : (i + 1 < script.size() ? script[i + 1] : '/');
            i += script[i] == '/' ? 1 : 2;
            while (i < script.size() && script[i] != d) i += script[i] == '\\' ? 2 : 1;
            ++i;
            continue;
        }
        while (i < script.size() && is_space(script[i])) ++i;
        if (i >= script.size()) break;
        char c = script[i];
        if (c == 'e' && (i + 1 == script.size() || is_space(script[i + 1]) || script[i + 1] == ';')) return true;
        // w FILE / W FILE: writes a file not judged here.
        if ((c == 'w' || c == 'W') && (i + 1 == script.size() || is_space(script[i + 1]))) return true;
        if (c == 's' && i + 1 < script.size()) {
            char d = script[i + 1];
            std::size_t k = i + 2;
            int seen = 0;
            while (k < script.size() && seen < 2) {
                if (script[k] == '\\') { k += 2; continue; }
                if (script[k] == d) ++seen;
                ++k;
            }
            while (k < script.size() && std::isalnum(static_cast<unsigned char>(script[k]))) {
                if (script[k] == 'e' || script[k] == 'w') return true;
                ++k;
            }
            i = k;
            continue;
        }
        // Any other command: skip to the next separator.
        while (i < script.size() && script[i] != ';' && script[i] != '\n') ++i;
    }
    return false;
}

// Commands with a rule of their own below (judge_argv): brace expansion and operands from
// xargs are refused for them, since both change the words their rule reads.
bool has_rules(std::string_view name) {
    static const auto names = std::to_array<std::string_view>({
        "rm", "unlink", "find", "chmod", "chown", "chgrp", "chattr", "setfacl", "dd", "tee",
        "truncate", "cp", "mv", "install", "ln", "rsync", "sed", "shred", "fdisk", "sfdisk",
        "parted", "badblocks", "cryptsetup", "lvremove", "vgremove", "pvremove", "mdadm", "zpool",
        "zfs", "nvme", "hdparm", "dmsetup", "init", "telinit", "systemctl", "loginctl", "kill",
        "pkill", "killall", "dropdb", "mysqladmin", "mysql", "mariadb", "psql", "sqlite3",
        "crontab", "tar", "git", "docker", "podman", "nerdctl", "let", "export", "declare",
        "typeset", "local", "readonly", "eval", "source", ".", "trap", "alias", "at", "batch",
        "ssh", "mknod"});
    if (contains(names, name) || name.starts_with("mkfs") || name.starts_with("mke2fs")) return true;
    if (contains(shells, name) || contains(awks, name)) return true;
    for (auto i : interpreters)
        if (name.starts_with(i)) return true;
    return false;
}

// --- Wrappers ----------------------------------------------------------------------------

struct WrapperSpec {
    std::string_view name = {};
    std::string_view short_with_arg = {};  // option letters that take an argument
    std::string_view long_with_arg = {};  // long options that take an argument, comma-separated
    int positionals = 0;     // words between the options and the command (timeout's duration)
    bool assignments = false;  // NAME=value words before the command (env, sudo)
    char script_option = 0;    // its argument is a shell command line (su -c, flock -c)
    std::string_view script_long = {};
    std::string_view no_command = {};  // option letters after which nothing is run (command -v)
    std::string_view join_options = {};  // option letters after which the rest is one command line
    bool extra_operands = false;    // the command gets operands read from stdin (xargs)
    bool join_always = false;       // the rest is one command line (watch, sg)
};

const std::vector<WrapperSpec>& wrapper_specs() {
    static const std::vector<WrapperSpec> specs = {
        {"sudo", "CDghpRrtTUu", "chdir,close-from,group,host,prompt,chroot,role,type,command-timeout,other-user,user", 0, true, 0, "", "elvKV", "si"},
        {"doas", "uC", "", 0, false, 0, "", "", "s"},
        {"env", "uC", "unset,chdir", 0, true, 0, "", "", ""},
        {"timeout", "sk", "signal,kill-after", 1},
        {"nice", "n", "adjustment"},
        {"ionice", "cnp", "class,classdata,pid"},
        {"nohup", "", ""},
        {"setsid", "", ""},
        {"stdbuf", "ioe", "input,output,error"},
        {"flock", "wE", "timeout,conflict-exit-code", 1, false, 'c', "command"},
        {"runuser", "ugGsw", "user,group,supp-group,shell,whitelist-environment", 0, false, 'c', "command"},
        {"su", "gGsw", "group,supp-group,shell,whitelist-environment", 1, false, 'c', "command"},
        {"chroot", "", "userspec,groups", 1},
        {"busybox", "", ""},
        {"command", "", "", 0, false, 0, "", "vV"},
        {"exec", "a", ""},
        {"builtin", "", ""},
        {"xargs", "adEILnPs", "arg-file,delimiter,eof,replace,max-lines,max-args,max-procs,max-chars,process-slot-var", 0, false, 0, "", "", "", true},
        {"parallel", "jSaNnLIdC", "jobs,sshlogin,arg-file,colsep,delay,timeout,results,joblog", 0, false, 0, "", "", "", true},
        {"watch", "nd", "interval", 0, false, 0, "", "", "", false, true},
        {"time", "fo", "format,output"},
        {"nsenter", "tSG", "target"},
        {"unshare", "", ""},
        {"chrt", "", "", 1},
        {"taskset", "", "", 1},
        {"strace", "oepsuEaIbX", "output"},
        {"ltrace", "oepsuaA", "output"},
        {"systemd-run", "upEMH", "unit,property,setenv,machine,host,description,slice,uid,gid,nice,working-directory,on-calendar,on-active"},
        {"sshpass", "pfd", ""},
        {"script", "EIOBTt", "", 0, false, 'c', "command"},
        {"sg", "", "", 1, false, 'c', "", "", "", false, true},
        {"gosu", "", "", 1},
        {"su-exec", "", "", 1},
        {"setpriv", "", ""},
        {"prlimit", "p", "pid"},
        {"unbuffer", "", ""},
        {"pkexec", "", "user"},
        {"setarch", "", "", 1},
        {"linux32", "", ""},
        {"linux64", "", ""},
        {"systemd-inhibit", "", "what,who,why,mode"},
        {"systemd-cat", "tp", "identifier,priority,level-prefix"},
        {"chronic", "", ""},
        {"ifne", "", ""},
        {"ssh-agent", "aEtP", ""},
        {"fakeroot", "ils", ""},
        {"toybox", "", ""},
        {"firejail", "", ""},
        {"run0", "ugD", "user,group,chdir,unit,property,description,slice"},
        {"screen", "SceLlpTtX", ""},
        {"catchsegv", "", ""},
        {"proxychains", "f", ""},
        {"torsocks", "", ""},
        {"eatmydata", "", ""},
        {"dbus-run-session", "", "config-file,dbus-daemon"},
        {"valgrind", "", ""},
        {"xvfb-run", "nsfeaw", "server-num,server-args,auth-file,error-file,wait"},
        {"nocorrect", "", ""},
        {"noglob", "", ""},
        {"caffeinate", "", ""},
        {"cgexec", "g", ""},
        {"numactl", "", ""},
        {"dumb-init", "", ""},
        {"tini", "", ""},
    };
    return specs;
}

bool in_csv(std::string_view csv, std::string_view key) {
    while (!csv.empty()) {
        auto comma = csv.find(',');
        if (csv.substr(0, comma) == key) return true;
        if (comma == std::string_view::npos) break;
        csv.remove_prefix(comma + 1);
    }
    return false;
}

const WrapperSpec* find_wrapper(std::string_view name) {
    for (const auto& s : wrapper_specs())
        if (s.name == name) return &s;
    return nullptr;
}

bool looks_like_assignment(std::string_view s) {
    if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_')) return false;
    for (std::size_t i = 1; i < s.size(); ++i) {
        if (s[i] == '=') return true;
        if (!is_word_char(s[i])) return false;
    }
    return false;
}

// --- The judge ---------------------------------------------------------------------------

struct Refusal {
    std::string rule;
    std::string fragment;
};

// What a simple command being judged runs in: where its words came from, which directories
// it may run in, what feeds its standard input.
struct Ctx {
    std::string_view fragment;
    const Cwds* cwds = nullptr;
    int level = 0;  // scripts handed on as strings, counted
    bool stdin_pipe = false;
    const Redirect* stdin_doc = nullptr;   // a here-document or here-string on stdin
    bool stdin_file = false;               // < file
    const Word* stdin_file_word = nullptr;
    bool extra_operands = false;           // operands appended from stdin (xargs)
};

using Args = std::vector<const Word*>;

class Judge {
public:
    Judge(const CommandPolicy* policy, std::size_t input_size)
        : policy_(policy), budget_(64 * input_size + 65536) {}

    std::optional<Refusal> run(std::string_view command) {
        Cwds start{std::string("~")};
        cdpath_ = command.find("CDPATH") != std::string_view::npos;
        home_unknown_ = command.find("HOME=") != std::string_view::npos;
        judge_script(command, 0, start, "");
        if (!found_ && has_call_cycle())
            refuse("fork bomb (functions that call each other)", command);
        return found_;
    }

private:
    const CommandPolicy* policy_;
    std::size_t budget_;
    std::optional<Refusal> found_;
    std::deque<Word> synthetic_;  // words made up while judging (find -exec's {})
    std::vector<std::string> written_;   // files this command writes (normalised)
    bool cdpath_ = false;                // CDPATH is set: a relative cd may go anywhere
    bool home_unknown_ = false;          // HOME is assigned: ~ and $HOME are not the login's
    std::vector<std::string> aliases_;   // links and mount points made by this command
    std::unordered_set<const Word*> confined_set_;
    // Function calls made inside function bodies, for the fork-bomb check: caller -> callee.
    std::vector<std::pair<std::string, std::string>> calls_;
    std::vector<std::string> function_stack_;
    int wrapper_depth_ = 0;

    // A cycle among the calls made inside function bodies (f calls g calls f): recursion with
    // no base case a static judge can see, the shape of every fork bomb.
    bool has_call_cycle() const {
        if (calls_.empty()) return false;
        std::vector<std::string> names;
        for (const auto& c : calls_) names.push_back(c.first);
        std::sort(names.begin(), names.end());
        names.erase(std::unique(names.begin(), names.end()), names.end());
        // Iterative DFS with colours over at most a few thousand edges.
        std::vector<int> colour(names.size(), 0);
        auto index = [&](const std::string& n) -> int {
            auto it = std::lower_bound(names.begin(), names.end(), n);
            return it != names.end() && *it == n ? static_cast<int>(it - names.begin()) : -1;
        };
        std::vector<std::vector<int>> edges(names.size());
        for (const auto& c : calls_) {
            int to = index(c.second);
            if (to >= 0) edges[static_cast<std::size_t>(index(c.first))].push_back(to);
        }
        for (std::size_t root = 0; root < names.size(); ++root) {
            if (colour[root] != 0) continue;
            std::vector<std::pair<int, std::size_t>> stack{{static_cast<int>(root), 0}};
            colour[root] = 1;
            while (!stack.empty()) {
                auto& [node, next] = stack.back();
                auto& out = edges[static_cast<std::size_t>(node)];
                if (next < out.size()) {
                    int to = out[next++];
                    if (colour[static_cast<std::size_t>(to)] == 1) return true;
                    if (colour[static_cast<std::size_t>(to)] == 0) {
                        colour[static_cast<std::size_t>(to)] = 1;
                        stack.push_back({to, 0});
                    }
                } else {
                    colour[static_cast<std::size_t>(node)] = 2;
                    stack.pop_back();
                }
            }
        }
        return false;
    }

    bool refuse(std::string rule, std::string_view fragment) {
        if (!found_) found_ = Refusal{std::move(rule), fragment_of(fragment)};
        return true;
    }

    bool spend(std::size_t units, std::string_view fragment) {
        if (units > budget_) {
            budget_ = 0;
            return refuse("cannot verify a command this complex (work budget exceeded)", fragment);
        }
        budget_ -= units;
        return false;
    }

    // A whole script given as text: parsed, then walked. `context` names where the text came
    // from for a parse failure ("sh -c").
    // What a nested script reads on its standard input is not known: its shells and
    // interpreters must not read code from it.
    static bool untrusted_stdin(const Ctx& ctx) {
        return ctx.stdin_pipe || ctx.stdin_doc || ctx.stdin_file || ctx.extra_operands;
    }

    bool judge_script(std::string_view text, int level, const Cwds& cwds, std::string_view fragment,
                      bool stdin_untrusted = false) {
        if (level > max_nesting)
            return refuse("cannot verify commands nested too deeply to check", fragment.empty() ? text : fragment);
        if (spend(text.size() + 1, text)) return true;
        auto parsed = shell::parse(text);
        if (!parsed)
            return refuse("cannot verify a command that does not parse (" + ascii_only(parsed.error().message) + ")",
                          fragment.empty() ? text : fragment);
        return walk(**parsed, level, cwds, stdin_untrusted);
    }

    // Every command of a parsed script, in order, tracking the possible working directories.
    bool walk(const Script& script, int level, const Cwds& cwds_in, bool stdin_pipe) {
        Cwds cur = cwds_in;
        Cwds if_ok = cwds_in;
        for (const auto& w : script.other_words) {
            if (judge_word_nested(w, level, cur, script.source)) return true;
            if (holds_code(w))
                return refuse("cannot verify a string the shell may evaluate as code", script.source);
        }
        for (const auto& r : script.other_redirects) {
            Ctx ctx;
            ctx.fragment = script.source;
            ctx.cwds = &cur;
            ctx.level = level;
            if (judge_redirect(r, ctx)) return true;
        }
        // Working directories a loop body may start in again: every cd inside a loop.
        Cwds loop_cds;
        for (const auto& cmd : script.commands)
            if (cmd.loop_depth > 0)
                if (auto target = cd_target(cmd, cur)) add_cwd(loop_cds, *target);
        const Cwds unknown{std::nullopt};
        for (const auto& cmd : script.commands) {
            std::string_view fragment =
                std::string_view(script.source).substr(cmd.begin, cmd.end - cmd.begin);
            Cwds effective = cmd.before == shell::Connector::and_if ? if_ok : cur;
            if (cmd.function_index >= 0) effective = unknown;
            for (const auto& c : loop_cds) add_cwd(effective, c);
            if (cmd.function_index >= 0 && is_recursive_call(script, cmd))
                return refuse("fork bomb (a function that calls itself)", fragment);
            // Calls made while inside a function body are recorded for the fork-bomb check,
            // also from its substitutions and eval strings.
            bool in_function = cmd.function_index >= 0;
            if (in_function)
                function_stack_.push_back(script.functions[static_cast<std::size_t>(cmd.function_index)].name);
            bool refused = judge_simple(cmd, level, effective, stdin_pipe || cmd.stdin_from_pipe, fragment);
            if (in_function) function_stack_.pop_back();
            if (refused) return true;
            if (auto target = cd_target(cmd, effective)) {
                if_ok.assign(1, *target);
                add_cwd(cur, *target);
            } else {
                if_ok = effective;
            }
        }
        return false;
    }

    // For cd/pushd/popd: the directory it leaves the shell in (nullopt inside: unknown).
    std::optional<Cwd> cd_target(const SimpleCommand& cmd, const Cwds& cwds) const {
        if (cmd.words.empty()) return std::nullopt;
        std::size_t first = 0;
        auto name = cmd.words[0].literal();
        while (name && (*name == "builtin" || *name == "command") && first + 1 < cmd.words.size())
            name = cmd.words[++first].literal();
        // eval and source may change the directory in ways not followed here.
        if (name && (*name == "eval" || *name == "source" || *name == ".")) return Cwd{};
        if (!name || (*name != "cd" && *name != "pushd" && *name != "popd")) return std::nullopt;
        if (*name == "popd") return Cwd{};
        if (*name == "pushd" && first + 1 >= cmd.words.size()) return Cwd{};  // swaps back
        const Word* target = nullptr;
        for (std::size_t i = first + 1; i < cmd.words.size(); ++i) {
            auto lit = cmd.words[i].literal();
            if (lit && (*lit == "-P" || *lit == "-L" || *lit == "-e" || *lit == "-@" || *lit == "--"))
                continue;
            target = &cmd.words[i];
            break;
        }
        if (!target) return home_unknown_ ? Cwd{} : Cwd{std::string("~")};
        auto lit = target->literal();
        if (!lit || target->has_glob() || target->has_brace() || *lit == "-") return Cwd{};
        if (home_unknown_ && lit->starts_with("~")) return Cwd{};
        if (cdpath_ && !lit->starts_with("/") && !lit->starts_with(".") && !lit->starts_with("~")) return Cwd{};
        if (cwds.size() != 1 && !(lit->starts_with("/") || lit->starts_with("~"))) return Cwd{};
        return normalize(*lit, cwds.empty() ? Cwd{} : cwds.front());
    }

    bool is_recursive_call(const Script& script, const SimpleCommand& cmd) const {
        if (cmd.words.empty()) return false;
        auto name = cmd.words[0].literal();
        const auto& def = script.functions[static_cast<std::size_t>(cmd.function_index)];
        return name && !def.name.empty() && *name == def.name;
    }

    // A literal holding "$(" or "`": code if the shell evaluates it (arithmetic, eval).
    static bool holds_code(const Word& w) {
        for (const auto& p : w.parts)
            if (p.kind == PartKind::literal && (p.text.find("$(") != std::string::npos || p.text.find('`') != std::string::npos))
                return true;
        return false;
    }

    static bool is_search_command(const SimpleCommand& cmd) {
        if (cmd.words.empty()) return false;
        auto name = cmd.words[0].literal();
        if (!name) return false;
        static const auto searchers = std::to_array<std::string_view>({
            "grep", "egrep", "fgrep", "zgrep", "rg", "ag", "ack", "git", "journalctl", "less"});
        return contains(searchers, std::string_view(basename_of(*name)));
    }

    bool judge_word_nested(const Word& w, int level, const Cwds& cwds, std::string_view fragment,
                           bool sql_check = true) {
        std::vector<const Script*> nested;
        w.collect_nested(nested);
        for (const auto* s : nested)
            if (walk(*s, level, cwds, false)) return true;
        std::string text;
        for (const auto& p : w.parts)
            if (p.kind == PartKind::literal) text += p.text;
        if (sql_check && has_sql_destruction(text))
            return refuse("SQL DROP TABLE, DROP DATABASE or TRUNCATE TABLE", fragment);
        for (const auto& p : w.parts)
            if (p.kind == PartKind::parameter && p.text.find("@P") != std::string::npos)
                return refuse("cannot verify a prompt expansion (${x@P})", fragment);
        return false;
    }

    bool judge_simple(const SimpleCommand& cmd, int level, const Cwds& cwds,
                      bool stdin_pipe, std::string_view fragment) {
        if (spend(cmd.words.size() + cmd.redirects.size() + 1, fragment)) return true;
        Ctx ctx;
        ctx.fragment = fragment;
        ctx.cwds = &cwds;
        ctx.level = level;
        ctx.stdin_pipe = stdin_pipe;
        if (policy_ && policy_->restricts() && !allowed_by_policy(cmd))
            return refuse("not allowed by exec.allow", fragment);
        for (const auto& a : cmd.assignments) {
            if (judge_word_nested(a, level, cwds, fragment)) return true;
            std::string text;
            for (const auto& p : a.parts)
                if (p.kind == PartKind::literal) text += p.text;
            auto eq = text.find('=');
            std::string_view value = eq == std::string::npos ? std::string_view() : std::string_view(text).substr(eq + 1);
            if (value.find("$(") != std::string_view::npos || value.find('`') != std::string_view::npos)
                return refuse("cannot verify code held in a variable", fragment);
            if (is_code_variable(text))
                return refuse("cannot verify code passed through the environment", fragment);
            if (auto code = command_variable_value(text); code && judge_script(*code, level + 1, cwds, fragment, true))
                return true;
        }
        const bool search = is_search_command(cmd);
        for (const auto& w : cmd.words)
            if (judge_word_nested(w, level, cwds, fragment, !search)) return true;
        std::string joined;
        for (const auto& w : cmd.words) {
            for (const auto& p : w.parts)
                if (p.kind == PartKind::literal) joined += p.text;
            joined += ' ';
        }
        // SQL text anywhere but in a search pattern ("grep -i 'drop table' mysql.log").
        if (has_sql_destruction(joined) && !search)
            return refuse("SQL DROP TABLE, DROP DATABASE or TRUNCATE TABLE", fragment);
        bool stdin_replaced = false;
        for (const auto& r : cmd.redirects) {
            if (judge_redirect(r, ctx)) return true;
            bool on_stdin = r.fd < 0 || r.fd == 0;
            bool reads = r.op == RedirectOp::input || r.op == RedirectOp::read_write;
            if (reads && r.fd >= 1 && r.fd != 1000) {
                // A file opened for reading on another descriptor can be written through
                // /dev/fd/N or /dev/stdout: "cat /dev/zero 3</dev/sda > /dev/fd/3".
                return refuse("cannot verify a file opened for reading on descriptor " + std::to_string(r.fd),
                              fragment);
            }
            if (on_stdin && (r.op == RedirectOp::heredoc || r.op == RedirectOp::herestring)) {
                ctx.stdin_doc = &r;
                ctx.stdin_file = false;
                ctx.stdin_file_word = nullptr;
                stdin_replaced = true;
            } else if (on_stdin && reads) {
                ctx.stdin_doc = nullptr;
                stdin_replaced = true;
                if (r.target.literal()) {
                    ctx.stdin_file = true;
                    ctx.stdin_file_word = &r.target;
                    ctx.stdin_pipe = false;
                } else {
                    // < <(...) or < "$f": whatever comes out of it.
                    ctx.stdin_file = false;
                    ctx.stdin_file_word = nullptr;
                    ctx.stdin_pipe = true;
                }
            } else if (on_stdin && r.op == RedirectOp::dup_input) {
                ctx.stdin_doc = nullptr;
                ctx.stdin_file = false;
                ctx.stdin_file_word = nullptr;
                ctx.stdin_pipe = true;  // another descriptor: a here-document on fd 3, a pipe ...
                stdin_replaced = false;
            }
        }
        if (stdin_replaced && (ctx.stdin_doc || ctx.stdin_file)) ctx.stdin_pipe = false;
        if (cmd.words.empty()) return false;
        Args args;
        for (const auto& w : cmd.words) args.push_back(&w);
        return judge_argv(args, ctx);
    }

    bool allowed_by_policy(const SimpleCommand& cmd) const {
        if (!cmd.assignments.empty()) return false;
        if (cmd.words.empty()) return true;
        for (const auto& pattern : policy_->allow) {
            if (pattern.size() > cmd.words.size()) continue;
            bool match = true;
            for (std::size_t i = 0; i < pattern.size() && match; ++i) {
                auto lit = cmd.words[i].literal();
                if (!lit || cmd.words[i].has_glob() || cmd.words[i].has_brace()) match = false;
                else if (pattern[i] != "*" && pattern[i] != *lit) match = false;
            }
            if (match) return true;
        }
        return false;
    }

    bool judge_redirect(const Redirect& r, const Ctx& ctx) {
        if (judge_word_nested(r.target, ctx.level, *ctx.cwds, ctx.fragment)) return true;
        for (const auto& p : r.body_parts)
            for (const auto& s : p.nested)
                if (walk(*s, ctx.level, *ctx.cwds, false)) return true;
        if ((r.op == RedirectOp::heredoc && has_sql_destruction(r.body)))
            return refuse("SQL DROP TABLE, DROP DATABASE or TRUNCATE TABLE", ctx.fragment);
        if (r.writes()) return judge_write_target(&r.target, ctx, "redirection");
        return false;
    }

    // --- Operands --------------------------------------------------------------------

    // A word's text when it is a literal path, with $HOME/${HOME} at its start read as "~".
    std::optional<std::string> path_text(const Word& w) const {
        if (home_unknown_ && (w.has_tilde() || (!w.parts.empty() && w.parts[0].kind == PartKind::parameter)))
            return std::nullopt;
        if (!w.parts.empty() && w.parts[0].kind == PartKind::parameter && w.parts[0].text == "HOME") {
            std::string out = "~";
            for (std::size_t i = 1; i < w.parts.size(); ++i) {
                if (w.parts[i].kind != PartKind::literal) return std::nullopt;
                out += w.parts[i].text;
            }
            return out;
        }
        return w.literal();
    }

    // Every way `text` (a literal path) resolves against the possible working directories;
    // false (and a refusal) when one of them is unknown.
    bool resolve(std::string_view text, const Ctx& ctx, std::string_view tool,
                 std::vector<std::string>& out) {
        std::size_t first = out.size();
        if (!resolve_paths(text, ctx, tool, out)) return false;
        for (std::size_t i = first; i < out.size(); ++i)
            for (const auto& a : aliases_)
                if (out[i] == a || out[i].starts_with(a + "/"))
                    return !refuse("cannot verify a path through a link or mount made by the same command", ctx.fragment);
        return true;
    }

    bool resolve_paths(std::string_view text, const Ctx& ctx, std::string_view tool,
                       std::vector<std::string>& out) {
        if (!text.empty() && (text.front() == '/' || text.front() == '~')) {
            if (auto p = normalize(text, std::nullopt)) out.push_back(*p);
            else return !refuse("cannot verify a path under /proc/*/cwd in an operand of " + std::string(tool), ctx.fragment);
            return true;
        }
        for (const auto& cwd : *ctx.cwds) {
            auto p = normalize(text, cwd);
            if (!p)
                return !refuse("cannot verify a relative operand of " + std::string(tool) +
                                   " after cd to a directory not known in advance",
                               ctx.fragment);
            out.push_back(*p);
        }
        return true;
    }

    struct OperandRule {
        std::string_view tool;
        bool recursive = false;
        std::string rule;  // the refusal for a protected path
    };

    // An operand of a command that removes or changes what it names (rm, chmod -R, mv's
    // sources, find's start path for -delete).
    bool judge_destructive_operand(const Word& w, const OperandRule& rule, const Ctx& ctx) {
        auto text = path_text(w);
        if (!text)
            return refuse("cannot verify an expansion in an operand of " + std::string(rule.tool), ctx.fragment);
        if (w.has_brace())
            return refuse("cannot verify a brace expansion in an operand of " + std::string(rule.tool), ctx.fragment);
        bool confined = confined_set_.contains(&w);
        if (w.has_glob()) {
            // A glob matches names inside its literal directory: judge that directory.
            std::size_t first = text->find_first_of("*?[");
            std::size_t slash = text->rfind('/', first);
            std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : text->substr(0, slash);
            if (slash == std::string::npos && !text->empty() && text->front() == '~') dir = "~";
            std::string_view tail = slash == std::string::npos ? std::string_view(*text) : std::string_view(*text).substr(slash + 1);
            for (auto seg : split_path(tail))
                if (seg == ".." || seg.find("..") != std::string_view::npos)
                    return refuse("cannot verify a glob with '..' in an operand of " + std::string(rule.tool), ctx.fragment);
            std::vector<std::string> dirs;
            if (!resolve(dir, ctx, rule.tool, dirs)) return true;
            for (const auto& d : dirs)
                if (protected_for_recursion(d) || is_critical_file(d + "/x"))
                    return refuse(rule.rule, ctx.fragment);
            // Fail closed: what a glob matches is only known on the node.
            if (!confined && (rule.recursive || rule.tool == "rm" || rule.tool == "mv"))
                return refuse("cannot verify a glob in an operand of " + std::string(rule.tool), ctx.fragment);
            return false;
        }
        std::vector<std::string> paths;
        if (!resolve(*text, ctx, rule.tool, paths)) return true;
        for (const auto& p : paths) {
            if (rule.recursive && protected_for_recursion(p)) return refuse(rule.rule, ctx.fragment);
            // Removing a stale known_hosts file is routine; the rest of ~/.ssh is not.
            if (!rule.recursive && basename_of(p).starts_with("known_hosts")) continue;
            if (is_critical_file(p)) return refuse(rule.rule, ctx.fragment);
        }
        return false;
    }

    // A file a command writes: a redirection, tee, dd of=, cp/mv/ln's destination, sed -i.
    // into_dir: the target may be a directory the file lands in (cp, mv, ln, install, rsync).
    bool judge_write_target(const Word* w, const Ctx& ctx, std::string_view what, bool into_dir = false) {
        if (!w) return false;
        if (std::any_of(w->parts.begin(), w->parts.end(),
                        [](const shell::WordPart& p) { return p.kind == PartKind::process_subst; }))
            return false;  // >(...): a pipe to a command judged on its own
        auto text = path_text(*w);
        if (!text)
            return refuse("cannot verify an expansion in the target of a " + std::string(what), ctx.fragment);
        if (w->has_brace() || w->has_glob())
            return refuse("cannot verify a glob or brace in the target of a " + std::string(what), ctx.fragment);
        std::vector<std::string> paths;
        if (!resolve(*text, ctx, what, paths)) return true;
        for (const auto& p : paths) {
            switch (device_kind(p)) {
                case DeviceKind::harmless: continue;
                case DeviceKind::block: return refuse("write to a block device", ctx.fragment);
                case DeviceKind::other: return refuse("write to a device", ctx.fragment);
                case DeviceKind::none: break;
            }
            if (is_write_protected(p) || (into_dir && is_write_protected(p + "/x")))
                return refuse("write to a system file", ctx.fragment);
            if (written_.size() < 64) written_.push_back(p);
        }
        return false;
    }

    // A script file this same command wrote: its content is not known here.
    // Debian's merged /usr and /run links, so that "/var/run/x" is the "/run/x" written before.
    static std::string canonical(std::string p) {
        for (auto [from, to] : {std::pair<std::string_view, std::string_view>{"/var/run/", "/run/"},
                                {"/var/lock/", "/run/lock/"}, {"/bin/", "/usr/bin/"}, {"/sbin/", "/usr/sbin/"},
                                {"/lib/", "/usr/lib/"}, {"/lib64/", "/usr/lib64/"}})
            if (p.starts_with(from)) return std::string(to) + p.substr(from.size());
        return p;
    }

    bool runs_written_file(std::string_view path, const Ctx& ctx) {
        if (written_.empty()) return false;
        for (const auto& cwd : *ctx.cwds) {
            auto p = normalize(path, cwd);
            if (!p) continue;
            for (const auto& w : written_)
                if (canonical(w) == canonical(*p))
                    return refuse("cannot verify code written by the same command", ctx.fragment);
        }
        return false;
    }

    // --- Commands --------------------------------------------------------------------

    bool judge_argv(const Args& args, const Ctx& ctx) {
        if (args.empty()) return false;
        if (spend(args.size() + 1, ctx.fragment)) return true;
        const Word& w0 = *args[0];
        if (w0.has_expansion())
            return refuse("cannot verify an expansion in a command word", ctx.fragment);
        if (w0.has_glob() || w0.has_brace())
            return refuse("cannot verify a glob or brace in a command word", ctx.fragment);
        if (!function_stack_.empty() && calls_.size() < 4096)
            calls_.emplace_back(function_stack_.back(), *w0.literal());
        const std::string lowered = lower(basename_of(*w0.literal()));
        // Compared as a string_view: lengths first, no strlen per comparison.
        const std::string_view name = lowered;
        if (w0.literal()->find('/') != std::string::npos && runs_written_file(*w0.literal(), ctx)) return true;

        const WrapperSpec* spec = find_wrapper(name);
        if (spec || has_rules(name)) {
            // Brace expansion makes several words of one: option parsing would see another
            // command than the shell runs ("chmod {-R,777,/etc}").
            for (std::size_t i = 1; i < args.size(); ++i)
                if (args[i]->has_brace())
                    return refuse("cannot verify a brace expansion in an argument of " + std::string(name), ctx.fragment);
            // Operands read from stdin (xargs) reach every rule unseen.
            if (ctx.extra_operands)
                return refuse("cannot verify operands that " + std::string(name) + " reads from stdin (xargs)", ctx.fragment);
        }
        if (spec) return judge_wrapper(*spec, args, ctx);
        if (name.starts_with("ld-linux") || name.starts_with("ld.so") || name == "coreutils" || name == "capsh" ||
            name == "start-stop-daemon" || name == "ip" || name == "tmux" || name == "screen")
            return judge_launcher(name, args, ctx);
        if (name == "gdb" || name == "vim" || name == "vi" || name == "nvim" || name == "ex" || name == "view" ||
            name == "ed" || name == "m4" || name == "emacs")
            return judge_editor(name, args, ctx);
        if (name == "rm" || name == "unlink") return judge_rm(args, ctx);
        if (name == "find") return judge_find(args, ctx);
        if (name == "chmod" || name == "chown" || name == "chgrp" || name == "chattr" || name == "setfacl")
            return judge_chmod(lowered, args, ctx);
        if (name == "dd") return judge_dd(args, ctx);
        if (name == "tee") return judge_plain_writes(args, ctx, "tee", "");
        if (name == "truncate") return judge_plain_writes(args, ctx, "truncate", "sr");
        if (name == "cp" || name == "mv" || name == "install" || name == "ln")
            return judge_copy(lowered, args, ctx);
        if (name == "rsync") return judge_rsync(args, ctx);
        if (name == "sed") return judge_sed(args, ctx);
        if (name == "shred") return judge_shred(args, ctx);
        if (name.starts_with("mkfs") || name.starts_with("mke2fs") || name == "mke4fs")
            return refuse("filesystem creation (mkfs)", ctx.fragment);
        if (contains(disk_tools, name))
            return refuse("disk formatting, partitioning or wiping (" + std::string(name) + ")", ctx.fragment);
        if (name == "mkswap") {
            // A swap file is routine; a device or a path not known is not.
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                if (lit && lit->starts_with("-")) {
                    if (*lit == "-L" || *lit == "-U" || *lit == "-p" || *lit == "--label" || *lit == "--uuid") ++i;
                    continue;
                }
                auto text = path_text(*args[i]);
                if (!text || args[i]->has_glob()) return refuse("cannot verify an expansion in an operand of mkswap", ctx.fragment);
                std::vector<std::string> paths;
                if (!resolve(*text, ctx, "mkswap", paths)) return true;
                for (const auto& p : paths)
                    if (device_kind(p) != DeviceKind::none || is_critical_file(p))
                        return refuse("disk formatting, partitioning or wiping (mkswap)", ctx.fragment);
            }
            return false;
        }
        if (name == "fdisk" || name == "sfdisk" || name == "parted" || name == "badblocks" ||
            name == "cryptsetup" || name == "lvremove" || name == "vgremove" || name == "pvremove" ||
            name == "mdadm" || name == "zpool" || name == "zfs" || name == "nvme" || name == "hdparm" ||
            name == "dmsetup")
            return judge_disk_tool(lowered, args, ctx);
        if (contains(power_tools, name)) {
            if (name == "shutdown" && has_literal(args, {"-c", "--help"})) return false;
            return refuse("reboot or power-off (" + std::string(name) + ")", ctx.fragment);
        }
        if (name == "init" || name == "telinit") {
            if (has_literal(args, {"0", "6", "1", "s", "S"}))
                return refuse("reboot or power-off (" + std::string(name) + ")", ctx.fragment);
            return false;
        }
        if (name == "systemctl" || name == "loginctl") {
            // The verb is the first word that is not an option; power targets matter only to
            // the verbs that start units.
            std::optional<std::string> verb;
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                if (!lit) {
                    if (!verb) return refuse("cannot verify an expansion in the verb of " + std::string(name), ctx.fragment);
                    continue;
                }
                if (lit->starts_with("-")) {
                    if (*lit == "-H" || *lit == "-M" || *lit == "-t" || *lit == "-p" || *lit == "-s" || *lit == "-n" ||
                        *lit == "-o" || *lit == "--host" || *lit == "--machine" || *lit == "--type" || *lit == "--property")
                        ++i;
                    continue;
                }
                if (!verb) {
                    verb = *lit;
                    if (contains(power_verbs, std::string_view(*verb)))
                        return refuse("reboot or power-off (" + std::string(name) + " " + *verb + ")", ctx.fragment);
                    continue;
                }
                static const auto starting = std::to_array<std::string_view>({
                    "start", "isolate", "restart", "try-restart", "reload-or-restart", "enable", "reenable"});
                if (contains(starting, std::string_view(*verb)) && is_power_target(*lit))
                    return refuse("reboot or power-off (" + std::string(name) + " " + *verb + " " + *lit + ")", ctx.fragment);
            }
            return false;
        }
        if (name == "kill") return judge_kill(args, ctx);
        if (name == "pkill" || name == "killall") return judge_pkill(name, args, ctx);
        if (name == "hash" && has_literal(args, {"-p"}))
            return refuse("cannot verify a command lookup changed by hash -p", ctx.fragment);
        if (name == "mknod") return refuse("device node creation (mknod)", ctx.fragment);
        if (name == "mount" || name == "umount") return judge_mount(name, args, ctx);
        if (name == "busctl" || name == "dbus-send" || name == "gdbus") {
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                std::string l = lit ? lower(*lit) : "";
                if (l.find("reboot") != std::string::npos || l.find("poweroff") != std::string::npos ||
                    l.find("halt") != std::string::npos || l.find("kexec") != std::string::npos)
                    return refuse("reboot or power-off (" + std::string(name) + ")", ctx.fragment);
            }
            return false;
        }
        if (name == "read" || name == "mapfile" || name == "readarray" || name == "unset" || name == "printf" ||
            name == "[" || name == "test") {
            // Strings bash may later evaluate as arithmetic or subscripts: a[$(...)].
            bool assigns = name != "printf" || has_literal(args, {"-v"});
            for (std::size_t i = 1; i < args.size() && assigns; ++i)
                if (holds_code(*args[i])) return refuse("cannot verify a string the shell may evaluate as code", ctx.fragment);
            if ((name == "read" || name == "mapfile" || name == "readarray") && ctx.stdin_doc) {
                const Redirect& r = *ctx.stdin_doc;
                std::string text = r.op == RedirectOp::heredoc ? r.body : r.target.literal().value_or("$(");
                if (text.find("$(") != std::string::npos || text.find('`') != std::string::npos)
                    return refuse("cannot verify a string the shell may evaluate as code", ctx.fragment);
            }
            return false;
        }
        if (name == "sort") return judge_option_writes(args, ctx, "sort -o", {"-o"}, {"--output"});
        if (name == "sponge") {
            for (std::size_t i = 1; i < args.size(); ++i)
                if (!(args[i]->literal() && args[i]->literal()->starts_with("-")) &&
                    judge_write_target(args[i], ctx, "sponge"))
                    return true;
            return false;
        }
        if (name == "socat") return judge_socat(args, ctx);
        if (name == "man") {
            for (std::size_t i = 1; i + 1 < args.size(); ++i)
                if (args[i]->literal() && (*args[i]->literal() == "-P" || *args[i]->literal() == "--pager" ||
                                           *args[i]->literal() == "-H" || *args[i]->literal() == "--html"))
                    return judge_code_word(*args[i + 1], ctx, "man -P");
            return false;
        }
        if (name == "zip") {
            for (std::size_t i = 1; i + 1 < args.size(); ++i)
                if (args[i]->literal() && (*args[i]->literal() == "-TT" || *args[i]->literal() == "--unzip-command"))
                    return judge_code_word(*args[i + 1], ctx, "zip -TT");
            return false;
        }
        if (name == "apt-get" || name == "apt" || name == "dpkg" || name == "yum" || name == "dnf") {
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                std::optional<std::string> option;
                if (lit && (*lit == "-o" || *lit == "--option") && i + 1 < args.size()) option = args[i + 1]->literal();
                else if (lit && lit->starts_with("-o") && lit->size() > 2) option = lit->substr(2);
                if (option && (option->find("Invoke") != std::string::npos || option->find("::Pre") != std::string::npos ||
                               option->find("::Post") != std::string::npos)) {
                    auto eq = option->find('=');
                    if (eq == std::string::npos) return refuse("cannot verify a package manager hook", ctx.fragment);
                    if (judge_script(std::string_view(*option).substr(eq + 1), ctx.level + 1, *ctx.cwds, ctx.fragment,
                                     untrusted_stdin(ctx)))
                        return true;
                }
            }
            return false;
        }
        if (name == "make" || name == "gmake") {
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                if (lit && (lit->starts_with("--eval") || *lit == "-E"))
                    return refuse("cannot verify make --eval", ctx.fragment);
            }
            return false;
        }
        if (name == "r") return judge_interpreter("rscript", args, ctx);
        if (name == "clickhouse" && args.size() > 1 && args[1]->literal() == std::optional<std::string>("client")) {
            Args rest(args.begin() + 1, args.end());
            return judge_sql_client(rest, ctx);
        }
        if (name == "clickhouse-client") return judge_sql_client(args, ctx);
        if (name == "curl") return judge_option_writes(args, ctx, "curl -o", {"-o", "--output"}, {"--output"});
        if (name == "wget") return judge_option_writes(args, ctx, "wget -O", {"-O", "--output-document"}, {"--output-document"});
        if (name == "gzip" || name == "bzip2" || name == "xz" || name == "zstd" || name == "lz4" || name == "lzma" ||
            name == "gunzip" || name == "unxz" || name == "bunzip2") {
            if (has_literal(args, {"-c", "--stdout", "-l", "--list", "-t", "--test"})) return false;
            OperandRule rule{name, false, "compression of a system file (" + std::string(name) + ")"};
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                if (lit && lit->starts_with("-")) continue;
                if (judge_destructive_operand(*args[i], rule, ctx)) return true;
            }
            return false;
        }
        if (name == "fallocate" || name == "scp") {
            // fallocate ... FILE; scp ... DEST: the last word, unless an option or host:path.
            if (args.size() < 2) return false;
            const Word* last = args.back();
            auto lit = last->literal();
            if (lit && (lit->starts_with("-") || (name == "scp" && lit->find(':') != std::string::npos)))
                return false;
            return judge_write_target(last, ctx, name, name == "scp");
        }
        if (name == "wipe") return refuse("disk formatting, partitioning or wiping (wipe)", ctx.fragment);
        if (name == "dcfldd") return judge_dd(args, ctx);
        if (name == "ddrescue") {
            std::vector<const Word*> positional;
            for (std::size_t i = 1; i < args.size(); ++i)
                if (!(args[i]->literal() && args[i]->literal()->starts_with("-"))) positional.push_back(args[i]);
            if (positional.size() >= 2 && judge_write_target(positional[1], ctx, "ddrescue")) return true;
            return false;
        }
        if (name == "dropdb") return refuse("SQL DROP TABLE, DROP DATABASE or TRUNCATE TABLE (dropdb)", ctx.fragment);
        if (name == "mysqladmin" && has_literal(args, {"drop"}))
            return refuse("SQL DROP TABLE, DROP DATABASE or TRUNCATE TABLE (mysqladmin drop)", ctx.fragment);
        if (name == "mysql" || name == "mariadb" || name == "psql" || name == "sqlite3" ||
            name == "clickhouse-client" || name == "cqlsh" || name == "mongo" || name == "mongosh")
            return judge_sql_client(args, ctx);
        if (name == "crontab") {
            bool file = false;
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                if (lit && (*lit == "-l" || *lit == "-r" || *lit == "-e" || *lit == "-i")) return false;
                if (lit && *lit == "-u") { ++i; continue; }
                if (lit && *lit != "-") {
                    file = true;
                    if (runs_written_file(*lit, ctx)) return true;
                }
            }
            if (!file && (ctx.stdin_pipe || ctx.stdin_doc))
                return refuse("cannot verify a crontab read from stdin", ctx.fragment);
            return false;
        }
        if (name == "tar" || name == "bsdtar" || name == "gtar") return judge_tar(args, ctx);
        if (name == "git") return judge_git(args, ctx);
        if (name == "docker" || name == "podman" || name == "nerdctl") return judge_container(args, ctx);
        if (name == "let") {
            for (std::size_t i = 1; i < args.size(); ++i)
                if (holds_code(*args[i])) return refuse("cannot verify a string the shell may evaluate as code", ctx.fragment);
            return false;
        }
        if (name == "export" || name == "declare" || name == "typeset" || name == "local" || name == "readonly") {
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                if (lit && is_code_variable(*lit))
                    return refuse("cannot verify code passed through the environment", ctx.fragment);
                if (lit)
                    if (auto code = command_variable_value(*lit);
                        code && judge_script(*code, ctx.level + 1, *ctx.cwds, ctx.fragment, true))
                        return true;
                // declare x='a[$(...)]' is code the moment x is used in arithmetic.
                if (holds_code(*args[i]))
                    return refuse("cannot verify a string the shell may evaluate as code", ctx.fragment);
            }
            return false;
        }
        if (contains(shells, name)) return judge_shell(lowered, args, ctx);
        if (name == "eval")
            return judge_joined(args, args.size() > 1 && args[1]->literal() == std::optional<std::string>("--") ? 2 : 1,
                                ctx, "eval");
        if (name == "source" || name == ".") return judge_source(args, ctx);
        if (name == "trap") return judge_trap(args, ctx);
        if (name == "alias") return judge_alias(args, ctx);
        if (name == "at" || name == "batch") return judge_at(args, ctx);
        if (name == "ssh") return judge_ssh(args, ctx);
        if (contains(awks, name)) return judge_awk(lowered, args, ctx);
        for (auto i : interpreters)
            if (name.starts_with(i)) return judge_interpreter(lowered, args, ctx);
        return false;
    }

    static bool has_literal(const Args& args, std::initializer_list<std::string_view> values) {
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) continue;
            for (auto v : values)
                if (*lit == v) return true;
        }
        return false;
    }

    // Joins words [from, end) into one command line; nullopt when one is not literal.
    static std::optional<std::string> join_literal(const Args& args, std::size_t from) {
        std::string out;
        for (std::size_t i = from; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) return std::nullopt;
            if (i > from) out += ' ';
            out += *lit;
        }
        return out;
    }

    bool judge_joined(const Args& args, std::size_t from, const Ctx& ctx, std::string_view who) {
        auto text = join_literal(args, from);
        if (!text) return refuse("cannot verify code reaching " + std::string(who) + " from an expansion", ctx.fragment);
        return judge_script(*text, ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx));
    }

    bool judge_code_word(const Word& w, const Ctx& ctx, std::string_view who) {
        auto text = w.literal();
        if (!text) return refuse("cannot verify code reaching " + std::string(who) + " from an expansion", ctx.fragment);
        return judge_script(*text, ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx));
    }

    bool judge_wrapper(const WrapperSpec& spec, const Args& args, const Ctx& ctx) {
        // Wrappers inside wrappers: a real command line has a handful.
        if (++wrapper_depth_ > 16) return refuse("cannot verify a command wrapped this many times", ctx.fragment);
        struct Leave {
            int& depth;
            ~Leave() { --depth; }
        } leave{wrapper_depth_};
        // script [options] [FILE]: the typescript is written to FILE.
        if (spec.name == "script") {
            for (std::size_t k = 1; k < args.size(); ++k) {
                auto lit = args[k]->literal();
                if (lit && (*lit == "-c" || *lit == "--command" || *lit == "-T" || *lit == "-I" || *lit == "-O" ||
                            *lit == "-B" || *lit == "-E" || *lit == "-t")) {
                    ++k;
                    continue;
                }
                if (lit && lit->starts_with("-")) continue;
                if (judge_write_target(args[k], ctx, "script")) return true;
            }
        }
        // su/runuser/flock/script -c may come after the user or file: look for it anywhere.
        if (spec.script_option) {
            const std::string short_opt = std::string("-") + spec.script_option;
            for (std::size_t k = 1; k < args.size(); ++k) {
                auto lit = args[k]->literal();
                if (!lit) continue;
                if (*lit == short_opt || (!spec.script_long.empty() && *lit == "--" + std::string(spec.script_long))) {
                    if (k + 1 < args.size()) return judge_code_word(*args[k + 1], ctx, spec.name);
                    return false;
                }
                if ((spec.name == "su" || spec.name == "runuser") &&
                    (*lit == "--session-command" || lit->starts_with("--session-command="))) {
                    if (lit->size() > 17) return judge_script(std::string_view(*lit).substr(18), ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx));
                    if (k + 1 < args.size()) return judge_code_word(*args[k + 1], ctx, spec.name);
                    return false;
                }
                if (!spec.script_long.empty() && lit->starts_with("--" + std::string(spec.script_long) + "="))
                    return judge_script(std::string_view(*lit).substr(spec.script_long.size() + 3), ctx.level + 1,
                                        *ctx.cwds, ctx.fragment, untrusted_stdin(ctx));
            }
        }
        int positionals = spec.positionals;
        bool join = spec.join_always;
        bool unknown_option = false;  // an option whose argument, if any, is not known here
        bool moves_cwd = spec.name == "chroot" || spec.name == "systemd-run" || spec.name == "run0";
        std::optional<std::string> split_string;  // env -S
        std::size_t i = 1;
        for (; i < args.size(); ++i) {
            const Word& w = *args[i];
            auto lit = w.literal();
            if (!lit) break;
            if (spec.assignments && lit->starts_with("BASH_FUNC_"))
                return refuse("cannot verify code passed through the environment", ctx.fragment);
            if (spec.assignments && looks_like_assignment(*lit)) {
                if (is_code_variable(*lit))
                    return refuse("cannot verify code passed through the environment", ctx.fragment);
                if (auto code = command_variable_value(*lit);
                    code && judge_script(*code, ctx.level + 1, *ctx.cwds, ctx.fragment, true))
                    return true;
                continue;
            }
            if (*lit == "--") {
                ++i;
                break;
            }
            if (*lit == "-" && (spec.name == "su" || spec.name == "env")) continue;
            if (lit->size() > 1 && (*lit)[0] == '-') {
                if (lit->starts_with("--")) {
                    std::string_view opt = std::string_view(*lit).substr(2);
                    auto eq = opt.find('=');
                    std::string_view key = opt.substr(0, eq);
                    bool has_value = eq != std::string_view::npos;
                    if ((!spec.script_long.empty() && key == spec.script_long) ||
                        (spec.name == "env" && key == "split-string")) {
                        const Word* code = has_value ? nullptr : (i + 1 < args.size() ? args[i + 1] : nullptr);
                        if (!has_value) ++i;
                        if (spec.name == "env") {
                            auto s = has_value ? std::optional<std::string>(std::string(opt.substr(eq + 1)))
                                               : (code ? code->literal() : std::nullopt);
                            if (!s || s->find('\\') != std::string::npos)
                                return refuse("cannot verify code reaching env -S (an expansion or an escape)", ctx.fragment);
                            split_string = *s;
                            continue;
                        }
                        if (has_value) {
                            if (judge_script(opt.substr(eq + 1), ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx))) return true;
                        } else if (code && judge_code_word(*code, ctx, spec.name)) {
                            return true;
                        }
                        continue;
                    }
                    if (spec.name == "watch" && key == "exec") join = false;
                    if (key == "chdir" || key == "wd" || key == "working-directory" || key == "root") moves_cwd = true;
                    if (!has_value && in_csv(spec.long_with_arg, key)) ++i;
                    else if (!has_value) unknown_option = true;
                    continue;
                }
                bool stop_cluster = false;
                for (std::size_t j = 1; j < lit->size() && !stop_cluster; ++j) {
                    char c = (*lit)[j];
                    std::string_view rest = std::string_view(*lit).substr(j + 1);
                    if (spec.no_command.find(c) != std::string_view::npos) return false;
                    if (spec.join_options.find(c) != std::string_view::npos) join = true;
                    if (spec.name == "watch" && c == 'x') join = false;
                    if (spec.name == "env" && c == 'S') {
                        std::optional<std::string> s;
                        if (!rest.empty()) s = std::string(rest);
                        else if (i + 1 < args.size()) s = args[++i]->literal();
                        if (!s || s->find('\\') != std::string::npos)
                            return refuse("cannot verify code reaching env -S (an expansion or an escape)", ctx.fragment);
                        split_string = *s;
                        stop_cluster = true;
                    } else if (spec.script_option && c == spec.script_option) {
                        if (!rest.empty()) {
                            if (judge_script(rest, ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx))) return true;
                        } else if (i + 1 < args.size()) {
                            if (judge_code_word(*args[++i], ctx, spec.name)) return true;
                        }
                        stop_cluster = true;
                    } else if (spec.short_with_arg.find(c) != std::string_view::npos) {
                        // strace -o FILE / ltrace -o FILE / time -o FILE write a file.
                        if (c == 'o' && (spec.name == "strace" || spec.name == "ltrace" || spec.name == "time")) {
                            if (rest.empty() && i + 1 < args.size()) {
                                if (judge_write_target(args[i + 1], ctx, std::string(spec.name) + " -o")) return true;
                            } else if (!rest.empty()) {
                                Word& file = synthetic_.emplace_back();
                                file.parts.push_back(shell::WordPart{PartKind::literal, std::string(rest), true, {}});
                                if (judge_write_target(&file, ctx, std::string(spec.name) + " -o")) return true;
                            }
                        }
                        if (rest.empty()) ++i;
                        stop_cluster = true;
                        if ((spec.name == "env" || spec.name == "sudo" || spec.name == "run0") && (c == 'C' || c == 'D'))
                            moves_cwd = true;
                        if (spec.name == "nsenter" && c == 'w') moves_cwd = true;
                    } else if (!std::isdigit(static_cast<unsigned char>(c)) &&
                               spec.join_options.find(c) == std::string_view::npos) {
                        unknown_option = true;
                    }
                }
                continue;
            }
            if (positionals > 0) {
                --positionals;
                continue;
            }
            break;
        }
        if (split_string) {
            auto rest = join_literal(args, i);
            if (!rest) return refuse("cannot verify code reaching env -S from an expansion", ctx.fragment);
            return judge_script(*split_string + " " + *rest, ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx));
        }
        if (i >= args.size()) {
            // sudo -s / sudo -i / doas -s / su / runuser without a command: a shell that reads
            // its standard input.
            if ((join && !spec.join_always) || spec.name == "su" || spec.name == "runuser")
                return judge_stdin_code(ctx, std::string(spec.name), true);
            if (spec.name == "parallel")
                return refuse("cannot verify commands that parallel reads from its input", ctx.fragment);
            return false;
        }
        if (spec.name == "parallel" && args[i]->literal() && args[i]->literal()->starts_with(":::"))
            return refuse("cannot verify commands that parallel reads from its arguments", ctx.fragment);
        if (join) {
            if (unknown_option && i + 1 < args.size() && judge_joined(args, i + 1, ctx, spec.name)) return true;
            return judge_joined(args, i, ctx, spec.name);
        }
        // GNU parallel runs its command line through a shell as well.
        if (spec.name == "parallel" && judge_joined(args, i, ctx, spec.name)) return true;
        Args inner(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
        Ctx inner_ctx = ctx;
        // A wrapper that changes the directory (env -C, sudo -D, chroot, systemd-run, nsenter -w):
        // relative words of the command resolve where it is not known.
        const Cwds moved{std::nullopt};
        if (moves_cwd) inner_ctx.cwds = &moved;
        // An option not known to take no argument: the command may start one word later.
        if (unknown_option && i + 1 < args.size()) {
            Args later(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
            if (later[0]->literal() && !later[0]->literal()->starts_with("-") && judge_argv(later, inner_ctx))
                return true;
        }
        inner_ctx.extra_operands = ctx.extra_operands || spec.extra_operands;
        if (spec.extra_operands) {
            // Only xargs' command sees stdin as operands; its own stdin is no longer the pipe.
            inner_ctx.stdin_pipe = false;
            auto inner_name = inner[0]->literal();
            std::string n = inner_name ? lower(basename_of(*inner_name)) : "";
            if (!inner_name || inner_name->empty() ||
                inner_name->find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./+-") !=
                    std::string::npos)
                return refuse("cannot verify a command named by " + std::string(spec.name), ctx.fragment);
            bool interpreter = contains(shells, std::string_view(n)) || contains(awks, std::string_view(n)) ||
                               n == "eval" || n == "source" || n == ".";
            for (auto name : interpreters)
                if (n.starts_with(name)) interpreter = true;
            // Its arguments (and with -I, pieces of its code) come from stdin.
            if (interpreter)
                return refuse("cannot verify code reaching " + n + " from " + std::string(spec.name), ctx.fragment);
        }
        return judge_argv(inner, inner_ctx);
    }

    // The usual option syntax of the commands judged below: "--" ends the options, a word
    // starting with '-' before it is an option, the rest are operands.
    enum class ArgKind { end_of_options, option, operand };
    static ArgKind classify(const Word& w, bool& end_of_options) {
        auto lit = w.literal();
        if (end_of_options || !lit) return ArgKind::operand;
        if (*lit == "--") {
            end_of_options = true;
            return ArgKind::end_of_options;
        }
        return lit->size() > 1 && (*lit)[0] == '-' ? ArgKind::option : ArgKind::operand;
    }

    bool judge_rm(const Args& args, const Ctx& ctx) {
        bool recursive = false, end_of_options = false;
        std::vector<const Word*> operands;
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            const ArgKind kind = classify(*args[i], end_of_options);
            if (kind == ArgKind::end_of_options) continue;
            if (kind == ArgKind::option) {
                std::string opt = lower(*lit);
                if (opt.starts_with("--")) {
                    if (opt.size() >= 5 && std::string_view("--no-preserve-root").starts_with(opt))
                        return refuse("rm with --no-preserve-root", ctx.fragment);
                    if (opt.size() >= 3 && std::string_view("--recursive").starts_with(opt)) recursive = true;
                } else if (opt.find('r') != std::string::npos) {
                    recursive = true;
                }
                continue;
            }
            operands.push_back(args[i]);
        }
        if (ctx.extra_operands)
            return refuse("cannot verify operands that rm reads from stdin (xargs)", ctx.fragment);
        OperandRule rule{"rm", recursive,
                         recursive ? "recursive rm of a system path" : "removal of a system file"};
        for (const auto* w : operands)
            if (judge_destructive_operand(*w, rule, ctx)) return true;
        return false;
    }

    bool judge_find(const Args& args, const Ctx& ctx) {
        std::size_t i = 1;
        // Leading options: -H -L -P, -D debugopts, -Olevel.
        while (i < args.size()) {
            auto lit = args[i]->literal();
            if (!lit) break;
            if (*lit == "-H" || *lit == "-L" || *lit == "-P" || lit->starts_with("-O") || *lit == "--") {
                ++i;
            } else if (*lit == "-D") {
                i += 2;
            } else {
                break;
            }
        }
        std::vector<const Word*> starts;
        for (; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (lit && (lit->starts_with("-") || *lit == "(" || *lit == "!" || *lit == ")")) break;
            starts.push_back(args[i]);
        }
        Word dot;
        dot.parts.push_back(shell::WordPart{PartKind::literal, ".", false, {}});
        if (starts.empty()) starts.push_back(&dot);
        // A name filter makes -delete selective: "find /var/log -name '*.gz' -delete" is
        // routine; under /, /etc, /usr, /boot ... it is refused all the same.
        bool filtered = has_literal(args, {"-name", "-iname", "-path", "-ipath", "-regex", "-iregex", "-wholename"});
        for (; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) continue;
            if (*lit == "-delete") {
                OperandRule rule{"find -delete", true, "find -delete under a system path"};
                for (const auto* s : starts)
                    if (judge_find_start(*s, rule, ctx, filtered)) return true;
            } else if (*lit == "-exec" || *lit == "-execdir" || *lit == "-ok" || *lit == "-okdir") {
                std::size_t j = i + 1;
                std::vector<std::size_t> inner_idx;
                for (; j < args.size(); ++j) {
                    auto l = args[j]->literal();
                    if (l && (*l == ";" || *l == "+")) break;
                    inner_idx.push_back(j);
                }
                if (starts.size() * (inner_idx.size() + 1) > 256)
                    return refuse("cannot verify a find -exec this large", ctx.fragment);
                // -execdir runs in each match's own directory: relative words resolve there.
                Ctx inner_ctx = ctx;
                const Cwds unknown_dir{std::nullopt};
                if (*lit == "-execdir" || *lit == "-okdir") inner_ctx.cwds = &unknown_dir;
                if (!inner_idx.empty()) {
                    for (const auto* s : starts) {
                        auto base = path_text(*s);
                        if (!base || s->has_glob() || s->has_brace())
                            return refuse("cannot verify an expansion in a start path of find -exec", ctx.fragment);
                        Args inner;
                        for (auto k : inner_idx) {
                            auto l = args[k]->literal();
                            if (l && l->find("{}") != std::string::npos) {
                                // Every {} stands for a path found under the start path.
                                std::string b = *base;
                                while (b.size() > 1 && b.back() == '/') b.pop_back();
                                std::string found = (b == "/" ? "" : b) + "/*";
                                std::string text;
                                for (std::size_t at = 0; at < l->size();) {
                                    if (l->compare(at, 2, "{}") == 0) {
                                        text += found;
                                        at += 2;
                                    } else {
                                        text += (*l)[at++];
                                    }
                                }
                                Word& w = synthetic_.emplace_back();
                                w.parts.push_back(shell::WordPart{PartKind::literal, text, false, {}});
                                if (*l == "{}") confined_set_.insert(&w);
                                inner.push_back(&w);
                            } else {
                                inner.push_back(args[k]);
                            }
                        }
                        if (judge_argv(inner, inner_ctx)) return true;
                    }
                }
                i = j;
            } else if (*lit == "-fprint" || *lit == "-fprint0" || *lit == "-fls" || *lit == "-fprintf") {
                if (i + 1 < args.size() && judge_write_target(args[i + 1], ctx, "find -fprint")) return true;
            }
        }
        return false;
    }

    bool judge_find_start(const Word& start, const OperandRule& rule, const Ctx& ctx, bool filtered) {
        auto text = path_text(start);
        if (!text || start.has_brace() || start.has_glob())
            return refuse("cannot verify an expansion in a start path of find -delete", ctx.fragment);
        std::vector<std::string> paths;
        if (!resolve(*text, ctx, rule.tool, paths)) return true;
        for (const auto& p : paths) {
            if (is_critical_file(p + "/x")) return refuse(rule.rule, ctx.fragment);
            auto seg = segments(p);
            bool root_or_etc = seg.empty() || seg[0] == "etc" || seg[0] == "~" || seg[0] == "home" || seg[0] == "root";
            if (protected_for_recursion(p) && (!filtered || root_or_etc)) return refuse(rule.rule, ctx.fragment);
        }
        return false;
    }

    bool judge_chmod(const std::string& name, const Args& args, const Ctx& ctx) {
        bool recursive = false, have_first = false, end_of_options = false;
        bool reference = false;
        std::vector<const Word*> operands;
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            const ArgKind kind = classify(*args[i], end_of_options);
            if (kind == ArgKind::end_of_options) continue;
            if (kind == ArgKind::option) {
                if ((lit->size() >= 5 && std::string_view("--recursive").starts_with(*lit)) || *lit == "-R" ||
                    (name != "chmod" && lit->find('R') != std::string::npos && (*lit)[1] != '-')) {
                    recursive = true;
                    continue;
                }
                if (lit->starts_with("--reference")) reference = true;
                if (lit->starts_with("--")) continue;
                // chmod -x / chmod -w: a mode, not an option.
                if (name == "chmod" && !have_first &&
                    lit->find_first_not_of("-rwxXstugoa,=+01234567") == std::string::npos) {
                    have_first = true;
                    continue;
                }
                if (lit->find('R') != std::string::npos) recursive = true;
                if ((name == "setfacl") && (lit->find('m') != std::string::npos || lit->find('x') != std::string::npos ||
                                            lit->find('M') != std::string::npos || lit->find('X') != std::string::npos))
                    ++i;  // setfacl -m acl
                continue;
            }
            if (!have_first && !reference && name != "setfacl") {
                have_first = true;  // the mode or owner
                continue;
            }
            operands.push_back(args[i]);
        }
        if (ctx.extra_operands && recursive)
            return refuse("cannot verify operands that " + name + " reads from stdin (xargs)", ctx.fragment);
        OperandRule rule{name, recursive,
                         recursive ? "recursive chmod/chown of a system path" : "chmod/chown of a system path"};
        for (const auto* w : operands) {
            if (!recursive && w->literal() && !w->has_glob() && !w->has_brace()) {
                // A single file: only "/" and critical files and directories matter.
                std::vector<std::string> paths;
                if (!resolve(*path_text(*w), ctx, name, paths)) return true;
                // chmod 600 ~/.ssh/authorized_keys is routine: the login's own files are not
                // system files for a mode change.
                for (const auto& p : paths)
                    if (is_critical_file(p) && !p.starts_with("~/") && !(p.starts_with("/home/") && p.find("/.ssh") != std::string::npos))
                        return refuse(rule.rule, ctx.fragment);
                continue;
            }
            if (judge_destructive_operand(*w, rule, ctx)) return true;
        }
        return false;
    }

    bool judge_dd(const Args& args, const Ctx& ctx) {
        for (std::size_t i = 1; i < args.size(); ++i) {
            const Word& w = *args[i];
            // of=PATH, however quoted: the literal prefix says which operand it is.
            std::string prefix;
            for (const auto& p : w.parts) {
                if (p.kind != PartKind::literal) break;
                prefix += p.text;
            }
            if (!lower(prefix).starts_with("of=")) continue;
            auto lit = w.literal();
            if (!lit) return refuse("cannot verify an expansion in dd's of=", ctx.fragment);
            Word target;
            target.parts.push_back(shell::WordPart{PartKind::literal, lower(lit->substr(3)), true, {}});
            if (judge_write_target(&target, ctx, "dd of=")) return true;
        }
        return false;
    }

    // Commands whose operands are all files they write (tee, truncate).
    bool judge_plain_writes(const Args& args, const Ctx& ctx, std::string_view what,
                            std::string_view short_with_arg) {
        bool end_of_options = false;
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            const ArgKind kind = classify(*args[i], end_of_options);
            if (kind == ArgKind::end_of_options) continue;
            if (kind == ArgKind::option) {
                if (!lit->starts_with("--") && lit->size() == 2 &&
                    short_with_arg.find((*lit)[1]) != std::string_view::npos)
                    ++i;
                else if (lit->starts_with("--") && lit->find('=') == std::string::npos &&
                         (*lit == "--size" || *lit == "--reference"))
                    ++i;
                continue;
            }
            if (judge_write_target(args[i], ctx, what)) return true;
        }
        if (ctx.extra_operands && what == "truncate")
            return refuse("cannot verify operands that truncate reads from stdin (xargs)", ctx.fragment);
        return false;
    }

    bool judge_copy(const std::string& name, const Args& args, const Ctx& ctx) {
        std::vector<const Word*> operands;
        const Word* target_dir = nullptr;
        bool end_of_options = false;
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            const ArgKind kind = classify(*args[i], end_of_options);
            if (kind == ArgKind::end_of_options) continue;
            if (kind == ArgKind::option) {
                if (lit->starts_with("--target-directory")) {
                    auto eq = lit->find('=');
                    if (eq == std::string::npos && i + 1 < args.size()) target_dir = args[++i];
                    else {
                        Word& w = synthetic_.emplace_back();
                        w.parts.push_back(shell::WordPart{PartKind::literal, lit->substr(eq + 1), true, {}});
                        target_dir = &w;
                    }
                    continue;
                }
                if (lit->starts_with("--")) {
                    if ((*lit == "--suffix" || *lit == "--mode" || *lit == "--owner" || *lit == "--group") &&
                        i + 1 < args.size())
                        ++i;
                    continue;
                }
                for (std::size_t j = 1; j < lit->size(); ++j) {
                    char c = (*lit)[j];
                    bool takes = c == 't' || c == 'S' || (name == "install" && (c == 'm' || c == 'o' || c == 'g'));
                    if (!takes) continue;
                    std::string rest = lit->substr(j + 1);
                    if (c == 't') {
                        if (rest.empty() && i + 1 < args.size()) target_dir = args[++i];
                        else if (!rest.empty()) {
                            Word& w = synthetic_.emplace_back();
                            w.parts.push_back(shell::WordPart{PartKind::literal, rest, true, {}});
                            target_dir = &w;
                        }
                    } else if (rest.empty()) {
                        ++i;
                    }
                    break;
                }
                continue;
            }
            operands.push_back(args[i]);
        }
        std::vector<const Word*> sources = operands;
        const Word* destination = target_dir;
        if (!destination && !sources.empty() && !(name == "ln" && sources.size() == 1)) {
            destination = sources.back();
            sources.pop_back();
        }
        if (ctx.extra_operands && destination == nullptr)
            return refuse("cannot verify operands that " + name + " reads from stdin (xargs)", ctx.fragment);
        if (destination && judge_write_target(destination, ctx, name + " destination", true)) return true;
        if (name == "ln" && destination) {
            // A link made here and used later in the same command hides where it points.
            if (auto t = path_text(*destination))
                for (const auto& cwd : *ctx.cwds)
                    if (auto p = normalize(*t, cwd); p && aliases_.size() < 64) aliases_.push_back(*p);
        }
        if (name == "mv") {
            OperandRule rule{"mv", true, "move of a system path"};
            for (const auto* s : sources)
                if (judge_destructive_operand(*s, rule, ctx)) return true;
        }
        return false;
    }

    bool judge_rsync(const Args& args, const Ctx& ctx) {
        bool deletes = false, removes_sources = false;
        std::vector<const Word*> operands;
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (lit && lit->starts_with("--")) {
                if (lit->starts_with("--del")) deletes = true;
                if (lit->starts_with("--remove-source-files")) removes_sources = true;
                if (lit->starts_with("--rsh=") &&
                    judge_script(std::string_view(*lit).substr(6), ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx)))
                    return true;
                if (*lit == "--rsh" && i + 1 < args.size() && judge_code_word(*args[i + 1], ctx, "rsync --rsh"))
                    return true;
                if ((*lit == "--exclude" || *lit == "--include" || *lit == "--rsh" || *lit == "--filter" ||
                     *lit == "--rsync-path" || *lit == "--temp-dir" || *lit == "--log-file" ||
                     *lit == "--exclude-from" || *lit == "--include-from" || *lit == "--files-from" ||
                     *lit == "--password-file" || *lit == "--chmod" || *lit == "--chown") &&
                    i + 1 < args.size())
                    ++i;
                continue;
            }
            if (lit && lit->size() > 1 && (*lit)[0] == '-') {
                for (std::size_t j = 1; j < lit->size(); ++j)
                    if (std::string_view("efBTM").find((*lit)[j]) != std::string_view::npos) {
                        // -e: the remote shell, a command line run here.
                        if ((*lit)[j] == 'e') {
                            if (j + 1 < lit->size()) {
                                if (judge_script(std::string_view(*lit).substr(j + 1), ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx))) return true;
                            } else if (i + 1 < args.size() && judge_code_word(*args[i + 1], ctx, "rsync -e")) {
                                return true;
                            }
                        }
                        if (j + 1 == lit->size()) ++i;
                        break;
                    }
                continue;
            }
            operands.push_back(args[i]);
        }
        if (operands.size() < 2) return false;
        const Word* dest = operands.back();
        if (removes_sources) {
            OperandRule rule{"rsync --remove-source-files", true, "removal of a system path (rsync --remove-source-files)"};
            for (std::size_t k = 0; k + 1 < operands.size(); ++k)
                if (judge_destructive_operand(*operands[k], rule, ctx)) return true;
        }
        auto lit = dest->literal();
        if (lit && lit->find(':') != std::string::npos) {
            // host:/path may be this very host: --delete onto a system path is refused anyway.
            std::string path = lit->substr(lit->find(':') + 1);
            if (deletes && path.starts_with("/")) {
                auto p = normalize(path, std::nullopt);
                if (!p || protected_for_recursion(*p) || is_critical_file(*p + "/x"))
                    return refuse("rsync --delete onto a system path", ctx.fragment);
            }
            return false;
        }
        if (deletes) {
            OperandRule rule{"rsync --delete", true, "rsync --delete onto a system path"};
            if (judge_destructive_operand(*dest, rule, ctx)) return true;
        }
        return judge_write_target(dest, ctx, "rsync destination", true);
    }

    bool judge_sed(const Args& args, const Ctx& ctx) {
        bool in_place = false, script_given = false, script_seen = false;
        std::vector<const Word*> files;
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (lit && lit->size() > 1 && (*lit)[0] == '-') {
                if (lit->starts_with("--in-place")) in_place = true;
                else if (*lit == "--expression" || *lit == "--file") { script_given = true; ++i; }
                else if (lit->starts_with("--expression=") || lit->starts_with("--file=")) script_given = true;
                else if (!lit->starts_with("--")) {
                    for (std::size_t j = 1; j < lit->size(); ++j) {
                        char c = (*lit)[j];
                        if (c == 'i') { in_place = true; break; }  // -i[SUFFIX]
                        if (c == 'e' || c == 'f' || c == 'l') {
                            if (c != 'l') script_given = true;
                            if (j + 1 == lit->size()) ++i;
                            break;
                        }
                    }
                }
                continue;
            }
            if (!script_given && !script_seen) {
                script_seen = true;
                continue;
            }
            files.push_back(args[i]);
        }
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (lit && sed_script_executes(*lit))
                return refuse("cannot verify a sed script that runs commands or writes files (e, w)", ctx.fragment);
        }
        if (!in_place) return false;
        for (const auto* f : files)
            if (judge_write_target(f, ctx, "sed -i")) return true;
        return false;
    }

    bool judge_shred(const Args& args, const Ctx& ctx) {
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (lit && lit->size() > 1 && (*lit)[0] == '-') {
                if ((*lit == "-n" || *lit == "-s") && i + 1 < args.size()) ++i;
                continue;
            }
            if (!lit || args[i]->has_glob() || args[i]->has_brace())
                return refuse("cannot verify an expansion in an operand of shred", ctx.fragment);
            std::vector<std::string> paths;
            if (!resolve(*path_text(*args[i]), ctx, "shred", paths)) return true;
            for (const auto& p : paths) {
                if (device_kind(p) == DeviceKind::block || device_kind(p) == DeviceKind::other)
                    return refuse("shred of a device", ctx.fragment);
                if (is_critical_file(p) || protected_for_recursion(p))
                    return refuse("shred of a system file", ctx.fragment);
            }
        }
        if (ctx.extra_operands) return refuse("cannot verify operands that shred reads from stdin (xargs)", ctx.fragment);
        return false;
    }

    bool judge_disk_tool(const std::string& name, const Args& args, const Ctx& ctx) {
        auto only_lists = [&](std::initializer_list<std::string_view> listing) {
            return has_literal(args, listing);
        };
        std::string rule = "disk formatting, partitioning or wiping (" + name + ")";
        if (name == "fdisk") return only_lists({"-l", "--list", "-V", "--version", "-h", "--help"}) ? false : refuse(rule, ctx.fragment);
        if (name == "sfdisk") {
            auto first = args.size() > 1 ? args[1]->literal() : std::nullopt;
            static const auto ro = std::to_array<std::string_view>({"-l", "--list", "-d", "--dump", "-J", "--json", "-s", "--show-size", "-V", "--verify", "--version", "-h", "--help", "-g"});
            return first && contains(ro, std::string_view(*first)) ? false : refuse(rule, ctx.fragment);
        }
        if (name == "parted") {
            if (only_lists({"-l", "--list", "-v", "--version", "-h", "--help"})) return false;
            static const auto ro = std::to_array<std::string_view>({"print", "unit", "s", "b", "kb", "mb", "gb", "tb", "%", "cyl", "chs", "compact", "free", "list", "all", "help"});
            bool device_seen = false;
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                if (!lit) return refuse(rule, ctx.fragment);
                if (lit->starts_with("-")) continue;
                if (!device_seen) {
                    device_seen = true;
                    continue;
                }
                if (!contains(ro, std::string_view(lower(*lit)))) return refuse(rule, ctx.fragment);
            }
            return false;
        }
        if (name == "badblocks") {
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                if (!lit) return refuse(rule, ctx.fragment);
                if (lit->starts_with("-") && !lit->starts_with("--") &&
                    (lit->find('w') != std::string::npos || lit->find('n') != std::string::npos))
                    return refuse(rule, ctx.fragment);
            }
            return false;
        }
        if (name == "cryptsetup")
            return only_lists({"luksFormat", "erase", "luksErase", "format", "reencrypt", "luksKillSlot", "luksRemoveKey"}) ? refuse(rule, ctx.fragment) : false;
        if (name == "zpool") return only_lists({"destroy", "labelclear", "create"}) ? refuse(rule, ctx.fragment) : false;
        if (name == "zfs") {
            // Destroying a snapshot (pool/fs@snap) is routine; a dataset, or a rollback, is not.
            if (has_literal(args, {"rollback"})) return refuse(rule, ctx.fragment);
            if (!has_literal(args, {"destroy"})) return false;
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                if (!lit) return refuse(rule, ctx.fragment);
                if (*lit == "destroy" || lit->starts_with("-")) continue;
                if (lit->find('@') == std::string::npos) return refuse(rule, ctx.fragment);
            }
            return false;
        }
        if (name == "nvme") return only_lists({"format", "sanitize", "delete-ns"}) ? refuse(rule, ctx.fragment) : false;
        if (name == "mdadm")
            return only_lists({"--zero-superblock", "--create", "-C", "--remove", "--fail", "-f", "-r", "--stop", "-S"})
                       ? refuse(rule, ctx.fragment) : false;
        if (name == "dmsetup") return only_lists({"remove", "remove_all", "wipe_table", "clear"}) ? refuse(rule, ctx.fragment) : false;
        if (name == "hdparm") {
            for (std::size_t i = 1; i < args.size(); ++i) {
                auto lit = args[i]->literal();
                if (lit && (lit->starts_with("--security-erase") || lit->starts_with("--trim") ||
                            lit->starts_with("--make-bad-sector") || *lit == "--write-sector" ||
                            lit->starts_with("--fwdownload")))
                    return refuse(rule, ctx.fragment);
            }
            return false;
        }
        return refuse(rule, ctx.fragment);  // lvremove, vgremove, pvremove
    }

    static std::optional<long> pid_value(std::string_view s) {
        bool negative = s.starts_with("-");
        if (negative) s.remove_prefix(1);
        if (s.empty() || s.size() > 12 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
            return std::nullopt;
        long v = std::stol(std::string(s));
        return negative ? -v : v;
    }

    bool judge_kill(const Args& args, const Ctx& ctx) {
        bool signal_seen = false, end_of_options = false;
        std::string signal = "TERM";
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) continue;
            if (!end_of_options && *lit == "--") {
                end_of_options = true;
                continue;
            }
            if (!end_of_options && !signal_seen && lit->size() > 1 && (*lit)[0] == '-') {
                if (*lit == "-l" || *lit == "-L" || *lit == "--list") return false;
                if ((*lit == "-s" || *lit == "-n" || *lit == "--signal") && i + 1 < args.size()) {
                    signal = args[i + 1]->literal().value_or("?");
                    ++i;
                } else {
                    signal = lit->substr(1);
                }
                signal_seen = true;
                continue;
            }
            auto pid = pid_value(*lit);
            std::string sig = lower(signal);
            if (sig.starts_with("sig")) sig = sig.substr(3);
            if (pid && *pid == -1 && sig != "0") return refuse("kill of every process (kill -1)", ctx.fragment);
            if (pid && *pid == 1 && (sig == "9" || sig == "kill" || sig == "term" || sig == "15"))
                return refuse("kill of PID 1", ctx.fragment);
        }
        return false;
    }

    // pkill/killall: every process of root (no pattern), or a pattern that matches everything.
    bool judge_pkill(std::string_view name, const Args& args, const Ctx& ctx) {
        bool root = false, pattern = false, match_all = false;
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) {
                pattern = true;
                continue;
            }
            std::optional<std::string> users;
            if ((*lit == "-u" || *lit == "-U" || *lit == "--euid" || *lit == "--uid" || *lit == "--user") && i + 1 < args.size())
                users = args[++i]->literal();
            else if (lit->starts_with("--user=") || lit->starts_with("--euid=") || lit->starts_with("--uid="))
                users = lit->substr(lit->find('=') + 1);
            else if (lit->starts_with("-u") && lit->size() > 2 && (*lit)[2] != '-')
                users = lit->substr(2);
            if (users) {
                std::string list = "," + *users + ",";
                if (list.find(",root,") != std::string::npos || list.find(",0,") != std::string::npos) root = true;
                continue;
            }
            if (lit->starts_with("-")) {
                if (*lit == "-s" || *lit == "-g" || *lit == "-G" || *lit == "-P" || *lit == "-t" || *lit == "-F" ||
                    *lit == "--signal" || *lit == "-o" || *lit == "-y")
                    ++i;
                continue;
            }
            pattern = true;
            if (*lit == "." || *lit == ".*" || *lit == "^" || *lit == "") match_all = true;
        }
        if ((root && !pattern) || match_all)
            return refuse("kill of every process of a user or pattern (" + std::string(name) + ")", ctx.fragment);
        return false;
    }

    // Code read from standard input by a shell or interpreter.
    bool judge_stdin_code(const Ctx& ctx, std::string_view who, bool shell_code) {
        if (ctx.stdin_doc) {
            const Redirect& r = *ctx.stdin_doc;
            std::optional<std::string> text;
            if (r.op == RedirectOp::heredoc) text = r.body;
            else text = r.target.literal();
            if (!text) return refuse("cannot verify code reaching " + std::string(who) + " from an expansion", ctx.fragment);
            if (shell_code) return judge_script(*text, ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx));
            return judge_inline_code(*text, who, ctx);
        }
        if (ctx.extra_operands)
            return refuse("cannot verify code reaching " + std::string(who) + " from xargs", ctx.fragment);
        if (ctx.stdin_file_word) {
            auto file = ctx.stdin_file_word->literal();
            if (file && runs_written_file(*file, ctx)) return true;
            if (file && is_stdin_path(*file)) return refuse("cannot verify code reaching " + std::string(who) + " from a file descriptor", ctx.fragment);
        }
        if (ctx.stdin_pipe)
            return refuse("cannot verify code reaching " + std::string(who) + " from a pipe", ctx.fragment);
        return false;
    }

    static bool is_plain_stdin(std::string_view raw) {
        return raw == "-" || raw == "/dev/stdin" || raw == "/dev/fd/0" || raw == "/proc/self/fd/0";
    }

    // Code read from a path: stdin itself, another descriptor (refused), or a file.
    bool judge_code_path(std::string_view path, const Ctx& ctx, std::string_view who, bool shell_code) {
        if (is_stdin_path(path)) {
            if (!is_plain_stdin(path))
                return refuse("cannot verify code reaching " + std::string(who) + " from a file descriptor", ctx.fragment);
            return judge_stdin_code(ctx, who, shell_code);
        }
        return runs_written_file(path, ctx);  // a script file on the node: not read from here
    }

    static bool is_stdin_path(std::string_view raw) {
        if (raw == "-") return true;
        if (!raw.starts_with("/")) return false;
        auto n = normalize(raw, std::nullopt);
        if (!n) return true;  // through a descriptor: /dev/fd/3/x, /proc/self/fd/...
        std::string_view p = *n;
        return p == "/dev/stdin" || p.starts_with("/dev/fd/") || p.starts_with("/proc/") ||
               p.starts_with("/dev/tcp/") || p.starts_with("/dev/udp/");
    }

    bool judge_shell(const std::string& name, const Args& args, const Ctx& ctx) {
        bool has_c = false, reads_stdin = false;
        std::size_t i = 1;
        for (; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) break;
            if (*lit == "--" || *lit == "-") {
                if (*lit == "-") reads_stdin = true;
                ++i;
                break;
            }
            if (lit->starts_with("--")) {
                if (*lit == "--rcfile" || *lit == "--init-file") ++i;
                continue;
            }
            if (lit->size() > 1 && ((*lit)[0] == '-' || (*lit)[0] == '+')) {
                for (std::size_t j = 1; j < lit->size(); ++j) {
                    char c = (*lit)[j];
                    if (c == 'c') has_c = true;
                    if (c == 's') reads_stdin = true;
                    if (c == 'o' || c == 'O') ++i;
                }
                continue;
            }
            break;
        }
        if (has_c) {
            if (i >= args.size()) return false;
            return judge_code_word(*args[i], ctx, name + " -c");
        }
        if (i < args.size() && !reads_stdin) {
            const Word& file = *args[i];
            auto lit = file.literal();
            if (!lit) {
                bool process = std::any_of(file.parts.begin(), file.parts.end(),
                                           [](const shell::WordPart& p) { return p.kind == PartKind::process_subst; });
                return refuse("cannot verify code reaching " + name + " from " +
                                  (process ? "a process substitution" : "an expansion"),
                              ctx.fragment);
            }
            return judge_code_path(*lit, ctx, name, true);
        }
        return judge_stdin_code(ctx, name, true);
    }

    bool judge_source(const Args& args, const Ctx& ctx) {
        std::size_t at = 1;
        if (at < args.size() && args[at]->literal() == std::optional<std::string>("--")) ++at;
        if (at >= args.size()) return false;
        const Word& file = *args[at];
        auto lit = file.literal();
        if (!lit) return refuse("cannot verify code reaching source from an expansion", ctx.fragment);
        return judge_code_path(*lit, ctx, "source", true);
    }

    bool judge_trap(const Args& args, const Ctx& ctx) {
        std::size_t i = 1;
        while (i < args.size()) {
            auto lit = args[i]->literal();
            if (lit && (*lit == "-p" || *lit == "-l" || *lit == "--")) {
                ++i;
                continue;
            }
            break;
        }
        if (i + 1 >= args.size()) return false;  // trap -p, or trap SIG (reset)
        return judge_code_word(*args[i], ctx, "trap");
    }

    bool judge_alias(const Args& args, const Ctx& ctx) {
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) return refuse("cannot verify code reaching alias from an expansion", ctx.fragment);
            if (lit->find('=') != std::string::npos)
                return refuse("cannot verify an alias definition (it changes what later words run)", ctx.fragment);
        }
        return false;
    }

    bool judge_at(const Args& args, const Ctx& ctx) {
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (lit && *lit == "-f" && i + 1 < args.size() && args[i + 1]->literal())
                return judge_code_path(*args[i + 1]->literal(), ctx, "at", true);
            if (lit && (*lit == "-f" || *lit == "-l" || *lit == "-d" || *lit == "-r" || *lit == "-c")) return false;
        }
        return judge_stdin_code(ctx, "at", true);
    }

    bool judge_ssh(const Args& args, const Ctx& ctx) {
        std::size_t i = 1;
        bool host_seen = false;
        for (; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) {
                if (!host_seen) {  // ssh "$host" ...: the host may vary, the code may not
                    host_seen = true;
                    continue;
                }
                break;
            }
            if (lit->size() > 1 && (*lit)[0] == '-') {
                // -o ProxyCommand=... and friends: command lines run here.
                std::optional<std::string> option;
                if (*lit == "-o" && i + 1 < args.size()) option = args[i + 1]->literal();
                else if (lit->starts_with("-o")) option = lit->substr(2);
                if (option) {
                    auto sep = option->find_first_of("= ");
                    std::string key = lower(option->substr(0, sep));
                    if ((key == "proxycommand" || key == "localcommand" || key == "knownhostscommand" ||
                         key == "remotecommand") && sep != std::string::npos &&
                        judge_script(std::string_view(*option).substr(sep + 1), ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx)))
                        return true;
                } else if (*lit == "-o") {
                    return refuse("cannot verify an expansion in an ssh option", ctx.fragment);
                }
                char last = lit->back();
                if (std::string_view("BbcDEeFIiJLlmOopQRSWw").find(last) != std::string_view::npos && lit->size() == 2)
                    ++i;
                continue;
            }
            if (!host_seen) {
                host_seen = true;
                continue;
            }
            break;
        }
        // Without a command the remote login shell reads standard input.
        if (i >= args.size()) return host_seen ? judge_stdin_code(ctx, "ssh", true) : false;
        return judge_joined(args, i, ctx, "ssh");
    }

    // mount: a bind or new filesystem over a path hides what the path holds afterwards; a
    // mount over a system path is refused, any mount point is remembered (aliases_).
    bool judge_mount(std::string_view name, const Args& args, const Ctx& ctx) {
        std::vector<const Word*> positional;
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (lit && lit->starts_with("-")) {
                if (*lit == "-t" || *lit == "-o" || *lit == "-L" || *lit == "-U" || *lit == "-O") ++i;
                continue;
            }
            positional.push_back(args[i]);
        }
        if (name == "umount") return false;
        if (positional.empty()) return false;
        const Word* target = positional.back();
        auto text = path_text(*target);
        if (!text) return refuse("cannot verify an expansion in a mount point", ctx.fragment);
        std::vector<std::string> paths;
        if (!resolve(*text, ctx, "mount", paths)) return true;
        for (const auto& p : paths) {
            if (protected_for_recursion(p) || is_critical_file(p)) return refuse("a mount over a system path", ctx.fragment);
            if (aliases_.size() < 64) aliases_.push_back(p);
        }
        return false;
    }

    // Commands that write the file named by one of their options (sort -o, curl -o, wget -O).
    bool judge_option_writes(const Args& args, const Ctx& ctx, std::string_view what,
                             std::initializer_list<std::string_view> options,
                             std::initializer_list<std::string_view> long_eq) {
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) continue;
            for (auto o : options)
                if (*lit == o && i + 1 < args.size() && judge_write_target(args[i + 1], ctx, what)) return true;
            for (auto o : long_eq)
                if (lit->starts_with(std::string(o) + "=")) {
                    Word& w = synthetic_.emplace_back();
                    w.parts.push_back(shell::WordPart{PartKind::literal, lit->substr(o.size() + 1), true, {}});
                    if (judge_write_target(&w, ctx, what)) return true;
                }
            // -oFILE attached (sort -o, curl -o)
            if (options.size() > 0 && lit->size() > 2 && lit->starts_with(*options.begin()) && !lit->starts_with("--")) {
                Word& w = synthetic_.emplace_back();
                w.parts.push_back(shell::WordPart{PartKind::literal, lit->substr(2), true, {}});
                if (judge_write_target(&w, ctx, what)) return true;
            }
        }
        return false;
    }

    // Programs that start another program given as an argument, in their own syntax.
    bool judge_launcher(std::string_view name, const Args& args, const Ctx& ctx) {
        auto from = [&](std::size_t k) {
            if (k >= args.size()) return false;
            Args rest(args.begin() + static_cast<std::ptrdiff_t>(k), args.end());
            return judge_argv(rest, ctx);
        };
        if (name.starts_with("ld-linux") || name.starts_with("ld.so")) {
            std::size_t k = 1;
            while (k < args.size() && args[k]->literal() && args[k]->literal()->starts_with("--")) {
                auto l = *args[k]->literal();
                k += (l == "--library-path" || l == "--preload" || l == "--audit" || l == "--argv0") ? 2 : 1;
            }
            return from(k);
        }
        if (name == "coreutils") {
            for (std::size_t k = 1; k < args.size(); ++k) {
                auto l = args[k]->literal();
                if (l && l->starts_with("--coreutils-prog=")) {
                    Word& w = synthetic_.emplace_back();
                    w.parts.push_back(shell::WordPart{PartKind::literal, l->substr(17), true, {}});
                    Args rest{&w};
                    for (std::size_t j = k + 1; j < args.size(); ++j) rest.push_back(args[j]);
                    return judge_argv(rest, ctx);
                }
            }
            return from(1);
        }
        if (name == "capsh") {
            for (std::size_t k = 1; k < args.size(); ++k)
                if (args[k]->literal() == std::optional<std::string>("--") || args[k]->literal() == std::optional<std::string>("==")) {
                    Word& w = synthetic_.emplace_back();
                    w.parts.push_back(shell::WordPart{PartKind::literal, "bash", true, {}});
                    Args rest{&w};
                    for (std::size_t j = k + 1; j < args.size(); ++j) rest.push_back(args[j]);
                    return judge_argv(rest, ctx);
                }
            return false;
        }
        if (name == "start-stop-daemon") {
            const Word* exe = nullptr;
            std::size_t dashdash = args.size();
            for (std::size_t k = 1; k < args.size(); ++k) {
                auto l = args[k]->literal();
                if (!l) continue;
                if (*l == "--") {
                    dashdash = k;
                    break;
                }
                if ((*l == "--exec" || *l == "-x" || *l == "--startas" || *l == "-a") && k + 1 < args.size())
                    exe = args[++k];
            }
            if (!exe) return false;
            Args rest{exe};
            for (std::size_t j = dashdash + 1; j < args.size(); ++j) rest.push_back(args[j]);
            return judge_argv(rest, ctx);
        }
        if (name == "ip") {
            // ip [-n NS] netns exec NS CMD ...
            for (std::size_t k = 1; k + 2 < args.size(); ++k)
                if (args[k]->literal() == std::optional<std::string>("netns") &&
                    args[k + 1]->literal() == std::optional<std::string>("exec"))
                    return from(k + 3);
            return false;
        }
        // tmux and screen: every literal argument after the options may be a command line.
        for (std::size_t k = 1; k < args.size(); ++k) {
            auto l = args[k]->literal();
            if (!l) return refuse("cannot verify an expansion given to " + std::string(name), ctx.fragment);
            if (l->starts_with("-")) continue;
            if (judge_script(*l, ctx.level + 1, *ctx.cwds, ctx.fragment, true)) return true;
        }
        return false;
    }

    // Editors and debuggers whose commands can run a shell (vim -c '!...', gdb -ex 'shell ...').
    bool judge_editor(std::string_view name, const Args& args, const Ctx& ctx) {
        for (std::size_t k = 1; k < args.size(); ++k) {
            auto l = args[k]->literal();
            if (!l) continue;
            if (*l == "-c" || *l == "-ex" || *l == "--eval-command" || *l == "-x" || *l == "--command" ||
                *l == "-S" || *l == "--cmd" || l->starts_with("+") || *l == "--eval" || *l == "-batch")
                return refuse("cannot verify commands given to " + std::string(name), ctx.fragment);
        }
        if (ctx.stdin_pipe || ctx.stdin_doc)
            return refuse("cannot verify commands " + std::string(name) + " reads from its input", ctx.fragment);
        return false;
    }

    // socat ADDRESS ADDRESS: EXEC:/SYSTEM: run commands, OPEN:/CREATE:/GOPEN: write files.
    bool judge_socat(const Args& args, const Ctx& ctx) {
        for (std::size_t k = 1; k < args.size(); ++k) {
            auto l = args[k]->literal();
            if (!l) return refuse("cannot verify an expansion in a socat address", ctx.fragment);
            std::string upper = *l;
            for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
            auto colon = l->find(':');
            std::string kind = colon == std::string::npos ? upper : upper.substr(0, colon);
            std::string rest = colon == std::string::npos ? "" : l->substr(colon + 1);
            rest = rest.substr(0, rest.find(','));
            if (kind == "EXEC" || kind == "SYSTEM") {
                if (judge_script(rest, ctx.level + 1, *ctx.cwds, ctx.fragment, true)) return true;
            } else if (kind == "OPEN" || kind == "CREATE" || kind == "GOPEN" || (kind.starts_with("/") && colon == std::string::npos)) {
                Word& w = synthetic_.emplace_back();
                w.parts.push_back(shell::WordPart{PartKind::literal, kind.starts_with("/") ? *l : rest, true, {}});
                if (judge_write_target(&w, ctx, "socat")) return true;
            }
        }
        return false;
    }

    bool judge_sql_client(const Args& args, const Ctx& ctx) {
        // Inside SQL text "truncate" needs no TABLE (MySQL's TRUNCATE t).
        auto destructive = [](std::string_view text) {
            if (has_sql_destruction(text)) return true;
            std::string t = lower(text);
            for (auto at = t.find("truncate"); at != std::string::npos; at = t.find("truncate", at + 1)) {
                if (at > 0 && is_word_char(t[at - 1])) continue;
                std::size_t p = at + 8;
                if (p >= t.size() || is_word_char(t[p])) continue;
                while (p < t.size() && is_space(t[p])) ++p;
                if (t.compare(p, 2, "/*") == 0) return true;
                if (p < t.size() && (is_word_char(t[p]) || t[p] == '"' || t[p] == '`' || t[p] == '\'')) return true;
            }
            return false;
        };
        // Shell escapes of the clients: psql \! and \o |cmd, mysql system / \!, sqlite3 .shell.
        auto escapes = [](std::string_view text) {
            std::string t = lower(text);
            return t.find("\\!") != std::string::npos || t.find(".shell") != std::string::npos ||
                   t.find(".system") != std::string::npos || t.find("system ") != std::string::npos ||
                   t.find("\\o |") != std::string::npos || t.find("\\o|") != std::string::npos ||
                   (t.find("copy") != std::string::npos && t.find("program") != std::string::npos);
        };
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (lit && destructive(*lit)) return refuse("SQL DROP TABLE, DROP DATABASE or TRUNCATE TABLE", ctx.fragment);
            if (lit && escapes(*lit)) return refuse("cannot verify a SQL client's shell escape", ctx.fragment);
        }
        if (ctx.stdin_doc) {
            const Redirect& r = *ctx.stdin_doc;
            auto text = r.op == RedirectOp::heredoc ? std::optional<std::string>(r.body) : r.target.literal();
            if (text && destructive(*text)) return refuse("SQL DROP TABLE, DROP DATABASE or TRUNCATE TABLE", ctx.fragment);
            if (text && escapes(*text)) return refuse("cannot verify a SQL client's shell escape", ctx.fragment);
        }
        // SQL arriving through a pipe is not seen here: "echo 'select 1' | psql" is common.
        return false;
    }

    bool judge_tar(const Args& args, const Ctx& ctx) {
        if (judge_tar_files(args, ctx)) return true;
        static const auto runs = std::to_array<std::string_view>({
            "--to-command", "--use-compress-program", "--info-script", "--new-volume-script",
            "--rsh-command", "--rmt-command"});
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) continue;
            std::string_view opt = *lit;
            auto eq = opt.find('=');
            std::string_view key = opt.substr(0, eq);
            std::optional<std::string> code;
            if (key.starts_with("--checkpoint-action")) {
                std::string_view action = eq == std::string_view::npos ? std::string_view() : opt.substr(eq + 1);
                if (action.starts_with("exec=")) code = std::string(action.substr(5));
                else if (eq == std::string_view::npos && i + 1 < args.size()) {
                    auto next = args[i + 1]->literal();
                    if (next && next->starts_with("exec=")) code = next->substr(5);
                }
            } else if (contains(runs, key)) {
                if (eq != std::string_view::npos) code = std::string(opt.substr(eq + 1));
                else if (i + 1 < args.size()) code = args[i + 1]->literal().value_or("$unknown");
            } else if ((opt == "-I" || opt == "-F") && i + 1 < args.size()) {
                code = args[i + 1]->literal().value_or("$unknown");
            }
            if (code && judge_script(*code, ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx))) return true;
        }
        return false;
    }

    // tar -c -f ARCHIVE writes ARCHIVE; tar -x -C DIR writes under DIR; --remove-files
    // deletes what it archived.
    bool judge_tar_files(const Args& args, const Ctx& ctx) {
        bool create = false, extract = false, remove = false;
        const Word* archive = nullptr;
        const Word* directory = nullptr;
        std::vector<const Word*> operands;
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) {
                operands.push_back(args[i]);
                continue;
            }
            if (lit->starts_with("--")) {
                if (*lit == "--create") create = true;
                if (*lit == "--extract" || *lit == "--get") extract = true;
                if (*lit == "--remove-files") remove = true;
                if (*lit == "--file" && i + 1 < args.size()) archive = args[++i];
                if (*lit == "--directory" && i + 1 < args.size()) directory = args[++i];
                continue;
            }
            bool cluster = lit->starts_with("-") || (i == 1 && lit->find_first_not_of("cxtrufvzjJaopPkwhO") == std::string::npos);
            if (cluster) {
                std::string_view flags = std::string_view(*lit).substr(lit->starts_with("-") ? 1 : 0);
                for (std::size_t j = 0; j < flags.size(); ++j) {
                    char c = flags[j];
                    if (c == 'c') create = true;
                    if (c == 'x') extract = true;
                    if ((c == 'f' || c == 'C') && i + 1 < args.size()) {
                        (c == 'f' ? archive : directory) = args[++i];
                        break;
                    }
                }
                continue;
            }
            operands.push_back(args[i]);
        }
        if (create && archive && judge_write_target(archive, ctx, "tar archive")) return true;
        if (extract) {
            Word root;
            root.parts.push_back(shell::WordPart{PartKind::literal, ".", true, {}});
            const Word* dir = directory ? directory : &root;
            OperandRule rule{"tar -x", true, "extraction over a system path"};
            auto text = path_text(*dir);
            if (!text) return refuse("cannot verify an expansion in tar -C", ctx.fragment);
            std::vector<std::string> paths;
            if (!resolve(*text, ctx, "tar -x", paths)) return true;
            for (const auto& p : paths)
                if (p == "/" || is_critical_file(p + "/x") || (is_top_system(segments(p)) && p != "~"))
                    return refuse(rule.rule, ctx.fragment);
        }
        if (remove) {
            OperandRule rule{"tar --remove-files", true, "removal of a system path (tar --remove-files)"};
            for (const auto* w : operands)
                if (judge_destructive_operand(*w, rule, ctx)) return true;
        }
        return false;
    }

    bool judge_git(const Args& args, const Ctx& ctx) {
        static const auto command_keys = std::to_array<std::string_view>({
            "core.sshcommand", "core.pager", "core.editor", "core.fsmonitor", "core.hookspath",
            "sequence.editor", "diff.external", "credential.helper", "gpg.program",
            "core.gitproxy", "uploadpack.packobjectshook"});
        auto judge_setting = [&](std::string_view key, std::string_view value) {
            std::string k = lower(key);
            if (value.starts_with("!")) return judge_script(value.substr(1), ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx));
            if (contains(command_keys, std::string_view(k)) || k.starts_with("filter.") || k.starts_with("alias."))
                return judge_script(value, ctx.level + 1, *ctx.cwds, ctx.fragment, untrusted_stdin(ctx));
            return false;
        };
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) continue;
            if (lit->find("ext::") != std::string::npos) return refuse("cannot verify git's ext:: transport", ctx.fragment);
            if (*lit == "foreach" || *lit == "--exec" || *lit == "-x" || *lit == "--upload-pack" ||
                *lit == "--receive-pack" || lit->starts_with("--exec=") || lit->starts_with("--upload-pack=")) {
                if (lit->find('=') != std::string::npos)
                    return judge_script(std::string_view(*lit).substr(lit->find('=') + 1), ctx.level + 1, *ctx.cwds,
                                        ctx.fragment, untrusted_stdin(ctx));
                if (i + 1 < args.size()) {
                    // foreach [--recursive] CMD
                    std::size_t c = i + 1;
                    while (c < args.size() && args[c]->literal() && args[c]->literal()->starts_with("--")) ++c;
                    if (c < args.size() && judge_code_word(*args[c], ctx, "git " + *lit)) return true;
                }
                continue;
            }
            if (*lit == "clean") {
                // git clean -f -d / -x removes what is not tracked under the current directory.
                bool force = false, dirs = false;
                for (std::size_t k = i + 1; k < args.size(); ++k) {
                    auto l = args[k]->literal();
                    if (!l || !l->starts_with("-") || l->starts_with("--")) {
                        if (l && (*l == "--force")) force = true;
                        continue;
                    }
                    if (l->find('f') != std::string::npos) force = true;
                    if (l->find('d') != std::string::npos || l->find('x') != std::string::npos) dirs = true;
                }
                if (force && dirs) {
                    Word dot;
                    dot.parts.push_back(shell::WordPart{PartKind::literal, ".", true, {}});
                    OperandRule rule{"git clean", true, "recursive removal of a system path (git clean)"};
                    if (judge_destructive_operand(dot, rule, ctx)) return true;
                }
                continue;
            }
            if ((*lit == "-c" || *lit == "--config-env") && i + 1 < args.size()) {
                auto setting = args[i + 1]->literal();
                if (!setting) return refuse("cannot verify an expansion in git -c", ctx.fragment);
                auto eq = setting->find('=');
                if (eq != std::string::npos && judge_setting(setting->substr(0, eq), std::string_view(*setting).substr(eq + 1)))
                    return true;
                ++i;
                continue;
            }
            if (*lit == "config") {
                // git config [--global] KEY VALUE
                std::vector<std::string> plain;
                for (std::size_t k = i + 1; k < args.size(); ++k) {
                    auto l = args[k]->literal();
                    if (!l) return refuse("cannot verify an expansion in git config", ctx.fragment);
                    if (!l->starts_with("-")) plain.push_back(*l);
                }
                if (plain.size() >= 2 && judge_setting(plain[0], plain[1])) return true;
                return false;
            }
        }
        return false;
    }

    bool judge_container(const Args& args, const Ctx& ctx) {
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) continue;
            std::optional<std::string> mount;
            if ((*lit == "-v" || *lit == "--volume" || *lit == "--mount") && i + 1 < args.size()) mount = args[i + 1]->literal();
            else if (lit->starts_with("--volume=") || lit->starts_with("--mount=")) mount = lit->substr(lit->find('=') + 1);
            else if (lit->starts_with("-v=")) mount = lit->substr(3);
            else if (lit->starts_with("-v") && lit->size() > 2) mount = lit->substr(2);
            if (*lit == "--privileged" || *lit == "--cap-add=ALL" || *lit == "--cap-add=SYS_ADMIN" ||
                (*lit == "--cap-add" && i + 1 < args.size() &&
                 (args[i + 1]->literal() == std::optional<std::string>("ALL") ||
                  args[i + 1]->literal() == std::optional<std::string>("SYS_ADMIN"))))
                return refuse("a container with the host's privileges", ctx.fragment);
            if ((*lit == "--device" || lit->starts_with("--device=")) )
                return refuse("a container given a host device", ctx.fragment);
            if (!mount) continue;
            // Read-only mounts cannot change the host.
            if (mount->ends_with(":ro") || mount->find(":ro,") != std::string::npos ||
                mount->find(",readonly") != std::string::npos || mount->find(",ro") != std::string::npos)
                continue;
            std::string source = *mount;
            if (auto src = source.find("source="); src != std::string::npos) {
                source = source.substr(src + 7);
                source = source.substr(0, source.find(','));
            } else if (auto src2 = source.find("src="); src2 != std::string::npos) {
                source = source.substr(src2 + 4);
                source = source.substr(0, source.find(','));
            } else {
                source = source.substr(0, source.find(':'));
            }
            if (!source.starts_with("/")) continue;
            if (auto p = normalize(source, std::nullopt); p && (protected_for_recursion(*p) || is_critical_file(*p)))
                return refuse("a container with a system path mounted", ctx.fragment);
        }
        return false;
    }

    bool judge_inline_code(std::string_view raw_code, std::string_view who, const Ctx& ctx) {
        if (who.starts_with("php"))  // "sys"."tem": PHP calls functions by any string
            return refuse("cannot verify inline php code", ctx.fragment);
        const std::string lowered = lower(raw_code);
        std::string_view code = lowered;
        for (auto risky : risky_code_words) {
            for (auto at = code.find(risky); at != std::string_view::npos; at = code.find(risky, at + 1)) {
                // platform.system() is not system(): a method of another name space.
                if (risky.starts_with("system") && at > 0 && (code[at - 1] == '.' || is_word_char(code[at - 1])))
                    continue;
                return refuse("cannot verify inline " + std::string(who) + " code that runs commands or removes files",
                              ctx.fragment);
            }
        }
        return false;
    }

    // awk runs commands through system(), "cmd" | getline, print | "cmd" and writes files with
    // print > "file": each is refused in inline programs; other awk code is data processing.
    bool judge_awk_program(std::string_view program, const std::string& name, const Ctx& ctx) {
        auto after_spaces = [&](std::size_t p) {
            while (p < program.size() && is_space(program[p])) ++p;
            return p;
        };
        for (std::size_t p = program.find('|'); p != std::string_view::npos; p = program.find('|', p + 1)) {
            if ((p + 1 < program.size() && program[p + 1] == '|') || (p > 0 && program[p - 1] == '|')) continue;
            if (p > 0 && program[p - 1] == '"') continue;  // "|": a string, FS="|"
            std::size_t q = after_spaces(p + 1);
            if (q < program.size() && (program[q] == '"' || program[q] == '&' || program.compare(q, 7, "getline") == 0))
                return refuse("cannot verify inline " + name + " code that runs commands", ctx.fragment);
        }
        for (std::size_t p = program.find('>'); p != std::string_view::npos; p = program.find('>', p + 1)) {
            std::size_t q = after_spaces(p + (p + 1 < program.size() && program[p + 1] == '>' ? 2 : 1));
            if (q < program.size() && program[q] == '"')
                return refuse("cannot verify inline " + name + " code that writes files", ctx.fragment);
        }
        for (std::size_t p = program.find("system"); p != std::string_view::npos; p = program.find("system", p + 1))
            if (after_spaces(p + 6) < program.size() && program[after_spaces(p + 6)] == '(')
                return refuse("cannot verify inline " + name + " code that runs commands", ctx.fragment);
        return false;
    }

    bool judge_awk(const std::string& name, const Args& args, const Ctx& ctx) {
        bool program_given = false;
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) {
                if (program_given) continue;  // an input file named by a variable
                return refuse("cannot verify code reaching " + name + " from an expansion", ctx.fragment);
            }
            if (lit->size() > 1 && (*lit)[0] == '-' &&
                (!program_given || *lit == "-e" || *lit == "--source" || lit->starts_with("--source=") || *lit == "-f")) {
                if (*lit == "-f" || *lit == "--file") {
                    if (i + 1 < args.size() && args[i + 1]->literal() &&
                        judge_code_path(*args[i + 1]->literal(), ctx, name, false))
                        return true;
                    ++i;
                    program_given = true;
                    continue;
                }
                if (*lit == "-e" || *lit == "--source") {
                    if (i + 1 >= args.size()) return false;
                    auto code = args[++i]->literal();
                    if (!code) return refuse("cannot verify code reaching " + name + " from an expansion", ctx.fragment);
                    if (judge_awk_program(*code, name, ctx)) return true;
                    program_given = true;
                    continue;
                }
                if (lit->starts_with("--source=")) {
                    if (judge_awk_program(std::string_view(*lit).substr(9), name, ctx)) return true;
                    program_given = true;
                    continue;
                }
                if (*lit == "-i" || *lit == "--include" || lit->starts_with("-i"))
                    return refuse("cannot verify " + name + " with an extension or in-place editing", ctx.fragment);
                if (*lit == "-F" || *lit == "-v" || *lit == "-W") ++i;
                continue;
            }
            if (program_given) continue;  // input files
            if (judge_awk_program(*lit, name, ctx)) return true;
            program_given = true;
        }
        return false;
    }

    bool judge_interpreter(const std::string& name, const Args& args, const Ctx& ctx) {
        // Options taking a value that is not code: python -W/-X, perl -I/-M/-m, node -r.
        static const auto with_value = std::to_array<std::string_view>({
            "-W", "-X", "-I", "-M", "-r", "--require", "--import", "-C", "--loader"});
        bool code_seen = false;
        const bool python = name.starts_with("python");
        // PHP calls functions by any string ("sys"."tem"): its inline code is not judged.
        if (name.starts_with("php") && has_literal(args, {"-r", "-R", "-B", "-E", "-F", "-a"}))
            return refuse("cannot verify inline php code", ctx.fragment);
        for (std::size_t i = 1; i < args.size(); ++i) {
            auto lit = args[i]->literal();
            if (!lit) {
                if (code_seen) continue;  // an argument to the inline program
                return refuse("cannot verify code reaching " + name + " from an expansion", ctx.fragment);
            }
            if (*lit == "-") return judge_stdin_code(ctx, name, false);
            if (*lit == "--") {
                if (code_seen) return false;
                continue;
            }
            if (lit->size() > 1 && (*lit)[0] == '-') {
                if (python && *lit == "-m") return false;  // a module
                if (contains(with_value, std::string_view(*lit))) {
                    ++i;
                    continue;
                }
                char last = lit->back();
                bool code_flag = (!lit->starts_with("--") &&
                                  (python ? last == 'c' : (last == 'e' || last == 'E' || last == 'r' || last == 'c'))) ||
                                 *lit == "--eval" || *lit == "--print" || *lit == "-p";
                if (!python && !lit->starts_with("--") && lit->find('i') != std::string::npos && name.starts_with("perl"))
                    return refuse("cannot verify perl editing files in place (-i)", ctx.fragment);
                if (code_flag) {
                    if (i + 1 >= args.size()) return false;
                    auto code = args[++i]->literal();
                    if (!code) return refuse("cannot verify code reaching " + name + " from an expansion", ctx.fragment);
                    if (judge_inline_code(*code, name, ctx)) return true;
                    code_seen = true;
                }
                continue;
            }
            if (code_seen) continue;  // arguments of the inline program
            return judge_code_path(*lit, ctx, name, false);
        }
        if (code_seen) return false;
        return judge_stdin_code(ctx, name, false);
    }
};

std::string message_for(const Refusal& r) {
    return "command refused by the sanitizer: " + r.rule + ": \"" + r.fragment + "\"";
}

}  // namespace

Result<CommandPolicy> make_command_policy(const std::vector<std::string>& patterns) {
    CommandPolicy policy;
    for (std::size_t i = 0; i < patterns.size(); ++i) {
        auto parsed = shell::parse(patterns[i]);
        std::vector<std::string> words;
        bool plain = parsed && (*parsed)->commands.size() == 1 &&
                     (*parsed)->commands[0].assignments.empty() &&
                     (*parsed)->commands[0].redirects.empty();
        if (plain) {
            for (const auto& w : (*parsed)->commands[0].words) {
                auto lit = w.literal();
                if (!lit) {
                    plain = false;
                    break;
                }
                words.push_back(*lit);
            }
        }
        if (!plain || words.empty())
            return Error(errc::invalid_argument,
                         "exec.allow[" + std::to_string(i) + "]: \"" + fragment_of(patterns[i]) +
                             "\" is not a list of plain words (a command and its first arguments)");
        policy.allow.push_back(std::move(words));
    }
    return policy;
}

Result<void> sanitize_command(std::string_view command, const CommandPolicy& policy) {
    if (command.find('\0') != std::string_view::npos)
        return Error(errc::security_violation,
                     "command refused by the sanitizer: NUL byte in command: \"" +
                         fragment_of(command.substr(0, command.find('\0'))) + "\"");
    if (command.size() > max_command_bytes)
        return Error(errc::security_violation,
                     "command refused by the sanitizer: cannot verify a command longer than " +
                         std::to_string(max_command_bytes) + " bytes: \"" + fragment_of(command) + "\"");
    Judge judge(&policy, command.size());
    if (auto refusal = judge.run(command)) return Error(errc::security_violation, message_for(*refusal));
    return {};
}

Result<void> sanitize_command(std::string_view command) {
    static const CommandPolicy none;
    return sanitize_command(command, none);
}

bool is_system_path(std::string_view path) {
    if (path.empty() || path.front() != '/') return false;
    auto p = normalize(path, std::nullopt);
    return p && is_top_system(segments(*p));
}

}  // namespace guardia
