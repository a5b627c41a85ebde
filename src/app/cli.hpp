// Shared pieces of the command-line layer: argument reading and the engine set-up that
// `deploy` and `exec` have in common. Everything here runs before the event loop starts.
#pragma once

#include "guardia/deploy/credential_store.hpp"
#include "guardia/deploy/engine_config.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/ssh/known_hosts.hpp"

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace guardia::cli {

// A usage or input problem found before anything started: printed, exit code 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The audit database cannot be written (full disk, I/O error, locked): printed, exit code 3
// (audit or stop: nothing was started).
struct AuditUnavailable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Reads `--flag value` / `--flag=value` / `--switch` arguments in order.
class Args {
  public:
    Args(int argc, char** argv, int first);
    bool done() const { return i_ >= args_.size(); }
    // The next argument when it is a flag ("--x" or "--x=v"); the value part is kept.
    // "-h" is returned as "--help" (the only short flag).
    std::string flag();
    std::string value();              // the value of the flag just read
    std::vector<std::string> rest();  // everything after "--"
    bool at_separator() const { return !done() && args_[i_] == "--"; }
    void skip() { ++i_; }

  private:
    std::vector<std::string> args_;
    std::size_t i_ = 0;
    std::string flag_;
    std::optional<std::string> inline_value_;
};

struct Common {
    std::string inventory_path, config_path, known_hosts_path, db_path;
    std::string host_key_policy;  // empty: config's
    bool json = false;
};

// Handles a flag both commands share; false if `flag` is not one of them.
bool common_flag(const std::string& flag, Args& args, Common& c);

// The configuration file a command reads, in this order: --config FILE; else the
// environment variable GUARDIA_CONFIG when set and not empty; else /etc/guardia/guardia.json
// when it exists; else "" (the built-in defaults). Every command that reads a configuration
// resolves it here (load_engine does).
inline constexpr const char* system_config_path = "/etc/guardia/guardia.json";
std::string resolve_config_path(const Common& c);
// Which of those rules chose it, for --help and progress output:
// "/x.json (--config)", "/x.json (GUARDIA_CONFIG)", "/etc/guardia/guardia.json (it exists)",
// "built-in defaults (no --config, GUARDIA_CONFIG or /etc/guardia/guardia.json)".
std::string describe_config(const Common& c);
// The audit database: --db FILE, else the configuration's store.db, else ./guardia.db.
std::string resolve_db_path(const Common& c, const deploy::EngineConfig& config);

// Prints a command's usage text, then which configuration it would read (when
// `reads_config`), on stdout: the answer to --help / -h (exit 0).
int print_help(const char* usage, const Common& c, bool reads_config);

struct Engine {
    std::string config_path;  // the file read (resolve_config_path); "": built-in defaults
    deploy::EngineConfig config;
    deploy::Inventory inventory;
    std::shared_ptr<ssh::KnownHosts> known_hosts;
    std::shared_ptr<deploy::CredentialStore> credentials;
    ssh::HostKeyPolicy host_key_policy = ssh::HostKeyPolicy::strict;
};

// Loads config, inventory (unless `with_inventory` is false: the service keeps its own),
// known_hosts and credentials; throws UsageError naming the culprit.
Engine load_engine(const Common& c, bool with_inventory = true);

// No core dumps and no ptrace/proc access by other processes of the same user: credentials
// (SSH keys, passwords, API tokens) are in this process's memory. prctl(PR_SET_DUMPABLE, 0)
// and RLIMIT_CORE {0, 0}; a refusal (e.g. systemd's SystemCallFilter, which sets LimitCORE=0
// itself) is not an error. Called before any credential is loaded.
void harden_process();

std::string utc_stamp_compact();  // 20261127T101500Z
std::string owner_id();           // guardia@<host>:<pid>

}  // namespace guardia::cli
