#include "guardia/deploy/activation.hpp"

#include "guardia/core/shell.hpp"

namespace guardia::deploy {

std::string_view to_string(ActivationStep step) noexcept {
    switch (step) {
        case ActivationStep::transfer:
            return "TRANSFER";
        case ActivationStep::shutdown:
            return "SHUTDOWN";
        case ActivationStep::activate:
            return "ACTIVATE";
        case ActivationStep::startup:
            return "STARTUP";
    }
    return "UNKNOWN";
}

std::string activation_script(const std::vector<StagedFile>& files, const std::string* shutdown_cmd,
                              const std::string* startup_cmd, const std::string& marker_write) {
    std::string all_staged;
    for (const auto& f : files) {
        all_staged += ' ';
        all_staged += shell_quote(f.staging_path);
    }
    std::string cmd;
    // Verify every staged file before anything live changes. A mismatch removes all of them.
    for (std::size_t i = 0; i < files.size(); ++i) {
        cmd += "s=" + shell_quote(files[i].staging_path) + "; ";
        cmd += remote_sha256_script("\"$s\"", "h", files[i].size);
        cmd += "if [ \"$h\" != " + files[i].sha256 + " ]; then rm -f --" + all_staged +
               "; echo \"MISMATCH " + std::to_string(i) + " $h\"; exit 92; fi; ";
    }
    cmd += "echo VERIFIED; ";
    // The operator's commands run in a subshell each (an `exit` or `cd` in them stays theirs);
    // the newline before ')' ends a trailing comment in their text.
    if (shutdown_cmd != nullptr)
        cmd += "( " + *shutdown_cmd + "\n) >&2; c=$?; echo \"SHUTDOWN_EXIT=$c\"; [ \"$c\" -eq 0 ] || exit 43; ";
    // mv -T (no target directory): the staged file replaces the destination name itself; a name
    // that became a directory makes it fail instead of nesting the file inside.
    std::string moves;
    for (const auto& f : files) {
        if (!moves.empty()) moves += " && ";
        moves += "mv -f -T -- " + shell_quote(f.staging_path) + " " + shell_quote(f.final_path);
    }
    if (!moves.empty()) moves += " && ";
    moves += marker_write;
    cmd += "{ " + moves + "; } || exit 42; echo ACTIVATED";
    if (startup_cmd != nullptr) cmd += "; ( " + *startup_cmd + "\n) >&2";
    return cmd;
}

ActivationOutcome parse_activation(std::string_view out, std::optional<int> exit_code, bool restart) {
    ActivationOutcome o;
    for (std::size_t pos = 0; pos < out.size();) {
        auto end = out.find('\n', pos);
        if (end == std::string_view::npos) end = out.size();
        const auto line = out.substr(pos, end - pos);
        pos = end + 1;
        if (line == "VERIFIED") {
            o.verified = true;
        } else if (line == "ACTIVATED") {
            o.activated = true;
        } else if (line.substr(0, 14) == "SHUTDOWN_EXIT=") {
            try {
                o.shutdown_exit = std::stoi(std::string(line.substr(14)));
            } catch (...) {
            }
        } else if (line.substr(0, 9) == "MISMATCH ") {
            const auto rest = line.substr(9);
            const auto space = rest.find(' ');
            try {
                o.mismatch_index = static_cast<std::size_t>(std::stoul(std::string(rest.substr(0, space))));
            } catch (...) {
            }
            if (space != std::string_view::npos) o.mismatch_sha256 = std::string(rest.substr(space + 1));
        }
    }
    const bool ok = exit_code.has_value() && *exit_code == 0;
    if (!o.verified) {
        o.failed = ActivationStep::transfer;
        o.failed_exit = exit_code;
        return o;  // nothing live changed: VERIFIED is printed before the shutdown starts
    }
    o.live_may_have_changed = true;
    if (restart && !o.shutdown_exit) {
        // Verified, then the shutdown command never reported: it (or its shell) was killed.
        o.failed = ActivationStep::shutdown;
        o.failed_exit = exit_code;
        return o;
    }
    if (restart && *o.shutdown_exit != 0) {
        o.failed = ActivationStep::shutdown;
        o.failed_exit = o.shutdown_exit;
        return o;
    }
    if (!o.activated) {
        o.failed = ActivationStep::activate;
        o.failed_exit = exit_code;
        return o;
    }
    if (restart && !ok) {
        o.failed = ActivationStep::startup;
        o.failed_exit = exit_code;
    }
    return o;
}

ActivationOutcome activation_lost(std::string_view out, bool restart) {
    // The markers seen, read as a command that was killed (no exit code) after them.
    ActivationOutcome o = parse_activation(out, std::nullopt, restart);
    if (o.activated && !restart) o.failed.reset();  // everything was done; only the answer is lost
    o.failed_exit.reset();
    o.live_may_have_changed = true;
    return o;
}

}  // namespace guardia::deploy
