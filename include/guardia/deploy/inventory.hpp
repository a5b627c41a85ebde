// The inventory: which nodes a rollout touches and how (docs/OPERATIONS.md; conf/inventory.example.json).
//
// Parsing is strict because every value here ends up in a remote command or a connection:
// unknown fields, duplicate keys and bad values are refused with a message naming the source,
// the node and the field, before anything is started.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/core/sanitizer.hpp"
#include "guardia/http/health_probe.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::deploy {

// Every struct here declares its default constructor so that none is an aggregate: GCC 12
// miscompiles braced aggregate temporaries passed by value to coroutines.

// How the HEALTH step decides the node is up (docs/OPERATIONS.md, "Health checks").
struct HealthSpec {
    HealthSpec() {}
    http::ProbeKind type = http::ProbeKind::http;  // "type": http (default), https, tcp, command
    std::uint16_t port = 0;  // required for http, https and tcp; not given for command
    std::string path = "/";  // http, https
    std::chrono::seconds timeout{30};         // "timeout_s": give up after this long
    std::chrono::seconds interval{2};         // "interval_s": between probes
    std::chrono::seconds attempt_timeout{5};  // "attempt_timeout_s": one probe at most
    http::StatusSet expect_status;            // http, https: default [200]
    std::string body_contains;                // http, https: empty = no body check
    std::string ca_file;                      // https: absolute path of a PEM bundle
    std::string tls_server_name;              // https: SNI and verified name instead of host
    bool insecure_skip_verify = false;        // https: no certificate verification at all
    std::string command;                      // command: run on the node, exit 0 = healthy
};

// Exactly one of the three is set.
struct NodeAuth {
    NodeAuth() {}
    std::string key_file;      // absolute path of a private key on the deploy host
    std::string password_ref;  // name of a password in the credentials file
    bool agent = false;        // use ssh-agent's keys
};

struct Node {
    Node() {}
    std::string name;  // unique in the inventory, [A-Za-z0-9._-]{1,64}
    std::string host;
    std::uint16_t ssh_port = 22;
    std::string user;
    NodeAuth auth;
    std::string deploy_path;  // absolute, normalised, not a system directory
    int tier = 2;  // 1..99 (rollout.tiers; by default 1 critical, 2 standard, 3 test/dev)
    std::string inst_id, system_name;
    bool requires_restart = true;
    std::string shutdown_cmd, startup_cmd;  // both required when requires_restart
    HealthSpec health;
};

struct Inventory {
    Inventory() {}
    std::vector<Node> nodes;
};

// Parses and validates an inventory document ("defaults" merged into nodes; `source`: its name).
// Errors are errc::invalid_argument, or errc::security_violation when a shutdown/startup
// command is refused by the command sanitizer; the first error found is returned:
//   "nodes.json:3:17: invalid JSON: syntax error"
//   "nodes.json: node 'web-01': field 'deploy_path': must be an absolute path"
Result<Inventory> parse_inventory(std::string_view json, std::string_view source);
// The same, with the shutdown/startup commands also held against an allow-list (exec.allow).
Result<Inventory> parse_inventory(std::string_view json, std::string_view source,
                                  const CommandPolicy& policy);

// Reads `path` (errc::local_io_failed naming the path if it cannot) and parses it.
Result<Inventory> load_inventory(const std::string& path);
Result<Inventory> load_inventory(const std::string& path, const CommandPolicy& policy);

}  // namespace guardia::deploy
