#include "guardia/core/sanitizer.hpp"

#include <doctest/doctest.h>

#include <string>
#include <string_view>

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
    {"format c:", "'format'"},
    {"psql -c 'DROP TABLE users'", "DROP TABLE"},
    {"truncate -s 0 /var/log/syslog", "'truncate'"},
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
    {"rm -rf \"$DEPLOY_DIR\"/", "recursive rm"},
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
    {"echo 'rm -rf /' | sh", "recursive rm"},
    {"sh <<< 'rm -rf /'", "recursive rm"},
    {"{ rm -rf /; }", "recursive rm"},
    {"(cd /app && rm -rf /)", "recursive rm"},
    {"if true; then rm -rf /; fi", "recursive rm"},
    {"su -c 'rm -rf /' root", "recursive rm"},
    {"ssh other-host 'rm -rf /'", "recursive rm"},
    {"sh -c 'echo x > /dev/sda'", "block device"},
    {std::string_view("echo a\0; rm -rf /", 18), "NUL"},
};

// Commands that must pass, Guardia's own first. `formatted`/`truncated` pass on purpose: the
// word rules are \bformat\b and \btruncate\b, as in the original blacklist.
constexpr std::string_view allowed[] = {
    "mkdir -- '/app/.guardia-lock'",
    "cp -a -- '/app/x' '/app/x.bak_20260101_120000'",
    "rm -rf -- '/app/x.bak_20250101_000000'",
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
    "rm -f -- \"$s\"",
    "s='/app/x/a.war.guardia-tmp'; d() { if command -v openssl >/dev/null 2>&1; then openssl "
    "dgst -$1 -r; else ${1}sum; fi; }; chmod 644 -- \"$s\" || exit 90; h=$(d sha256 < \"$s\") "
    "|| exit 91; h=${h%% *}; if [ \"$h\" != abc ]; then rm -f -- \"$s\"; exit 92; fi",
    "rm /etc/app.conf",
    "rm -rf /var/tmp/guardia-work",
    "rm -rf /tmp/guardia-ctest-1234/ssh/nodes/node-0001/app",
    "rm -rf ./build",
    "rm -rf ~/.cache/guardia",
    "rm -rf \"$dir\".bak_20250101_000000",
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
    CHECK(r.error().message.find("nested too deeply") != std::string::npos);
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
