// The service's core: the HTTP API's handlers, the task lifecycle, rollouts in flight, the PM
// verdict, crash recovery and the graceful drain (docs/API.md is the contract).
//
// Everything runs on the one event loop: handlers, rollouts, rollbacks. Store reads go through
// a Database connection of its own on the local I/O pool (never on the loop); every write goes
// through the AuditWriter, and a state the API reports as final is durable first.
//
// Task lifecycle (status column of the tasks table):
//   CREATED -> DEPLOYING -> PENDING_PM_VALIDATION -> COMPLETED
//                        \-> FAILED_ROLLBACK       \-> ROLLING_BACK -> ROLLED_BACK |
//                        ROLLBACK_FAILED
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/deploy/engine_config.hpp"
#include "guardia/http/server.hpp"
#include "guardia/service/service_config.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace guardia::store {
class AuditWriter;
}

namespace guardia::deploy {
class CredentialStore;
}

namespace guardia::ssh {
class KnownHosts;
}

namespace guardia::service {

class Notifier;

struct DeployServiceDeps {
    DeployServiceDeps() {}
    deploy::EngineConfig engine;  // rollout policy and pipeline limits for every rollout
    ServiceConfig service;
    std::string api_token;
    std::shared_ptr<const ClientRegistry> clients;  // set: authenticates instead of api_token
    std::string db_path;
    store::AuditWriter* audit = nullptr;  // required, started
    Notifier* notifier = nullptr;         // optional: no webhooks without it
    std::shared_ptr<deploy::CredentialStore> credentials;
    std::shared_ptr<ssh::KnownHosts> known_hosts;
    std::string owner;  // "guardia@<host>:<pid>": written into the node locks
    std::shared_ptr<spdlog::logger> logger;
};

class DeployService {
  public:
    // Opens its read connection to the store (throws std::runtime_error naming the file).
    DeployService(boost::asio::any_io_executor executor, DeployServiceDeps deps);
    ~DeployService();
    DeployService(const DeployService&) = delete;
    DeployService& operator=(const DeployService&) = delete;

    // Start-up, before the listener opens: finishes what a previous process left in flight
    // (rollouts without an end, PM rollbacks, tasks whose final status was not written).
    // Never throws for node failures; returns how many rollouts/tasks it recovered.
    boost::asio::awaitable<std::size_t> recover();

    // The HTTP entry point (the server's handler).
    boost::asio::awaitable<http::Response> handle(http::Request request);

    // Graceful stop: triggers are refused from now on (503); running rollouts start no new
    // node and their in-flight nodes finish (deployed or rolled back); past `grace` they are
    // cancelled (in-flight nodes roll back). Completes when no rollout or rollback runs and
    // every final status is durable.
    boost::asio::awaitable<void> drain(std::chrono::milliseconds grace);

    bool stopping() const;
    std::size_t running() const;  // rollouts and PM rollbacks in flight

  private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace guardia::service
