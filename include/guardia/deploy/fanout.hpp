// Ad-hoc fan-out (`guardia exec`): one sanitized command on every node of an inventory, over
// the same SSH layer and limits as a rollout, with each node's exit code and output tails.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/ssh/known_hosts.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace spdlog {
class logger;
}

namespace guardia::store {
class AuditWriter;
}

namespace guardia::deploy {

class CredentialStore;

struct FanoutOptions {
    FanoutOptions() {}
    std::size_t max_sessions = 200;
    double max_connections_per_second = 100;  // 0: unlimited
    std::chrono::milliseconds connect_timeout{10000};
    std::chrono::milliseconds command_timeout{60000};
    std::size_t max_output = 64 << 10;  // bytes of stdout and of stderr kept per node
    std::shared_ptr<ssh::KnownHosts> known_hosts;
    ssh::HostKeyPolicy host_key_policy = ssh::HostKeyPolicy::strict;
    std::shared_ptr<CredentialStore> credentials;
    store::AuditWriter* audit = nullptr;  // optional: one EXEC event per node
    std::string sr_id, run_id;            // audit keys
    std::shared_ptr<spdlog::logger> logger;
    CommandPolicy policy;  // exec.allow: when set, the command must match it
};

struct FanoutResult {
    FanoutResult() {}
    std::string node;
    bool ran = false;    // the command ran to an exit status
    int exit_code = -1;  // meaningful when ran (-1: killed by a signal)
    std::string exit_signal;
    std::string out, err;  // tails, bounded by max_output
    Error error;           // connection / timeout / refusal when !ran
    std::chrono::milliseconds duration{0};
    bool succeeded() const { return ran && exit_code == 0 && exit_signal.empty(); }
};

class Fanout {
  public:
    // The command is checked by the sanitizer here: a refusal is errc::security_violation and
    // nothing is sent anywhere.
    static Result<std::unique_ptr<Fanout>> create(Inventory inventory, std::string command,
                                                  FanoutOptions options);
    // Guardia's own read-only script, one per node (`guardia inspect`): `script_for(node)` is
    // this engine's text, not operator input, so it is not judged by the sanitizer; every value
    // it inserts must be shell_quote()d. Same sessions, limits and host key checks as create().
    static Result<std::unique_ptr<Fanout>> create_script(
        Inventory inventory, std::function<std::string(const Node&)> script_for,
        FanoutOptions options);
    ~Fanout();
    // Results in inventory order.
    boost::asio::awaitable<std::vector<FanoutResult>> run();
    // No new node starts; commands in flight are interrupted (their sessions closed).
    void cancel();

  private:
    Fanout();
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace guardia::deploy
