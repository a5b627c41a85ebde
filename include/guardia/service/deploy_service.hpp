// The service's HTTP API (docs/API.md is the contract): one route table {method, path
// pattern, role, handler} decides who may call what; each handler turns a request into a call
// of the Coordinator (coordinator.hpp: tasks, claims, rollouts, recovery, drain) and its
// ServiceResult into an answer, through one mapping of service errors to HTTP statuses.
// Everything runs on the one event loop.
#pragma once

#include "guardia/http/server.hpp"
#include "guardia/service/coordinator.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>
#include <memory>
#include <string>

namespace guardia::service {

enum class Role : std::uint8_t;

// One row of the route table, for docs and tests: method, path ("{}" for a variable segment)
// and the role it needs (nullopt: public).
struct RouteInfo {
    std::string method;
    std::string path;
    std::optional<Role> role;
    std::optional<Role> also_role;  // a second role that admits the caller too
};

// The HTTP status each service error is answered with, and the answer itself:
// {"error": to_string(code), "message": ..., plus the error's details}.
boost::beast::http::status http_status(ServiceErrc code) noexcept;
http::Response error_answer(const http::Request& req, const ServiceError& e);

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

    // The server's admit hook: a request head is let in when it is public (GET /healthz, the
    // console's files, /ui/session) or carries a known Bearer token or a live session cookie;
    // else the 401 to send. A cookie's CSRF proof is checked later, by the router.
    std::optional<http::Response> admit(const http::Request& head);

    // The HTTP entry point (the server's handler).
    boost::asio::awaitable<http::Response> handle(http::Request request);
    // The same, able to answer with a stream (the live routes, GET /api/deploy/{sr}/events and
    // GET /api/events): what `guardia serve` gives its server. Through handle() those routes
    // answer 406.
    boost::asio::awaitable<http::Reply> handle_streaming(http::Request request);

    // Graceful stop: triggers are refused from now on (503); running rollouts start no new
    // node and their in-flight nodes finish (deployed or rolled back); past `grace` they are
    // cancelled (in-flight nodes roll back). Completes when no rollout or rollback runs and
    // every final status is durable.
    boost::asio::awaitable<void> drain(std::chrono::milliseconds grace);

    bool stopping() const;
    std::size_t running() const;  // rollouts and PM rollbacks in flight

    static std::vector<RouteInfo> routes();

  private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace guardia::service
