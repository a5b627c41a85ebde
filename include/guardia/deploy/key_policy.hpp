// What an inventory may make Guardia use on the deploy host (docs/SECURITY.md, "Inputs from API
// callers"): private key files only inside the configured key directories (ssh.key_dirs), and a
// password only for a node whose host its credentials entry is bound to.
//
// Pure functions, no I/O beyond resolving paths; the CredentialStore applies them when it hands
// out credentials, the service also when an inventory is imported or read back for a rollout.
#pragma once

#include "guardia/core/error.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::deploy {

// Where auth.key_file may point.
struct KeyDirs {
    KeyDirs() {}
    bool restricted = false;        // false: anywhere (guardia deploy/exec without ssh.key_dirs)
    std::vector<std::string> dirs;  // absolute; a key must resolve inside one of them
    bool defaulted = false;         // the service's default, not configured: errors say so
};

// The directory the packaging creates for deploy keys (systemd/guardia.tmpfiles.conf).
inline constexpr std::string_view default_service_key_dir = "/etc/guardia/keys";

// `guardia deploy` / `guardia exec`: ssh.key_dirs when configured, else any key file (the
// operator who runs the command owns the host and wrote the inventory).
KeyDirs key_dirs_for_cli(const std::optional<std::vector<std::string>>& configured);
// `guardia serve`: ssh.key_dirs when configured, else only /etc/guardia/keys (fail closed: an
// API caller writes the inventory).
KeyDirs key_dirs_for_service(const std::optional<std::vector<std::string>>& configured);

// The path `key_file` names once every symbolic link in it is followed (realpath), checked to lie
// inside one of `dirs` (each resolved the same way). A path that does not name a key directory
// on its text is refused first, without looking at the file system (no oracle for files
// elsewhere). A file that does not exist yet resolves
// through its directory; it is resolved and checked again when the key is loaded. Returns the
// resolved path: that is the file to open. Errors (errc::invalid_argument) read
//   "'/srv/k' resolves to '/root/.ssh/id_ed25519', outside ssh.key_dirs [/etc/guardia/keys]: ..."
// and say how to configure ssh.key_dirs. Unrestricted: returns `key_file` unchanged.
Result<std::string> resolve_key_file(const std::string& key_file, const KeyDirs& dirs);

// Does `host` match one binding pattern? ASCII case-insensitive, whole string; '*' stands for
// any run of characters other than '.', '?' for one such character ("*.web.example.com",
// "10.1.2.*"). Nothing else is special: no ranges, no CIDR. A pattern made of digits, dots and
// wildcards only matches IPv4 literals ("10.1.2.*" never matches the DNS name "10.1.2.com").
bool host_matches(std::string_view pattern, std::string_view host);
// ... any of `patterns`.
bool host_matches_any(const std::vector<std::string>& patterns, std::string_view host);

// What is wrong with a binding pattern, if anything (empty, whitespace, '/', over 255 chars).
std::optional<std::string> host_pattern_problem(std::string_view pattern);

}  // namespace guardia::deploy
