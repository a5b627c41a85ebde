// The command sanitizer: the last check before an operator's command is sent to a node.
//
// It parses the command with a real shell parser (core/shell_syntax.hpp) and judges every
// simple command, at every depth (pipelines, lists, subshells, functions, $(...), `...`,
// here-documents, and the scripts handed to sh -c, eval, su -c, ssh, watch, env -S ...),
// after looking through command wrappers (sudo, env, timeout, nice, xargs, busybox, ...).
// It fails closed: what it cannot resolve statically where it matters is refused with a
// reason that starts "cannot verify". docs/SECURITY.md lists what it refuses and why, and what
// it does not promise (it is a safety net against mistakes and the obvious attacks, not a
// sandbox: a script file on the node, for one, is not read).
//
// Guardia's own remote scripts (lock, backup, activate, restore) are not judged here: they
// are fixed templates whose every value is quoted and validated when the inventory is read.
#pragma once

#include "guardia/core/error.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace guardia {

// The allow-list on top of the sanitizer (`exec.allow` in the configuration): when it holds
// patterns, every simple command at every depth must match one of them, or it is refused.
// A pattern is a list of words matched against the start of the command's words (the command
// word exactly as written, then its arguments); "*" matches any one literal word; further
// words are allowed. A command with an expansion in a matched position, or with variable
// assignments before it, matches nothing.
struct CommandPolicy {
    std::vector<std::vector<std::string>> allow;
    bool restricts() const { return !allow.empty(); }
};

// Builds a policy from "systemctl restart *"-style patterns; an empty pattern or one that
// does not split into plain words is refused, naming its index.
Result<CommandPolicy> make_command_policy(const std::vector<std::string>& patterns);

// Refuses a command that would destroy a system or cannot be verified not to: returns
// Error(errc::security_violation) whose message is
//   command refused by the sanitizer: <rule>: "<fragment>"
// where the fragment quotes the simple command judged (one line, at most ~80 characters).
// Judged in well under 10 ms for any command up to 64 KiB; longer commands are refused.
Result<void> sanitize_command(std::string_view command);
Result<void> sanitize_command(std::string_view command, const CommandPolicy& policy);

// True for "/" and the top-level system directories (/bin /boot /dev /etc /home /lib /lib32
// /lib64 /libx32 /media /mnt /opt /proc /root /run /sbin /srv /sys /tmp /usr /var and a few
// more), after lexical normalisation ("//", "/./", "/../", a trailing '/'). Nothing may be
// deployed into these.
bool is_system_path(std::string_view path);

}  // namespace guardia
