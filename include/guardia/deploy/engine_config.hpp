// The engine's configuration file (JSON), shared by `guardia deploy --config` and
// `guardia serve`: rollout policy, pipeline limits, SSH trust, store. Every section and
// field is optional and has the default conf/guardia.json spells out; unknown fields and bad values are refused
// with a message naming the file and the field ("guardia.json: rollout.tiers[1].mode: ...").
// conf/guardia.json is the documented example.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/core/sanitizer.hpp"
#include "guardia/deploy/node_pipeline.hpp"
#include "guardia/deploy/rollout.hpp"
#include "guardia/ssh/known_hosts.hpp"

#include <boost/json/value.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::deploy {

struct EngineConfig {
    EngineConfig() {}
    RolloutConfig rollout;
    // Only the limits and deadlines are read from the file (section "pipeline"); identity,
    // credentials and the audit writer are filled in by the caller.
    PipelineSettings pipeline;
    std::string known_hosts;  // "ssh.known_hosts"; empty: the caller's default
    ssh::HostKeyPolicy host_key_policy = ssh::HostKeyPolicy::strict;
    std::string credentials_file;  // "ssh.credentials_file": passwords by reference (0600)
    // "ssh.key_dirs": absolute directories an inventory's auth.key_file must resolve into.
    // nullopt (absent): guardia deploy/exec accept any key file, guardia serve only
    // /etc/guardia/keys (key_policy.hpp).
    std::optional<std::vector<std::string>> key_dirs;
    std::string db;                // "store.db"; empty: the caller's default
    // "exec.allow": when set, `guardia exec` and the inventory's shutdown/startup commands
    // must match one of these argv-prefix patterns (on top of the sanitizer).
    CommandPolicy command_policy;
    // Sections owned by the service ("service", "notifications"), kept as read.
    boost::json::value service;
    boost::json::value notifications;
};

Result<EngineConfig> parse_engine_config(std::string_view text, std::string_view source);
Result<EngineConfig> load_engine_config(const std::string& path);

}  // namespace guardia::deploy
