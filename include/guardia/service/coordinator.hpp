// The service's decision-maker, without HTTP: it owns the tasks' lifecycle (task_status.hpp),
// the node claims across SRs (claims.hpp), the rollouts and PM rollbacks in flight, crash
// recovery and the drain. Every operation returns a ServiceResult: the API layer
// (deploy_service.cpp) turns requests into these calls and ServiceErrors into HTTP answers.
//
// Everything runs on the one event loop. Store reads go through a Database connection of its
// own on the local I/O pool (never on the loop); every write goes through the AuditWriter, and
// a state reported as final is durable first. Each audit row of an API action names the
// principal (the API client) behind it.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/deploy/engine_config.hpp"
#include "guardia/deploy/rollout.hpp"
#include "guardia/service/approvals.hpp"
#include "guardia/service/claims.hpp"
#include "guardia/service/metrics.hpp"
#include "guardia/service/service_config.hpp"
#include "guardia/service/service_error.hpp"
#include "guardia/store/records.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace spdlog {
class logger;
}

namespace guardia::store {
class AuditWriter;
class Database;
}  // namespace guardia::store

namespace guardia::deploy {
class CredentialStore;
}

namespace guardia::ssh {
class KnownHosts;
}

namespace guardia::service {

class Notifier;
class ClientRegistry;

struct DeployServiceDeps {
    DeployServiceDeps() {}
    deploy::EngineConfig engine;  // rollout policy and pipeline limits for every rollout
    ServiceConfig service;
    std::shared_ptr<const ClientRegistry> clients;  // required: who may call which route
    std::string db_path;
    store::AuditWriter* audit = nullptr;  // required, started
    Notifier* notifier = nullptr;         // optional: no webhooks without it
    std::shared_ptr<deploy::CredentialStore> credentials;
    std::shared_ptr<ssh::KnownHosts> known_hosts;
    std::string owner;  // "guardia@<host>:<pid>": written into the node locks
    std::shared_ptr<spdlog::logger> logger;
};

class Coordinator {
  public:
    // Opens its read connection to the store (throws std::runtime_error naming the file).
    Coordinator(boost::asio::any_io_executor executor, DeployServiceDeps deps);
    ~Coordinator();
    Coordinator(const Coordinator&) = delete;
    Coordinator& operator=(const Coordinator&) = delete;

    struct TaskView {
        store::TaskRecord task;
        std::vector<store::ArtifactRecord> artifacts;
    };
    struct NewTask {
        NewTask() {}
        std::string sr_id, inst_id, system_name, requester, title;
    };
    boost::asio::awaitable<ServiceResult<TaskView>> create_task(NewTask request,
                                                                std::string principal);
    boost::asio::awaitable<ServiceResult<TaskView>> task(std::string sr_id);

    // The import's body as the engine's strict parser and the service's credential rules
    // (inventory_policy.hpp) judge it; returns the node names and what changed.
    struct Imported {
        std::vector<std::string> names;
        boost::json::object changes;  // changes_json(): added / changed (fields) / unchanged
    };
    boost::asio::awaitable<ServiceResult<Imported>> import_inventory(boost::json::object body,
                                                                     std::string principal);
    // Stored node documents (JSON text) of inst_id/system_name (empty: any).
    boost::asio::awaitable<ServiceResult<std::vector<std::string>>> list_inventory(
        std::string inst_id, std::string system_name);

    // Writes the artifact's bytes to the temporary path it is given (off the loop); returns
    // the byte count.
    using ArtifactWriter = std::function<Result<std::int64_t>(const std::string& tmp_path)>;
    struct StageRequest {
        StageRequest() {}
        std::string sr_id, name, sha256;
        ArtifactWriter write;  // its errors are judged by staging_failure() (staging_policy.hpp)
        // The caller sent these bytes: a checksum mismatch may tell it their digest. False for
        // the path form, whose file the caller may not otherwise read.
        bool caller_sent_bytes = true;
    };
    boost::asio::awaitable<ServiceResult<store::ArtifactRecord>> stage(StageRequest request,
                                                                       std::string principal);

    struct Work;  // a rollout or PM rollback in flight (opaque)
    struct Answer {
        Answer() {}
        int status = 200;         // 200 done, 201 created, 202 accepted (work runs)
        boost::json::object body;  // the answer as docs/API.md shows it
        std::shared_ptr<Work> work;  // set when work runs: wait() for its final answer
    };
    struct TriggerRequest {
        TriggerRequest() {}
        std::string sr_id, approver, idempotency_key;
        std::optional<ArtifactSet> expected;  // the set the approver saw, if the request names it
    };
    boost::asio::awaitable<ServiceResult<Answer>> trigger(TriggerRequest request,
                                                          std::string principal);
    struct VerdictRequest {
        VerdictRequest() {}
        std::string sr_id, pm_id, comment;
        bool accepted = false;
    };
    boost::asio::awaitable<ServiceResult<Answer>> verdict(VerdictRequest request,
                                                          std::string principal);
    // An operator's rollback of the SR's deployed nodes (PENDING_PM_VALIDATION, COMPLETED or
    // FAILED_ROLLBACK): the PM rollback's work, each node's release marker also checked.
    boost::asio::awaitable<ServiceResult<Answer>> rollback(std::string sr_id,
                                                           std::string principal);
    // Operator control of the SR's rollout in flight (issue 14): pause, resume, abort, as the
    // rollout's state machine (deploy::decide_control) allows. `may_approve`: the principal may
    // open a tier gate (role validate). Each is audited naming the principal, durable before
    // the answer, and sent as a webhook (rollout_paused / rollout_resumed / rollout_aborted).
    // Errors: not_found (no task), no_rollout_in_flight, control_refused (details: state,
    // refusal), approval_needs_validate. Answers 200 (pause, resume) or 202 (abort: nodes in
    // flight finish; ?wait=true waits for the rollout's end).
    struct ControlCall {
        ControlCall() {}
        std::string sr_id;
        deploy::ControlRequest request = deploy::ControlRequest::pause;
        std::optional<deploy::AbortPolicy> on_abort;
        bool may_approve = false;  // role validate
        bool may_operate = false;  // role operate
    };
    boost::asio::awaitable<ServiceResult<Answer>> control(ControlCall call, std::string principal);
    // The final answer of a rollout or rollback (?wait=true).
    boost::asio::awaitable<boost::json::object> wait(std::shared_ptr<Work> work);

    // The rollout of an SR while it runs (the status view reads its live progress).
    struct Live {
        const deploy::RolloutReport* progress = nullptr;
        std::string task_status;
        std::string rollout_id;
        std::int64_t created_ms = 0;
    };
    std::optional<Live> live(const std::string& sr_id) const;

    // A read on the store's read connection, off the loop: fn(store::Database&).
    template <class Fn>
    boost::asio::awaitable<std::invoke_result_t<Fn&, store::Database&>> read(Fn fn);

    // Start-up, before the listener opens: finishes what a previous process left in flight
    // (rollouts without an end, PM rollbacks, tasks whose final status was not written) and
    // rebuilds the node claims. Returns how many rollouts/tasks it recovered.
    boost::asio::awaitable<std::size_t> recover();
    // Graceful stop (see DeployService::drain).
    boost::asio::awaitable<void> drain(std::chrono::milliseconds grace);

    bool stopping() const;
    std::size_t running() const;  // rollouts and PM rollbacks in flight
    std::size_t deploying() const;
    std::size_t rolling_back() const;
    const ClaimTable& claims() const;

    struct Stats {
        std::map<std::string, std::uint64_t> rollouts_by_status, nodes_by_outcome;
        std::map<std::string, Histogram> steps;                // by step (step_duration_buckets)
        std::map<std::string, Histogram> rollouts_by_duration;  // by final status
    };
    const Stats& stats() const;
    const DeployServiceDeps& deps() const;

    struct Impl;  // coordinator_impl.hpp

  private:
    boost::asio::awaitable<void> read_on_pool(std::function<void(store::Database&)> fn);
    std::shared_ptr<Impl> impl_;
};

// A node an SR's release is on, with the backup that holds the node as it was before it.
struct DeployedNode {
    store::NodeResult latest;  // the node's latest row among the SR's rollouts
    std::string first_backup;  // the first backup the SR took after any other SR's change
};
// From the history of every node the SR touched (store::Database::node_histories: all SRs'
// rows, oldest first per node): the nodes the SR's release is on now, by name, and the backup
// to restore each from. Pure; used by the PM rollback and to rebuild claims.
std::map<std::string, DeployedNode> deployed_restore_points(
    const std::string& sr_id, const std::vector<store::NodeHistoryRow>& rows);

// Identifiers that become directory names, rollout ids and file names: a closed alphabet, never
// "." or "..". SR ids: 1-128 of A-Z a-z 0-9 . _ : -; artifact names the same without ':'.
bool valid_sr_id(std::string_view s);
bool valid_artifact_name(std::string_view s);
bool valid_sha256(std::string_view s);  // 64 lower-case hex digits

template <class Fn>
boost::asio::awaitable<std::invoke_result_t<Fn&, store::Database&>> Coordinator::read(Fn fn) {
    using R = std::invoke_result_t<Fn&, store::Database&>;
    std::optional<R> out;
    co_await read_on_pool([&](store::Database& db) { out.emplace(fn(db)); });
    co_return std::move(*out);
}

}  // namespace guardia::service
