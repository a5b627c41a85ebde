// The command sanitizer: the last check before a command is sent to a node.
//
// It keeps the intent of the original blacklist (rm -rf of /-paths, mkfs, format, drop table,
// truncate, > /dev/sda) without its false positive on Guardia's own backup pruning: rm is
// judged on its parsed options and operands, not on "rm -r followed by a slash somewhere".
// It is a safety net against mistakes in templates and inventories, not a sandbox: a
// determined author of a command can always hide what it does from a static check.
#pragma once

#include "guardia/core/error.hpp"

#include <string_view>

namespace guardia {

// Refuses a command that would destroy a system: returns Error(errc::security_violation)
// whose message names the rule and quotes the offending fragment (at most ~80 characters).
// Checked, case-insensitively, in every part of the command (joined by ; && || | & or
// newlines) and inside nested sh -c '...', eval, $(...) and `...`:
// - rm that is recursive or forced (-r -R -f, --recursive, --force) of /, /*, /., ~, ~/,
//   $HOME, *, a top-level system directory or its glob (/etc, /usr/*, ...), or of an
//   expansion that becomes / when empty ("$dir"/); any rm with --no-preserve-root;
// - the words mkfs (also mkfs.ext4...), format, truncate and the phrase drop table (any
//   whitespace), as whole words: "formatted" and "truncated" pass;
// - writing to a block device: > or >> redirection, of= (dd) or tee targeting /dev/sd*,
//   /dev/hd*, /dev/vd*, /dev/xvd*, /dev/nvme*, /dev/mmcblk*;
// - a NUL byte (the rest of the command would be invisible to C-string consumers).
Result<void> sanitize_command(std::string_view command);

// True for "/" and the top-level system directories (/bin /boot /dev /etc /home /lib /lib32
// /lib64 /opt /proc /root /run /sbin /srv /sys /tmp /usr /var), with or without one trailing
// '/'. Nothing may be deployed into or recursively removed from these.
bool is_system_path(std::string_view path);

}  // namespace guardia
