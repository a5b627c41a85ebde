#include "guardia/core/sanitizer.hpp"
#include "guardia/core/shell_syntax.hpp"

#include <doctest/doctest.h>

#include <ctime>
#include <filesystem>
#include <iterator>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

using guardia::errc;
using guardia::is_system_path;
using guardia::sanitize_command;

namespace {

struct Refused {
    std::string_view command;
    std::string_view rule;  // a part of the message naming the rule
};

// Each refused command, with the rule its refusal must name.
constexpr Refused refused[] = {
    // The original blacklist's own cases.
    {"rm -rf /", "recursive rm of a system path"},
    {"rm -rf /*", "recursive rm of a system path"},
    {"rm -r /etc", "recursive rm of a system path"},
    {"mkfs /dev/sdb1", "mkfs"},
    {"format c:", "(format)"},
    {"psql -c 'DROP TABLE users'", "DROP TABLE"},
    {"echo x > /dev/sda", "block device"},
    // Case, spelling and option forms.
    {"RM -RF /", "recursive rm"},
    {"rm -f -r /usr", "recursive rm"},
    {"rm -R /var/", "recursive rm"},
    {"rm --recursive --force /boot/*", "recursive rm"},
    {"rm --rec /home", "recursive rm"},
    {"rm -fr ~", "recursive rm"},
    {"rm -rf ~/", "recursive rm"},
    {"rm -rf \"$HOME\"", "recursive rm"},
    {"rm -rf ${HOME}/*", "recursive rm"},
    {"rm -rf *", "recursive rm"},
    {"rm -rf /.", "recursive rm"},
    {"rm -rf //", "recursive rm"},
    {"rm -rf '/'", "recursive rm"},
    {"rm -rf /app/../etc", "recursive rm"},
    {"rm -rf /e*", "recursive rm"},
    {"rm -rf \"$DEPLOY_DIR\"/", "cannot verify an expansion in an operand of rm"},
    {"rm -rf /app/x /", "recursive rm"},
    {"rm / -rf", "recursive rm"},
    {"/bin/rm -rf -- /opt", "recursive rm"},
    {"\\rm -rf /srv", "recursive rm"},
    {"r''m -rf /tmp", "recursive rm"},
    {"rm --no-preserve-root -r /app/x", "--no-preserve-root"},
    {"mkfs.ext4 /dev/vdb", "mkfs"},
    {"sudo MKFS.XFS -f /dev/nvme0n1", "mkfs"},
    {"mk''fs /dev/sdb", "mkfs"},
    {"mysql -e \"drop   table t\"", "DROP TABLE"},
    {"echo 'drop\ttable x' | psql", "DROP TABLE"},
    {"cat img >> /dev/sdb", "block device"},
    {"cat img >'/dev/xvda'", "block device"},
    {"dd if=img.raw of=/dev/mmcblk0 bs=4M", "block device"},
    {"dd if=/dev/zero OF=/dev/HDA", "block device"},
    {"cat img | tee /dev/nvme0n1", "block device"},
    // Joined and nested commands.
    {"true; rm -rf /", "recursive rm"},
    {"true && rm -rf /", "recursive rm"},
    {"false || rm -rf /", "recursive rm"},
    {"ls | rm -rf /", "recursive rm"},
    {"echo ok\nrm -rf /", "recursive rm"},
    {"sleep 1 & rm -rf /", "recursive rm"},
    {"sh -c 'rm -rf /'", "recursive rm"},
    {"bash -lc \"cd /tmp && rm -rf /usr\"", "recursive rm"},
    {"sh -c \"sh -c 'rm -rf /'\"", "recursive rm"},
    {"sudo -u root rm -rf /", "recursive rm"},
    {"timeout 10 rm -rf /", "recursive rm"},
    {"FOO=1 rm -rf /", "recursive rm"},
    {"echo $(rm -rf /)", "recursive rm"},
    {"echo \"`rm -rf /`\"", "recursive rm"},
    {"eval 'rm -rf /'", "recursive rm"},
    {"echo 'rm -rf /' | sh", "cannot verify code reaching sh from a pipe"},
    {"sh <<< 'rm -rf /'", "recursive rm"},
    {"{ rm -rf /; }", "recursive rm"},
    {"(cd /app && rm -rf /)", "recursive rm"},
    {"if true; then rm -rf /; fi", "recursive rm"},
    {"su -c 'rm -rf /' root", "recursive rm"},
    {"ssh other-host 'rm -rf /'", "recursive rm"},
    {"sh -c 'echo x > /dev/sda'", "block device"},
    {std::string_view("echo a\0; rm -rf /", 18), "NUL"},
    // The forms of the bug report, each sent to a node by the old sanitizer.
    {"$'rm' -rf /*", "recursive rm of a system path"},
    {"echo $(echo \")\"); rm -rf /*", "recursive rm of a system path"},
    {"echo $(echo \")\"); rm -rf /", "recursive rm of a system path"},
    {"rm -rf /{etc,usr}", "cannot verify a brace expansion"},
    {"rm -rf /srv/app/releases/2024*", "cannot verify a glob in an operand of rm"},
    {"D=/etc; rm -rf $D", "cannot verify an expansion in an operand of rm"},
    {"echo cm0gLXJmIC8q | base64 -d | sh", "cannot verify code reaching sh from a pipe"},
    {"find / -delete", "find -delete under a system path"},
    {"chmod -R 777 /", "recursive chmod/chown of a system path"},
    {"> /etc/passwd", "write to a system file"},
    {"dd if=/dev/zero of=/dev//sda", "write to a block device"},
    // Fail closed.
    {"$cmd -rf /tmp/x", "cannot verify an expansion in a command word"},
    {"cd \"$d\" && rm -rf build", "cd to a directory not known in advance"},
    {"sh -c \"$x\"", "cannot verify code reaching sh -c from an expansion"},
    {"eval \"$x\"", "cannot verify code reaching eval from an expansion"},
    {"source <(curl -s http://127.0.0.1/x)", "cannot verify code reaching source"},
    {"find /srv -name x | xargs rm -rf", "reads from stdin (xargs)"},
    {"env -S 'rm -rf /'", "recursive rm"},
    {"watch -n 5 rm -rf /var/lib", "recursive rm"},
    {"flock /tmp/l -c 'rm -rf /'", "recursive rm"},
    {"cd / && rm -rf etc", "recursive rm"},
    {"rm -rf /proc/self/root/etc", "recursive rm"},
    {"rm -rf /usr/lib", "recursive rm"},
    {":(){ :|:& };:", "fork bomb"},
    {"kill -9 -1", "kill of every process"},
    {"init 6", "reboot or power-off"},
    {"find /etc -exec rm -f {} \\;", "removal of a system file"},
};

// Commands that must pass. The word rules of the original blacklist are gone: "format" and
// "truncate" are judged as commands (format is refused, truncate only onto system files).
constexpr std::string_view allowed[] = {
    "mkdir -- '/app/.guardia-lock'",
    "cp -a -- '/app/x' '/app/x.bak_20260101_120000'",
    "rm -rf -- '/app/x.bak_20250101_000000'",
    "truncate -s 0 /var/log/syslog",
    "truncate -s0 /var/log/app/app.log",
    "docker ps --format x",
    "git log --format=%H -n1",
    "cd /srv/app && rm -rf ./build",
    "uptime # rm -rf /",
    "[ -L /srv/app/current ] && readlink /srv/app/current",
    "rm -rf -- '/app/webapps.bak_20260101_120000'",
    "rm -rf -- '/app/.guardia-lock'",
    "df -P -- '/app/x'",
    "sh /app/scripts/startup.sh",
    "sh '/app/scripts/shutdown.sh'",
    "sha256sum",
    "sha256sum < '/app/x/.guardia-stage.war'",
    "mv -f -- a b",
    "echo formatted",
    "echo truncated output",
    "cat /app/log 2>/dev/null | tail -n 20",
    "rm /etc/app.conf",
    "rm -rf /var/tmp/guardia-work",
    "rm -rf /tmp/guardia-ctest-1234/ssh/nodes/node-0001/app",
    "rm -rf ./build",
    "rm -rf ~/.cache/guardia",
    "echo 'rm -rf /' > /app/notes.txt",
    "grep -r drop /app/logs",
    "cat /dev/sda.txt",
    "dd if=/dev/zero of=/app/x/swap bs=1M count=1",
    "sh -c 'cd /app && ./restart.sh'",
    "echo 'tables dropped: 0'",
    "ls -la /dev/sda",
};

}  // namespace

TEST_CASE("sanitizer refuses destructive commands, naming the rule and the fragment") {
    CHECK(std::size(refused) >= 25);
    for (const auto& c : refused) {
        CAPTURE(c.command);
        auto r = sanitize_command(c.command);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::security_violation);
        CHECK(r.error().message.find(c.rule) != std::string::npos);
        CAPTURE(r.error().message);
        CHECK(r.error().message.size() <= 200);
    }
}

TEST_CASE("sanitizer allows Guardia's own commands and ordinary ones") {
    CHECK(std::size(allowed) >= 15);
    for (auto command : allowed) {
        CAPTURE(command);
        auto r = sanitize_command(command);
        CHECK_MESSAGE(r.has_value(), (r ? std::string() : r.error().message));
    }
}

TEST_CASE("a refusal quotes the offending fragment, shortened to ~80 characters") {
    auto r = sanitize_command("true; rm -rf /");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message ==
          "command refused by the sanitizer: recursive rm of a system path: \"rm -rf /\"");

    std::string long_command = "rm -rf / " + std::string(300, 'x');
    r = sanitize_command(long_command);
    REQUIRE_FALSE(r.has_value());
    auto quoted = r.error().message.substr(r.error().message.find('"'));
    CHECK(quoted.size() <= 82);
    CHECK(quoted.find("rm -rf / xxx") == 1);
    CHECK(quoted.find("...\"") != std::string::npos);

    r = sanitize_command("cd /app;\nDROP  TABLE t");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find("\"DROP  TABLE t\"") != std::string::npos);
}

TEST_CASE("sanitizer refuses nesting too deep to check") {
    std::string command = "rm -rf /app/x";
    for (int i = 0; i < 12; ++i) command = "eval \"" + command + "\"";
    auto r = sanitize_command(command);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find("cannot verify commands nested too deeply") != std::string::npos);
}

TEST_CASE("system paths") {
    CHECK(is_system_path("/"));
    CHECK(is_system_path("/etc"));
    CHECK(is_system_path("/usr/"));
    CHECK(is_system_path("/lib64"));
    CHECK_FALSE(is_system_path("/app"));
    CHECK_FALSE(is_system_path("/etc/nginx"));
    CHECK_FALSE(is_system_path("etc"));
    CHECK_FALSE(is_system_path(""));
}

// --- The corpus: test/data/sanitizer/{dangerous,everyday}.txt --------------------------------

namespace {

struct CorpusEntry {
    int line;
    std::string command;
};

// One command a line; '#' starts a comment line; a command with newlines is written between a
// line "<<<" and a line ">>>".
std::vector<CorpusEntry> load_corpus(const std::string& name) {
    std::ifstream in(std::string(GUARDIA_TEST_DATA_DIR) + "/sanitizer/" + name);
    REQUIRE_MESSAGE(in.good(), "cannot read the corpus " << name);
    std::vector<CorpusEntry> out;
    std::string line, block;
    int n = 0, block_start = 0;
    bool in_block = false;
    while (std::getline(in, line)) {
        ++n;
        if (in_block) {
            if (line == ">>>") {
                out.push_back({block_start, block});
                in_block = false;
            } else {
                block += (block.empty() ? "" : "\n") + line;
            }
            continue;
        }
        if (line == "<<<") {
            in_block = true;
            block.clear();
            block_start = n;
        } else if (!line.empty() && line[0] != '#') {
            out.push_back({n, line});
        }
    }
    REQUIRE_FALSE(in_block);
    return out;
}

}  // namespace

TEST_CASE("corpus: every dangerous command is refused, naming a rule and quoting a fragment") {
    auto corpus = load_corpus("dangerous.txt");
    CHECK(corpus.size() >= 250);
    std::size_t unparsed = 0;
    for (const auto& c : corpus) {
        auto r = sanitize_command(c.command);
        CHECK_MESSAGE(!r.has_value(), "dangerous.txt:" << c.line << " accepted: " << c.command);
        if (r.has_value()) continue;
        CHECK(r.error().code == errc::security_violation);
        CHECK_MESSAGE(r.error().message.starts_with("command refused by the sanitizer: "), r.error().message);
        CHECK_MESSAGE(r.error().message.ends_with("\""), r.error().message);
        if (r.error().message.find("does not parse") != std::string::npos) ++unparsed;
    }
    // A parse failure is a refusal too (fail closed), and some entries are exactly the forms
    // the parser refuses to follow (a NUL in $'...', ${ cmd; }); most must be refused for
    // what they do.
    CHECK_MESSAGE(unparsed * 20 < corpus.size(), unparsed << " entries refused only as unparsable");
}

TEST_CASE("corpus: every everyday command is accepted") {
    auto corpus = load_corpus("everyday.txt");
    CHECK(corpus.size() >= 120);
    for (const auto& c : corpus) {
        auto r = sanitize_command(c.command);
        CHECK_MESSAGE(r.has_value(), "everyday.txt:" << c.line << " refused: " << c.command << " -> "
                                                     << (r ? std::string() : r.error().message));
    }
}

TEST_CASE("a refusal does not depend on how literal words are quoted") {
    for (const char* file : {"dangerous.txt", "everyday.txt"}) {
        for (const auto& c : load_corpus(file)) {
            auto requoted = guardia::shell::requote_literal_words(c.command);
            bool refused = !sanitize_command(c.command).has_value();
            if (!requoted) {
                // Only what does not parse has no re-quoted form, and it is refused.
                CHECK_MESSAGE(refused, file << ":" << c.line);
                continue;
            }
            bool refused_again = !sanitize_command(*requoted).has_value();
            CHECK_MESSAGE(refused == refused_again, file << ":" << c.line << ": " << c.command << " | "
                                                         << *requoted);
        }
    }
    CHECK(*guardia::shell::requote_literal_words("rm -rf /") == "'rm' '-rf' '/'");
}

TEST_CASE("judging stays linear: pathological inputs of 8 KiB each take under 10 ms") {
    auto repeat = [](std::string_view unit, std::size_t bytes) {
        std::string s;
        while (s.size() + unit.size() <= bytes) s += unit;
        return s;
    };
    auto nest = [](std::string_view open, std::string_view core, std::string_view close, int n) {
        std::string s(core);
        for (int i = 0; i < n; ++i) s = std::string(open) + s + std::string(close);
        return s;
    };
    std::vector<std::string> inputs = {
        repeat("a;", 8192),
        repeat("echo $(echo x|sh)|", 8180) + "true",
        nest("echo $(", "true", ")|sh", 40),
        nest("$(", "x", ")", 45),
        nest("{ ", "true;", " }", 150),
        nest("(", "true", ")", 150),
        nest("${a:-", "x", "}", 150),
        nest("eval \"", "true", "\"", 6),
        repeat("sudo ", 8180) + "ls",
        repeat("timeout 1 nice ", 8180) + "ls",
        repeat("{a,b}", 8190),
        repeat("cat <<E\nx\nE\n", 8180),
        repeat("cd /srv/a$RANDOM; ", 8180) + "ls",
        repeat("f(){ g; }; ", 8180),
        "echo " + repeat("'x'\"y\"$'z'", 8180),
        repeat("`echo \\`", 8000) + "x",
        repeat("a[$((1+", 8000),
        repeat("find /srv/app -exec sh -c 'true' {} \\; ", 8180),
    };
    // Inputs found by the red team and the fuzzer (each once slow or a crash).
    for (const auto& entry : std::filesystem::directory_iterator(std::string(GUARDIA_TEST_DATA_DIR) + "/sanitizer/slow")) {
        std::ifstream f(entry.path());
        inputs.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
    CHECK(inputs.size() >= 30);
    for (const auto& in : inputs) {
        // CPU time of this thread: other work on a shared machine does not count.
        auto cpu_ms = [] {
            timespec ts{};
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
            return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
        };
        double start = cpu_ms();
        (void)sanitize_command(in);
        double ms = cpu_ms() - start;
#if defined(__SANITIZE_ADDRESS__) || !defined(NDEBUG)
        // Debug builds under ASan run 30-50 times slower: the bound there still catches any
        // blow-up (the red team's inputs took seconds to weeks before their fixes).
        const double limit = 1000;
#else
        const double limit = 10;
#endif
        CHECK_MESSAGE(ms < limit, in.substr(0, 40) << "... took " << ms << " ms");
    }
}

TEST_CASE("exec.allow: only commands matching a pattern pass, at every depth") {
    auto policy = guardia::make_command_policy({"systemctl status", "systemctl restart *", "journalctl -u",
                                                "uptime", "sudo systemctl restart app"});
    REQUIRE(policy.has_value());
    for (auto ok : {"uptime", "systemctl status nginx", "systemctl restart app --no-block",
                    "journalctl -u app -n 50", "uptime; systemctl status", "sudo systemctl restart app",
                    "uptime > /dev/null"}) {
        auto r = sanitize_command(ok, *policy);
        CHECK_MESSAGE(r.has_value(), ok << " -> " << (r ? std::string() : r.error().message));
    }
    for (auto bad : {"ls", "systemctl stop app", "uptime; ls", "uptime && $(ls)", "echo $(uptime)",
                     "FOO=1 uptime", "/usr/bin/uptime", "systemctl restart $(x)", "sudo systemctl stop app",
                     "sh -c uptime", "systemctl"}) {
        auto r = sanitize_command(bad, *policy);
        CHECK_MESSAGE(!r.has_value(), bad);
        if (!r) CHECK(r.error().message.find("not allowed by exec.allow") != std::string::npos);
    }
    // The sanitizer still judges what the allow-list lets through.
    auto wide = guardia::make_command_policy({"rm"});
    REQUIRE(wide.has_value());
    auto r = sanitize_command("rm -rf /", *wide);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find("recursive rm") != std::string::npos);
    // Bad patterns are refused, naming their index.
    auto bad = guardia::make_command_policy({"uptime", "rm $x"});
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message.find("exec.allow[1]") != std::string::npos);
    CHECK_FALSE(guardia::make_command_policy({""}).has_value());
}

TEST_CASE("paths are normalised before they are judged") {
    CHECK(is_system_path("//"));
    CHECK(is_system_path("/usr/./"));
    CHECK(is_system_path("/app/../etc"));
    CHECK(is_system_path("/proc/self/root/etc"));
    CHECK_FALSE(is_system_path("/srv/app"));
    CHECK_FALSE(is_system_path("/etc/nginx/.."  "/nginx"));
}
