// The node's activation as ONE remote command: verify the staged artifacts' sha256, then
// SHUTDOWN (the node's own command), ACTIVATE (mv -T of each staged file and the release
// marker) and STARTUP (the node's own command). Markers on stdout say how far it got, so the
// pipeline audits each step on its own. Pure: the script's text and the parser of its output.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::deploy {

// One staged artifact: where it was uploaded, where it goes, the sha256 it must have (64
// lowercase hex digits: it is written into the script as is).
struct StagedFile {
    StagedFile() {}
    std::string staging_path;
    std::string final_path;
    std::string sha256;
    std::uint64_t size = 0;  // bytes: which hashing tool is tried first (remote_sha256_script)
};

// The steps one activation command carries, in order.
enum class ActivationStep { transfer, shutdown, activate, startup };
std::string_view to_string(ActivationStep step) noexcept;

// The command. `shutdown_cmd` / `startup_cmd`: the node's operator commands (already judged by
// the sanitizer), or null when the node needs no restart (then: verify, ACTIVATE only). Each
// runs in its own subshell with its stdout sent to stderr (stdout carries only our markers):
//   MISMATCH <index> <remote sha256>  (then every staged file is removed, exit 92)
//   VERIFIED                          (every staged file has its sha256; nothing live changed yet)
//   SHUTDOWN_EXIT=<code>              (the shutdown command's exit; non-zero: exit 43)
//   ACTIVATED                         (files and marker renamed into place; a failure: exit 42)
// and then the startup command's own exit code is the command's. A hashing tool missing or
// failing: exit 91 before VERIFIED. `marker_write`: the script that writes the release marker.
std::string activation_script(const std::vector<StagedFile>& files, const std::string* shutdown_cmd,
                              const std::string* startup_cmd, const std::string& marker_write);

// What the output of activation_script says.
struct ActivationOutcome {
    ActivationOutcome() {}
    bool verified = false;  // every staged file had its sha256
    bool activated = false;
    std::optional<int> shutdown_exit;  // the shutdown command ran and exited with this
    // The step that failed, none when the command succeeded. After `verified`, the live service
    // may have changed (the shutdown began): the node must be rolled back.
    std::optional<ActivationStep> failed;
    std::optional<int> failed_exit;  // the failed step's own exit code, if it has one
    std::optional<std::size_t> mismatch_index;  // MISMATCH: which file, and its remote sha256
    std::string mismatch_sha256;
    // Whether the live files or the service may have changed (decides rollback vs discard).
    bool live_may_have_changed = false;
};

// `exit_code`: the command's exit code, nullopt when it died by a signal. `restart`: the
// command carried SHUTDOWN and STARTUP. A command whose answer was lost (connection, deadline)
// has no output: use activation_lost() instead.
ActivationOutcome parse_activation(std::string_view out, std::optional<int> exit_code, bool restart);
// The command was sent but its answer never came (connection lost, a step's deadline): `out` is
// the stdout that arrived. The failed step is the one after the last marker seen (TRANSFER
// before VERIFIED); whatever it was, the live files may have changed (the rollback decides).
ActivationOutcome activation_lost(std::string_view out, bool restart);

}  // namespace guardia::deploy
