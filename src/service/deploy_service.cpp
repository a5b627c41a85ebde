#include "guardia/service/deploy_service.hpp"

#include "guardia/core/json_input.hpp"
#include "guardia/core/local_io.hpp"
#include "guardia/deploy/credential_store.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/deploy/node_pipeline.hpp"
#include "guardia/deploy/rollout.hpp"
#include "guardia/service/inventory_policy.hpp"
#include "guardia/service/notifier.hpp"
#include "guardia/service/staging_policy.hpp"
#include "guardia/ssh/session.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

namespace guardia::service {

namespace asio = boost::asio;
namespace json = boost::json;
namespace bh = boost::beast::http;
using Clock = std::chrono::steady_clock;

namespace {

// Task statuses (the tasks table's vocabulary).
constexpr std::string_view kCreated = "CREATED";
constexpr std::string_view kDeploying = "DEPLOYING";
constexpr std::string_view kPendingPm = "PENDING_PM_VALIDATION";
constexpr std::string_view kFailedRollback = "FAILED_ROLLBACK";
constexpr std::string_view kCompleted = "COMPLETED";
constexpr std::string_view kRollingBack = "ROLLING_BACK";
constexpr std::string_view kRolledBack = "ROLLED_BACK";
constexpr std::string_view kRollbackFailed = "ROLLBACK_FAILED";

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string utc_compact() {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
    return buf;
}

bool id_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-' || c == ':';
}

// SR ids become directory names and rollout ids: a closed alphabet, never "." or "..".
bool valid_sr_id(std::string_view s) {
    if (s.empty() || s.size() > 128) return false;
    if (s.find_first_not_of('.') == std::string_view::npos) return false;
    return std::all_of(s.begin(), s.end(), id_char);
}

bool valid_artifact_name(std::string_view s) {
    if (s.empty() || s.size() > 128) return false;
    if (s.find_first_not_of('.') == std::string_view::npos) return false;
    return std::all_of(s.begin(), s.end(), [](char c) { return c != ':' && id_char(c); });
}

bool valid_sha256(std::string_view s) {
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

bool deployable(std::string_view status) {
    return status == kCreated || status == kFailedRollback;
}

json::object task_json(const store::TaskRecord& t,
                       const std::vector<store::ArtifactRecord>& artifacts) {
    json::object o;
    o["sr_id"] = t.sr_id;
    o["status"] = t.status;
    o["inst_id"] = t.inst_id;
    o["system_name"] = t.system_name;
    o["requester"] = t.requester;
    o["approver"] = t.approver;
    o["rollout_id"] = t.rollout_id;
    o["reason"] = t.reason;
    o["created_ms"] = t.created_ms;
    o["updated_ms"] = t.updated_ms;
    json::array a;
    for (const auto& r : artifacts)
        a.push_back(json::object{{"name", r.name}, {"sha256", r.sha256}, {"size", r.size}});
    o["artifacts"] = std::move(a);
    return o;
}

// A field of a request object: absent / wrong type / empty are errors naming the field.
Result<std::string> required_string(const json::object& o, std::string_view field,
                                    std::size_t max_len = 256) {
    const auto* v = o.if_contains(field);
    if (!v) return Error(errc::invalid_argument, std::string(field) + ": required");
    if (!v->is_string())
        return Error(errc::invalid_argument, std::string(field) + ": must be a string");
    std::string s(v->get_string());
    if (s.empty()) return Error(errc::invalid_argument, std::string(field) + ": must not be empty");
    if (s.size() > max_len)
        return Error(errc::invalid_argument,
                     std::string(field) + ": longer than " + std::to_string(max_len));
    return s;
}

Result<std::string> optional_string(const json::object& o, std::string_view field,
                                    std::size_t max_len = 4096) {
    const auto* v = o.if_contains(field);
    if (!v || v->is_null()) return std::string();
    if (!v->is_string())
        return Error(errc::invalid_argument, std::string(field) + ": must be a string");
    if (v->get_string().size() > max_len)
        return Error(errc::invalid_argument,
                     std::string(field) + ": longer than " + std::to_string(max_len));
    return std::string(v->get_string());
}

Result<void> only_fields(const json::object& o, std::initializer_list<std::string_view> known) {
    for (const auto& kv : o)
        if (std::find(known.begin(), known.end(), kv.key()) == known.end())
            return Error(errc::invalid_argument, printable(kv.key()) + ": unknown field");
    return {};
}

// Prometheus label values: backslash, quote and newline escaped.
std::string label(std::string_view v) {
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"')
            out += '\\', out += c;
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

json::object tier_json(const deploy::TierProgress& t) {
    return json::object{{"tier", t.tier},         {"total", t.total},   {"started", t.started},
                        {"finished", t.finished}, {"failed", t.failed}, {"in_flight", t.in_flight},
                        {"skipped", t.skipped}};
}

json::object node_json(const std::string& name, std::int64_t tier, const std::string& state,
                       const std::string& step, const std::string& error,
                       const std::string& backup_path) {
    return json::object{{"name", name}, {"tier", tier},   {"state", state},
                        {"step", step}, {"error", error}, {"backup_path", backup_path}};
}

json::object recovered_flag() {
    json::object o;
    o["recovered"] = true;
    return o;
}

// Records how long each step of each node took, from the rollout's live progress: a step ends
// when the node's next step starts or the node finishes.
class StepTimer : public deploy::RolloutObserver {
  public:
    explicit StepTimer(std::function<void(const std::string&, double)> sink)
        : sink_(std::move(sink)) {}
    void node_step(const deploy::NodeProgress& p) override { next(p.node.name, p.step); }
    void node_finished(const deploy::NodeProgress& p, const deploy::TierProgress&) override {
        next(p.node.name, {});
    }

  private:
    void next(const std::string& node, const std::string& step) {
        const auto now = Clock::now();
        auto it = open_.find(node);
        if (it != open_.end()) {
            sink_(it->second.first, std::chrono::duration<double>(now - it->second.second).count());
            open_.erase(it);
        }
        if (!step.empty()) open_.emplace(node, std::make_pair(step, now));
    }
    std::function<void(const std::string&, double)> sink_;
    std::map<std::string, std::pair<std::string, Clock::time_point>> open_;
};

}  // namespace

struct DeployService::Impl : std::enable_shared_from_this<DeployService::Impl> {
    // A rollout or PM rollback in flight for one SR.
    struct Active {
        explicit Active(asio::any_io_executor ex) : done_signal(ex) {
            done_signal.expires_at(Clock::time_point::max());
        }
        std::string kind;  // "deploy" or "rollback"
        store::TaskRecord task;
        std::string rollout_id;
        std::int64_t created_ms = 0;
        std::unique_ptr<deploy::Rollout> rollout;
        std::unique_ptr<StepTimer> step_timer;
        bool done = false;
        json::object final_body;  // the ?wait=true answer
        asio::steady_timer done_signal;
    };

    Impl(asio::any_io_executor ex, DeployServiceDeps d)
        : executor(std::move(ex)), deps(std::move(d)), reader(deps.db_path), changed(executor) {
        logger = deps.logger ? deps.logger : spdlog::default_logger();
        changed.expires_at(Clock::time_point::max());
    }

    asio::any_io_executor executor;
    DeployServiceDeps deps;
    std::shared_ptr<spdlog::logger> logger;
    store::Database reader;  // used on the local I/O pool only, one call at a time
    std::mutex reader_mu;
    std::map<std::string, std::shared_ptr<Active>> active;
    asio::steady_timer changed;  // cancelled whenever an Active ends: drain() waits on it
    bool stopping = false;
    std::uint64_t rollout_seq = 0;
    // Staging in progress per SR, and a count of stagings started: a trigger refuses while one
    // runs, and notices one that began and ended while it was reading the artifact list.
    std::map<std::string, int> staging_now;
    std::map<std::string, std::uint64_t> staging_started;
    std::uint64_t staging_seq = 0;

    struct IdemAnswer {
        std::string request;
        int status = 0;
        std::string body;
    };
    std::map<std::string, IdemAnswer> idempotent;  // answers given by this process

    // Metrics.
    std::map<std::string, std::uint64_t> rollouts_by_status, nodes_by_outcome;
    std::map<unsigned, std::uint64_t> http_by_status;
    struct StepStat {
        double sum = 0;
        std::uint64_t count = 0;
    };
    std::map<std::string, StepStat> steps;

    // --- store access ---------------------------------------------------------------------
    // Not a coroutine, like run_blocking() (see there): `fn` may own what it captures.
    template <class Fn>
    asio::awaitable<std::invoke_result_t<Fn&, store::Database&>> read(Fn fn) {
        return run_blocking([this, fn = std::move(fn)]() mutable {
            std::lock_guard lock(reader_mu);
            return fn(reader);
        });
    }

    asio::awaitable<Result<void>> durable() { co_return co_await deps.audit->durable(); }

    void audit_task(const store::TaskRecord& t, std::string event, std::string detail) {
        store::AuditEvent e;
        e.sr_id = t.sr_id;
        e.rollout_id = t.rollout_id;
        e.step = "TASK";
        e.event = std::move(event);
        e.detail = std::move(detail);
        deps.audit->record(std::move(e));
    }

    // Writes the task's new status and waits until it is durable: only then is it reported.
    asio::awaitable<Result<void>> set_status(store::TaskRecord& t, std::string_view status,
                                             const std::string& reason, const std::string& detail) {
        t.status = std::string(status);
        t.reason = reason;
        t.updated_ms = now_ms();
        deps.audit->upsert_task(t);
        audit_task(t, "TASK_" + t.status, detail.empty() ? t.reason : detail);
        auto r = co_await durable();
        if (!r)
            logger->error("SR {}: status {} not yet durable: {}", t.sr_id, t.status,
                          r.error().message);
        co_return r;
    }

    asio::awaitable<void> notify(std::string_view event, const store::TaskRecord& t,
                                 json::object extra) {
        if (!deps.notifier) co_return;
        // The task as the API shows it, plus the event's own fields.
        json::object fields = task_json(t, {});
        fields.erase("artifacts");
        for (auto& kv : extra) fields[kv.key()] = std::move(kv.value());
        auto r = co_await deps.notifier->enqueue(event, fields);
        if (!r)
            logger->error("SR {}: could not queue the {} notification: {}", t.sr_id, event,
                          r.error().message);
    }

    // --- inventory and artifacts ------------------------------------------------------------
    // Stored nodes are judged again: exec.allow may be stricter than when they were imported.
    Result<deploy::Inventory> inventory_from(
        const std::vector<store::InventoryNodeRecord>& rows, const std::string& what) const {
        const CommandPolicy& policy = deps.engine.command_policy;
        json::array nodes;
        for (const auto& r : rows) {
            auto v = json::parse(r.payload);
            nodes.push_back(std::move(v));
        }
        auto inv = deploy::parse_inventory(
            json::serialize(json::object{{"nodes", std::move(nodes)}}), what, policy);
        if (!inv) return inv;
        if (auto ok = admit_inventory(*inv, deps.engine, deps.credentials.get(), what); !ok)
            return ok.error();
        return inv;
    }

    deploy::PipelineSettings pipeline_settings(const std::string& sr_id,
                                               const std::string& rollout_id) const {
        deploy::PipelineSettings s = deps.engine.pipeline;
        s.sr_id = sr_id;
        s.rollout_id = rollout_id;
        s.owner = deps.owner;
        s.known_hosts = deps.known_hosts;
        s.host_key_policy = deps.engine.host_key_policy;
        s.credentials = deps.credentials;
        s.audit = deps.audit;
        s.logger = logger;
        return s;
    }

    void node_outcome_metric(std::string_view outcome) { ++nodes_by_outcome[std::string(outcome)]; }

    // Runs fn(i) for i in [0, n) with at most `limit` at once on the loop; waits for all.
    asio::awaitable<void> run_bounded(std::size_t n, std::size_t limit,
                                      const std::function<asio::awaitable<void>(std::size_t)>& fn) {
        if (n == 0) co_return;
        limit = std::max<std::size_t>(1, limit);
        auto gate = std::make_shared<asio::steady_timer>(executor);
        auto running = std::make_shared<std::size_t>(0);
        auto finished = std::make_shared<std::size_t>(0);
        auto wait = [gate]() -> asio::awaitable<void> {
            gate->expires_at(Clock::time_point::max());
            boost::system::error_code ec;
            co_await gate->async_wait(asio::redirect_error(asio::use_awaitable, ec));
        };
        for (std::size_t i = 0; i < n; ++i) {
            while (*running >= limit) co_await wait();
            ++*running;
            asio::co_spawn(
                executor,
                [fn, i, gate, running, finished]() -> asio::awaitable<void> {
                    try {
                        co_await fn(i);
                    } catch (const std::exception&) {
                        // fn reports its own failures; nothing may escape a detached spawn
                    }
                    --*running;
                    ++*finished;
                    gate->cancel();
                },
                asio::detached);
        }
        while (*finished < n) co_await wait();
    }

    void end_active(const std::string& sr_id, const std::shared_ptr<Active>& a) {
        a->done = true;
        a->done_signal.cancel();
        auto it = active.find(sr_id);
        if (it != active.end() && it->second == a) active.erase(it);
        changed.cancel();
    }

    static asio::awaitable<void> wait_done(std::shared_ptr<Active> a) {
        while (!a->done) {
            boost::system::error_code ec;
            co_await a->done_signal.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
    }

    // --- handlers ---------------------------------------------------------------------------
    asio::awaitable<http::Response> handle(http::Request req);
    asio::awaitable<http::Response> route(const http::Request& req,
                                          const std::vector<std::string>& seg);
    asio::awaitable<http::Response> import_inventory(const http::Request& req);
    asio::awaitable<http::Response> list_inventory(const http::Request& req);
    asio::awaitable<http::Response> create_task(const http::Request& req);
    asio::awaitable<http::Response> get_task(const http::Request& req, const std::string& sr_id);
    asio::awaitable<http::Response> stage_upload(const http::Request& req, const std::string& sr_id,
                                                 const std::string& name);
    asio::awaitable<http::Response> stage_from_path(const http::Request& req,
                                                    const std::string& sr_id);
    asio::awaitable<http::Response> stage(
        const http::Request& req, const std::string& sr_id, const std::string& name,
        const std::string& sha256,
        const std::function<Result<std::int64_t>(const std::string&)>& write_to);
    asio::awaitable<http::Response> trigger(const http::Request& req);
    asio::awaitable<http::Response> deploy_status(const http::Request& req,
                                                  const std::string& sr_id);
    asio::awaitable<http::Response> validation(const http::Request& req, const std::string& sr_id);
    asio::awaitable<http::Response> audit_page(const http::Request& req);
    http::Response healthz(const http::Request& req);
    http::Response metrics(const http::Request& req);

    // --- work -------------------------------------------------------------------------------
    asio::awaitable<void> run_deploy(std::shared_ptr<Active> a);
    asio::awaitable<void> run_pm_rollback(std::shared_ptr<Active> a);
    asio::awaitable<std::pair<std::size_t, std::size_t>> pm_rollback_nodes(
        const store::TaskRecord& task);
    asio::awaitable<void> recover_rollout(const store::RolloutRecord& r);
    asio::awaitable<std::size_t> recover();
    asio::awaitable<void> drain(std::chrono::milliseconds grace);

    http::Response bad(const http::Request& req, const Error& e) {
        return http::error_response(req, bh::status::bad_request, "bad_request", e.message);
    }
    http::Response conflict(const http::Request& req, const std::string& what) {
        return http::error_response(req, bh::status::conflict, "conflict", what);
    }
    http::Response store_failed(const http::Request& req, const Error& e) {
        return http::error_response(req, bh::status::service_unavailable, "store_unavailable",
                                    "the store could not be read or written: " + e.message);
    }
    http::Response refuse_stopping(const http::Request& req) {
        return http::error_response(req, bh::status::service_unavailable, "stopping",
                                    "the service is stopping: no new work is accepted");
    }
};

// --- routing ----------------------------------------------------------------------------------

asio::awaitable<http::Response> DeployService::Impl::handle(http::Request req) {
    http::Response res;
    auto seg = http::path_segments(req.target());
    if (!seg) {
        res = http::error_response(req, bh::status::bad_request, "bad_request",
                                   "the request path is not a valid URL path");
    } else {
        try {
            res = co_await route(req, *seg);
        } catch (const std::exception& e) {
            logger->error("{} {}: {}", std::string(req.method_string()), std::string(req.target()),
                          e.what());
            res = http::error_response(req, bh::status::internal_server_error, "internal_error",
                                       "internal error; see the service log");
        }
    }
    ++http_by_status[res.result_int()];
    co_return res;
}

asio::awaitable<http::Response> DeployService::Impl::route(const http::Request& req,
                                                           const std::vector<std::string>& seg) {
    const auto m = req.method();
    auto method_not_allowed = [&](std::string_view allowed) {
        auto r = http::error_response(req, bh::status::method_not_allowed, "method_not_allowed",
                                      "use " + std::string(allowed) + " on this path");
        r.set(bh::field::allow, allowed);
        return r;
    };
    if (seg.size() == 1 && seg[0] == "healthz")
        co_return m == bh::verb::get ? healthz(req) : method_not_allowed("GET");
    if (seg.size() == 1 && seg[0] == "metrics")
        co_return m == bh::verb::get ? metrics(req) : method_not_allowed("GET");
    if (seg.empty() || seg[0] != "api")
        co_return http::error_response(req, bh::status::not_found, "not_found",
                                       "no such path: " + printable(req.target()));
    if (!http::bearer_token_matches(req, deps.api_token)) {
        auto r = http::error_response(req, bh::status::unauthorized, "unauthorized",
                                      "a valid 'Authorization: Bearer <token>' header is required");
        r.set(bh::field::www_authenticate, "Bearer realm=\"guardia\"");
        co_return r;
    }
    const bool mutating = m != bh::verb::get && m != bh::verb::head;
    const std::size_t n = seg.size();
    auto found = [&](std::initializer_list<const char*> want) {
        if (want.size() != n) return false;
        std::size_t i = 0;
        for (const char* w : want) {
            if (*w != '*' && seg[i] != w) return false;
            ++i;
        }
        return true;
    };
    if (mutating && stopping) co_return refuse_stopping(req);
    if (found({"api", "inventory"})) {
        if (m == bh::verb::post) co_return co_await import_inventory(req);
        if (m == bh::verb::get) co_return co_await list_inventory(req);
        co_return method_not_allowed("GET, POST");
    }
    if (found({"api", "tasks"})) {
        if (m == bh::verb::post) co_return co_await create_task(req);
        co_return method_not_allowed("POST");
    }
    if (found({"api", "tasks", "*"})) {
        if (m == bh::verb::get) co_return co_await get_task(req, seg[2]);
        co_return method_not_allowed("GET");
    }
    if (found({"api", "tasks", "*", "artifacts"})) {
        if (m == bh::verb::post) co_return co_await stage_from_path(req, seg[2]);
        co_return method_not_allowed("POST");
    }
    if (found({"api", "tasks", "*", "artifacts", "*"})) {
        if (m == bh::verb::put) co_return co_await stage_upload(req, seg[2], seg[4]);
        co_return method_not_allowed("PUT");
    }
    if (found({"api", "tasks", "*", "validation"})) {
        if (m == bh::verb::post) co_return co_await validation(req, seg[2]);
        co_return method_not_allowed("POST");
    }
    if (found({"api", "deploy", "trigger"})) {
        if (m == bh::verb::post) co_return co_await trigger(req);
        co_return method_not_allowed("POST");
    }
    if (found({"api", "deploy", "*"})) {
        if (m == bh::verb::get) co_return co_await deploy_status(req, seg[2]);
        co_return method_not_allowed("GET");
    }
    if (found({"api", "audit"})) {
        if (m == bh::verb::get) co_return co_await audit_page(req);
        co_return method_not_allowed("GET");
    }
    co_return http::error_response(req, bh::status::not_found, "not_found",
                                   "no such path: " + printable(req.target()));
}

// --- registration -----------------------------------------------------------------------------

asio::awaitable<http::Response> DeployService::Impl::import_inventory(const http::Request& req) {
    auto parsed = http::parse_json_object(req, deps.service.max_json_depth);
    if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
    auto& body = std::get<json::object>(parsed);
    // The engine's own strict parser judges the document: the same errors as `guardia deploy`.
    auto inv = deploy::parse_inventory(json::serialize(body), "request body",
                                       deps.engine.command_policy);
    if (!inv) co_return bad(req, inv.error());
    if (auto ok = admit_inventory(*inv, deps.engine, deps.credentials.get(), "request body"); !ok)
        co_return bad(req, ok.error());
    const auto& nodes = body.at("nodes").as_array();
    auto stored = co_await read([](store::Database& db) { return db.inventory_nodes("", ""); });
    if (!stored) co_return store_failed(req, stored.error());
    const InventoryChanges changes = diff_inventory(*stored, nodes);
    json::array names;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
        store::InventoryNodeRecord r;
        r.name = inv->nodes[i].name;
        r.inst_id = inv->nodes[i].inst_id;
        r.system_name = inv->nodes[i].system_name;
        r.payload = json::serialize(nodes[i]);
        deps.audit->upsert_inventory_node(std::move(r));
        names.push_back(json::string(inv->nodes[i].name));
    }
    store::AuditEvent e;
    e.step = "INVENTORY";
    e.event = "INVENTORY_IMPORTED";
    e.detail = std::to_string(nodes.size()) + " node(s): " + changes_summary(changes);
    deps.audit->record(std::move(e));
    if (auto d = co_await durable(); !d) co_return store_failed(req, d.error());
    co_return http::json_response(
        req, bh::status::ok, json::object{{"imported", nodes.size()},
                                          {"nodes", std::move(names)},
                                          {"changes", changes_json(changes)}});
}

asio::awaitable<http::Response> DeployService::Impl::list_inventory(const http::Request& req) {
    auto q = http::query_params(req.target());
    if (!q) co_return bad(req, Error(errc::invalid_argument, "malformed query string"));
    std::string inst = (*q)["inst_id"], sys = (*q)["system_name"];
    auto rows = co_await read([&](store::Database& db) { return db.inventory_nodes(inst, sys); });
    if (!rows) co_return store_failed(req, rows.error());
    json::array nodes;
    for (const auto& r : *rows) nodes.push_back(json::parse(r.payload));
    co_return http::json_response(req, bh::status::ok, json::object{{"nodes", std::move(nodes)}});
}

asio::awaitable<http::Response> DeployService::Impl::create_task(const http::Request& req) {
    auto parsed = http::parse_json_object(req, deps.service.max_json_depth);
    if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
    auto& body = std::get<json::object>(parsed);
    if (auto ok = only_fields(body, {"sr_id", "inst_id", "system_name", "requester", "title"}); !ok)
        co_return bad(req, ok.error());
    auto sr = required_string(body, "sr_id", 128);
    if (!sr) co_return bad(req, sr.error());
    if (!valid_sr_id(*sr))
        co_return bad(req, Error(errc::invalid_argument,
                                 "sr_id: 1-128 characters of A-Z a-z 0-9 . _ : - (not only dots)"));
    auto inst = required_string(body, "inst_id");
    if (!inst) co_return bad(req, inst.error());
    auto sys = required_string(body, "system_name");
    if (!sys) co_return bad(req, sys.error());
    auto requester = optional_string(body, "requester", 256);
    if (!requester) co_return bad(req, requester.error());
    auto title = optional_string(body, "title");
    if (!title) co_return bad(req, title.error());

    const std::string sr_id = *sr;
    auto existing = co_await read([&](store::Database& db) { return db.task(sr_id); });
    if (!existing) co_return store_failed(req, existing.error());
    if (*existing || active.count(sr_id))
        co_return conflict(req, "task " + sr_id + " exists already");
    store::TaskRecord t;
    t.sr_id = sr_id;
    t.inst_id = *inst;
    t.system_name = *sys;
    t.requester = *requester;
    t.created_ms = now_ms();
    json::object payload;
    if (!title->empty()) payload["title"] = *title;
    t.payload = json::serialize(payload);
    if (auto d = co_await set_status(t, kCreated, "", "requested by " + t.requester); !d)
        co_return store_failed(req, d.error());
    co_return http::json_response(req, bh::status::created, task_json(t, {}));
}

asio::awaitable<http::Response> DeployService::Impl::get_task(const http::Request& req,
                                                              const std::string& sr_id) {
    auto t = co_await read([&](store::Database& db) { return db.task(sr_id); });
    if (!t) co_return store_failed(req, t.error());
    if (!*t)
        co_return http::error_response(req, bh::status::not_found, "not_found",
                                       "no task " + printable(sr_id));
    auto arts = co_await read([&](store::Database& db) { return db.artifacts_for(sr_id); });
    if (!arts) co_return store_failed(req, arts.error());
    co_return http::json_response(req, bh::status::ok, task_json(**t, *arts));
}

asio::awaitable<http::Response> DeployService::Impl::stage_upload(const http::Request& req,
                                                                  const std::string& sr_id,
                                                                  const std::string& name) {
    auto q = http::query_params(req.target());
    if (!q) co_return bad(req, Error(errc::invalid_argument, "malformed query string"));
    std::string sha = (*q)["sha256"];
    if (sha.empty() && req.count("X-Sha256")) sha = std::string(req["X-Sha256"]);
    const std::string* data = &req.body();
    const std::function<Result<std::int64_t>(const std::string&)> write =
        [data](const std::string& tmp) -> Result<std::int64_t> {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        out.write(data->data(), static_cast<std::streamsize>(data->size()));
        out.close();
        if (!out) return Error(errc::local_io_failed, "cannot write " + tmp);
        return static_cast<std::int64_t>(data->size());
    };
    co_return co_await stage(req, sr_id, name, lower(sha), write);
}

asio::awaitable<http::Response> DeployService::Impl::stage_from_path(const http::Request& req,
                                                                     const std::string& sr_id) {
    auto parsed = http::parse_json_object(req, deps.service.max_json_depth);
    if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
    auto& body = std::get<json::object>(parsed);
    if (auto ok = only_fields(body, {"name", "path", "sha256"}); !ok)
        co_return bad(req, ok.error());
    auto name = required_string(body, "name", 128);
    if (!name) co_return bad(req, name.error());
    auto path = required_string(body, "path", 4096);
    if (!path) co_return bad(req, path.error());
    if ((*path)[0] != '/')
        co_return bad(req, Error(errc::invalid_argument, "path: must be an absolute path"));
    auto sha = required_string(body, "sha256", 64);
    if (!sha) co_return bad(req, sha.error());
    const std::string src = *path;
    const std::string expected = lower(*sha);
    const std::string drop_dir = deps.service.drop_dir;
    const std::uint64_t max_bytes = deps.service.max_artifact_bytes;
    const std::function<Result<std::int64_t>(const std::string&)> copy =
        [src, expected, drop_dir, max_bytes](const std::string& tmp) -> Result<std::int64_t> {
        return copy_from_drop_dir(drop_dir, src, max_bytes, expected, tmp);
    };
    co_return co_await stage(req, sr_id, *name, lower(*sha), copy);
}

// Both staging forms: the bytes land in a temp file beside their final name, are hashed there
// (off the loop), and only a match is renamed into place and recorded.
asio::awaitable<http::Response> DeployService::Impl::stage(
    const http::Request& req, const std::string& sr_id, const std::string& name,
    const std::string& sha256,
    const std::function<Result<std::int64_t>(const std::string&)>& write_to) {
    if (!valid_artifact_name(name))
        co_return bad(req, Error(errc::invalid_argument,
                                 "name: 1-128 characters of A-Z a-z 0-9 . _ - (not only dots)"));
    if (!valid_sha256(sha256))
        co_return bad(req,
                      Error(errc::invalid_argument, "sha256: required, 64 hexadecimal characters"));
    auto t = co_await read([&](store::Database& db) { return db.task(sr_id); });
    if (!t) co_return store_failed(req, t.error());
    if (!*t)
        co_return http::error_response(req, bh::status::not_found, "not_found",
                                       "no task " + printable(sr_id));
    if (!deployable((*t)->status) || active.count(sr_id))
        co_return conflict(req, "task " + sr_id + " is " + (*t)->status +
                                    ": artifacts can be staged in CREATED or FAILED_ROLLBACK");
    ++staging_now[sr_id];
    ++staging_started[sr_id];
    struct Staging {
        std::map<std::string, int>& now;
        const std::string& sr;
        ~Staging() {
            if (--now[sr] == 0) now.erase(sr);
        }
    } staging{staging_now, sr_id};
    const std::string dir = deps.service.state_dir + "/artifacts/" + sr_id;
    const std::string final_path = dir + "/" + name;
    // Unique per staging: two uploads of one name never write the same temp file.
    const std::string tmp =
        final_path + ".staging-" + std::to_string(::getpid()) + "-" + std::to_string(++staging_seq);
    struct Staged {
        Result<std::int64_t> size = Error(errc::invalid_argument, "not run");
        std::string actual;
    };
    Staged st = co_await run_blocking([&]() {
        Staged s;
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        if (ec) {
            s.size = Error(errc::local_io_failed, "cannot create " + dir + ": " + ec.message());
            return s;
        }
        s.size = write_to(tmp);
        if (!s.size) {
            std::filesystem::remove(tmp, ec);
            return s;
        }
        auto d = deploy::describe_artifact(tmp, 0);  // hashes; keeps no bytes
        if (!d) {
            s.size = d.error();
        } else {
            s.actual = d->sha256;
            if (s.actual == sha256) std::filesystem::rename(tmp, final_path, ec);
            if (s.actual != sha256 || ec) std::filesystem::remove(tmp, ec);
        }
        return s;
    });
    if (!st.size) {
        const StagingAnswer answer = staging_failure_answer(st.size.error());
        co_return http::error_response(req, static_cast<bh::status>(answer.status), answer.code,
                                       answer.message);
    }
    if (st.actual != sha256)
        co_return http::error_response(req, bh::status::unprocessable_entity, "checksum_mismatch",
                                       "sha256 of the received bytes is " + st.actual + ", not " +
                                           sha256 + ": nothing staged");
    store::ArtifactRecord a;
    a.sr_id = sr_id;
    a.name = name;
    a.path = final_path;
    a.sha256 = sha256;
    a.size = *st.size;
    a.created_ms = now_ms();
    deps.audit->upsert_artifact(a);
    store::AuditEvent e;
    e.sr_id = sr_id;
    e.step = "ARTIFACT";
    e.event = "ARTIFACT_STAGED";
    e.detail = name + " sha256 " + sha256 + " (" + std::to_string(a.size) + " bytes)";
    deps.audit->record(std::move(e));
    if (auto d = co_await durable(); !d) co_return store_failed(req, d.error());
    co_return http::json_response(
        req, bh::status::created,
        json::object{{"sr_id", sr_id}, {"name", name}, {"sha256", sha256}, {"size", a.size}});
}

// --- deploying --------------------------------------------------------------------------------

asio::awaitable<http::Response> DeployService::Impl::trigger(const http::Request& req) {
    auto q = http::query_params(req.target());
    if (!q) co_return bad(req, Error(errc::invalid_argument, "malformed query string"));
    const bool wait = (*q)["wait"] == "true" || (*q)["wait"] == "1";
    std::string sr_id = (*q)["sr_id"], approver = (*q)["approver_id"];
    if (!req.body().empty()) {
        auto parsed = http::parse_json_object(req, deps.service.max_json_depth);
        if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
        auto& body = std::get<json::object>(parsed);
        if (auto ok = only_fields(body, {"sr_id", "approver_id"}); !ok)
            co_return bad(req, ok.error());
        auto s = required_string(body, "sr_id", 128);
        if (!s) co_return bad(req, s.error());
        auto a = required_string(body, "approver_id");
        if (!a) co_return bad(req, a.error());
        sr_id = *s;
        approver = *a;
    }
    if (sr_id.empty()) co_return bad(req, Error(errc::invalid_argument, "sr_id: required"));
    if (approver.empty())
        co_return bad(req, Error(errc::invalid_argument, "approver_id: required"));
    if (!valid_sr_id(sr_id))
        co_return http::error_response(req, bh::status::not_found, "not_found",
                                       "no task " + printable(sr_id));

    // Idempotency: the same key for the same request gets the first answer again.
    std::string key;
    if (req.count("Idempotency-Key")) {
        key = std::string(req["Idempotency-Key"]);
        if (key.empty() || key.size() > 128)
            co_return bad(req, Error(errc::invalid_argument, "Idempotency-Key: 1-128 characters"));
    }
    const std::string request_id = "POST /api/deploy/trigger " + sr_id + " " + approver;
    if (!key.empty()) {
        std::optional<IdemAnswer> seen;
        if (auto it = idempotent.find(key); it != idempotent.end()) seen = it->second;
        if (!seen) {
            auto k = co_await read([&](store::Database& db) { return db.idempotency(key); });
            if (!k) co_return store_failed(req, k.error());
            if (*k) seen = IdemAnswer{(*k)->request, (*k)->status, (*k)->body};
        }
        if (seen) {
            if (seen->request != request_id)
                co_return http::error_response(
                    req, bh::status::unprocessable_entity, "idempotency_key_reused",
                    "Idempotency-Key was used for another request: " + seen->request);
            co_return http::json_response(req, static_cast<bh::status>(seen->status),
                                          json::parse(seen->body));
        }
    }

    auto task = co_await read([&](store::Database& db) { return db.task(sr_id); });
    if (!task) co_return store_failed(req, task.error());
    if (!*task)
        co_return http::error_response(req, bh::status::not_found, "not_found",
                                       "no task " + printable(sr_id));
    store::TaskRecord t = **task;
    if (deps.service.forbid_self_approval && !t.requester.empty() && t.requester == approver)
        co_return http::error_response(req, bh::status::forbidden, "self_approval",
                                       "approver " + printable(approver) +
                                           " requested this change; another approver must "
                                           "trigger it");
    if (active.count(sr_id))
        co_return conflict(req, "SR " + sr_id + " is already " + active[sr_id]->task.status);
    if (!deployable(t.status))
        co_return conflict(req, "task " + sr_id + " is " + t.status +
                                    ": only CREATED or FAILED_ROLLBACK tasks can be deployed");
    const std::uint64_t stagings_before = staging_started[sr_id];
    auto arts = co_await read([&](store::Database& db) { return db.artifacts_for(sr_id); });
    if (!arts) co_return store_failed(req, arts.error());
    if (arts->empty()) co_return conflict(req, "task " + sr_id + " has no staged artifact");
    const std::string inst = t.inst_id, sys = t.system_name;
    auto rows = co_await read([&](store::Database& db) { return db.inventory_nodes(inst, sys); });
    if (!rows) co_return store_failed(req, rows.error());
    if (rows->empty())
        co_return conflict(req,
                           "no inventory node has inst_id " + inst + " and system_name " + sys);
    auto inventory = inventory_from(*rows, "inventory of " + inst + "/" + sys);
    if (!inventory) co_return conflict(req, inventory.error().message);
    if (auto ok = deploy::validate_rollout(deps.engine.rollout, *inventory); !ok)
        co_return conflict(req, "configuration: " + ok.error().message);
    if (staging_now.count(sr_id) || staging_started[sr_id] != stagings_before)
        co_return conflict(
            req, "an artifact of SR " + sr_id + " is being staged (or just was): trigger again");
    // Claim the SR before the next suspension: a concurrent trigger now sees it running.
    if (active.count(sr_id))
        co_return conflict(req, "SR " + sr_id + " is already " + active[sr_id]->task.status);
    if (stopping) co_return refuse_stopping(req);
    auto a = std::make_shared<Active>(executor);
    a->kind = "deploy";
    active[sr_id] = a;
    // Any exit before run_deploy owns `a` (an exception included) releases the claim.
    struct Release {
        Impl* self;
        const std::string& sr;
        std::shared_ptr<Active> a;
        bool armed = true;
        ~Release() {
            if (armed) self->end_active(sr, a);
        }
    } release{this, sr_id, a};

    // The staged files are hashed again: what ships is what was approved.
    std::vector<store::ArtifactRecord> staged = *arts;
    auto specs = co_await run_blocking([&staged]() -> Result<std::vector<deploy::ArtifactSpec>> {
        std::vector<deploy::ArtifactSpec> out;
        for (const auto& s : staged) {
            auto d = deploy::describe_artifact(s.path);
            if (!d) return d.error();
            if (d->sha256 != s.sha256)
                return Error(errc::checksum_mismatch,
                             "staged artifact " + s.name + " changed on disk since it was staged");
            d->file_name = s.name;
            out.push_back(std::move(*d));
        }
        return out;
    });
    if (!specs) co_return conflict(req, specs.error().message);
    a->created_ms = now_ms();
    a->rollout_id = sr_id + "-" + utc_compact() + "-" + std::to_string(::getpid()) + "-" +
                    std::to_string(++rollout_seq);
    t.approver = approver;
    t.rollout_id = a->rollout_id;
    a->task = t;
    if (auto d = co_await set_status(a->task, kDeploying, "", "approved by " + approver); !d)
        co_return store_failed(req, d.error());
    auto settings = pipeline_settings(sr_id, a->rollout_id);
    a->rollout =
        std::make_unique<deploy::Rollout>(executor, std::move(*inventory), std::move(*specs),
                                          deps.engine.rollout, std::move(settings));
    a->step_timer = std::make_unique<StepTimer>([this](const std::string& step, double s) {
        auto& st = steps[step];
        st.sum += s;
        ++st.count;
    });
    a->rollout->set_observer(a->step_timer.get());
    if (stopping)  // drain() began while this trigger was hashing or writing DEPLOYING
        a->rollout->stop_starting("service stopping (SIGTERM): no new node starts");
    release.armed = false;
    asio::co_spawn(executor, run_deploy(a), asio::detached);

    json::object accepted{{"sr_id", sr_id}, {"rollout_id", a->rollout_id}, {"status", "DEPLOYING"}};
    if (!key.empty()) {
        idempotent[key] = IdemAnswer{request_id, 202, json::serialize(accepted)};
        store::IdempotencyRecord k;
        k.key = key;
        k.request = request_id;
        k.status = 202;
        k.body = json::serialize(accepted);
        k.created_ms = now_ms();
        deps.audit->record_idempotency(std::move(k));
        (void)co_await durable();
    }
    if (!wait) co_return http::json_response(req, bh::status::accepted, accepted);
    co_await wait_done(a);
    co_return http::json_response(req, bh::status::ok, a->final_body);
}

asio::awaitable<void> DeployService::Impl::run_deploy(std::shared_ptr<Active> a) {
    auto self = shared_from_this();  // the service outlives no rollout of its own
    deploy::RolloutReport report = co_await a->rollout->run();
    ++rollouts_by_status[std::string(deploy::to_string(report.status))];
    for (const auto& n : report.nodes)
        if (n.state == deploy::NodeState::done)
            node_outcome_metric(deploy::to_string(n.report.outcome));
        else if (n.state == deploy::NodeState::skipped)
            node_outcome_metric("SKIPPED");
    const bool success = report.status == deploy::RolloutStatus::succeeded;
    std::string reason = report.reason;
    if (reason.empty() && !success)
        reason = std::to_string(report.failed) + " of " + std::to_string(report.nodes.size()) +
                 " node(s) failed";
    // Arguments as named values: GCC 12 destroys temporaries of a conditional expression
    // inside a co_await expression twice.
    const std::string_view final_status = success ? kPendingPm : kFailedRollback;
    const std::string task_reason = success ? std::string() : reason;
    std::string detail = "rollout " + std::string(deploy::to_string(report.status)) + ": " +
                         std::to_string(report.deployed) + " deployed, " +
                         std::to_string(report.failed) + " failed, " +
                         std::to_string(report.skipped) + " not started";
    if (!reason.empty()) detail += "; " + reason;
    (void)co_await set_status(a->task, final_status, task_reason, detail);
    json::object counts{{"total", report.nodes.size()},
                        {"deployed", report.deployed},
                        {"failed", report.failed},
                        {"skipped", report.skipped}};
    json::object extra;
    extra["rollout_status"] = deploy::to_string(report.status);
    extra["counts"] = counts;
    const std::string_view event = success ? "pm_review_needed" : "deployment_failed";
    co_await notify(event, a->task, std::move(extra));
    a->final_body = json::object{{"sr_id", a->task.sr_id},
                                 {"success", success},
                                 {"rollout_id", a->rollout_id},
                                 {"status", a->task.status},
                                 {"reason", a->task.reason}};
    end_active(a->task.sr_id, a);
}

asio::awaitable<http::Response> DeployService::Impl::validation(const http::Request& req,
                                                                const std::string& sr_id) {
    auto q = http::query_params(req.target());
    if (!q) co_return bad(req, Error(errc::invalid_argument, "malformed query string"));
    const bool wait = (*q)["wait"] == "true" || (*q)["wait"] == "1";
    auto parsed = http::parse_json_object(req, deps.service.max_json_depth);
    if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
    auto& body = std::get<json::object>(parsed);
    if (auto ok = only_fields(body, {"verdict", "pm_id", "comment"}); !ok)
        co_return bad(req, ok.error());
    auto verdict = required_string(body, "verdict", 16);
    if (!verdict) co_return bad(req, verdict.error());
    if (*verdict != "accepted" && *verdict != "rejected")
        co_return bad(
            req, Error(errc::invalid_argument, "verdict: must be \"accepted\" or \"rejected\""));
    auto pm = required_string(body, "pm_id");
    if (!pm) co_return bad(req, pm.error());
    auto comment = optional_string(body, "comment");
    if (!comment) co_return bad(req, comment.error());

    auto task = co_await read([&](store::Database& db) { return db.task(sr_id); });
    if (!task) co_return store_failed(req, task.error());
    if (!*task)
        co_return http::error_response(req, bh::status::not_found, "not_found",
                                       "no task " + printable(sr_id));
    if (active.count(sr_id))
        co_return conflict(req, "SR " + sr_id + " is " + active[sr_id]->task.status);
    store::TaskRecord t = **task;
    if (t.status != kPendingPm)
        co_return conflict(req, "task " + sr_id + " is " + t.status +
                                    ": a verdict is taken in PENDING_PM_VALIDATION only");
    const std::string who = "PM " + *pm + (comment->empty() ? "" : ": " + *comment);
    if (*verdict == "accepted") {
        // Claimed while COMPLETED becomes durable: a concurrent reject must get 409, not roll back.
        auto claim = std::make_shared<Active>(executor);
        claim->kind = "verdict";
        claim->task = t;
        active[sr_id] = claim;
        auto d = co_await set_status(t, kCompleted, *comment, "accepted by " + who);
        end_active(sr_id, claim);
        if (!d) co_return store_failed(req, d.error());
        co_return http::json_response(req, bh::status::ok,
                                      json::object{{"sr_id", sr_id}, {"status", t.status}});
    }
    if (stopping) co_return refuse_stopping(req);
    auto a = std::make_shared<Active>(executor);
    a->kind = "rollback";
    a->rollout_id = t.rollout_id;
    a->task = t;
    active[sr_id] = a;
    if (auto d = co_await set_status(a->task, kRollingBack, *comment, "rejected by " + who); !d) {
        end_active(sr_id, a);
        co_return store_failed(req, d.error());
    }
    asio::co_spawn(executor, run_pm_rollback(a), asio::detached);
    if (!wait)
        co_return http::json_response(req, bh::status::accepted,
                                      json::object{{"sr_id", sr_id}, {"status", kRollingBack}});
    co_await wait_done(a);
    co_return http::json_response(req, bh::status::ok, a->final_body);
}

// Rolls back every node any rollout of the task deployed, to the FIRST backup this SR took of
// it: after a failed attempt and a retry, the retry's backup holds the first attempt's build, so
// only the first backup is the node as it was before the change. Nodes whose latest row says
// ROLLED_BACK_BY_PM are done already (a re-run after a restart). Returns (rolled back, failed).
asio::awaitable<std::pair<std::size_t, std::size_t>> DeployService::Impl::pm_rollback_nodes(
    const store::TaskRecord& task) {
    const std::string sr = task.sr_id, inst = task.inst_id, sys = task.system_name;
    auto rollouts = co_await read([&](store::Database& db) { return db.rollouts_for(sr); });
    auto rows = co_await read([&](store::Database& db) { return db.inventory_nodes(inst, sys); });
    struct Target {
        store::NodeResult latest;
        std::string first_backup;
        bool deployed = false;
    };
    std::map<std::string, Target> targets;
    bool results = rollouts.has_value();
    if (rollouts)
        for (auto r = rollouts->rbegin(); r != rollouts->rend() && results; ++r) {  // oldest first
            const std::string rid = r->id;
            auto res = co_await read([&](store::Database& db) { return db.node_results(rid); });
            if (!res) {
                results = false;
                break;
            }
            for (auto& n : *res) {
                Target& t = targets[n.node];
                if (t.first_backup.empty()) t.first_backup = n.backup_path;
                t.deployed = t.deployed || n.status == "DEPLOYED";
                t.latest = std::move(n);
            }
        }
    std::vector<store::NodeResult> todo;
    for (auto& [name, t] : targets)
        if (t.deployed && t.latest.status != "ROLLED_BACK_BY_PM") {
            store::NodeResult r = t.latest;
            r.backup_path = t.first_backup;
            todo.push_back(std::move(r));
        }
    std::map<std::string, deploy::Node> nodes;
    if (rows)
        for (const auto& row : *rows) {
            auto inv = inventory_from({row}, "inventory node " + row.name);
            if (inv && !inv->nodes.empty()) nodes[row.name] = inv->nodes.front();
        }
    auto ok = std::make_shared<std::size_t>(0);
    auto failed = std::make_shared<std::size_t>(0);
    if (!results || !rows) {
        logger->error("SR {}: cannot read the rollouts' nodes for the rollback", task.sr_id);
        co_return std::make_pair(std::size_t{0}, std::size_t{1});
    }
    auto settings =
        std::make_shared<deploy::PipelineSettings>(pipeline_settings(task.sr_id, task.rollout_id));
    settings->reclaim_own_lock = true;  // a restart may find this rollback's own locks
    const std::function<asio::awaitable<void>(std::size_t)> one =
        [this, &todo, &nodes, settings, ok, failed](std::size_t i) -> asio::awaitable<void> {
        store::NodeResult r = todo[i];
        auto it = nodes.find(r.node);
        deploy::NodeReport rep;
        if (it == nodes.end()) {
            rep.outcome = deploy::NodeOutcome::failed_unchanged;
            rep.error = Error(errc::invalid_argument,
                              "node '" + r.node + "' is no longer in the inventory");
        } else {
            rep = co_await deploy::rollback_node(it->second, r.backup_path, *settings);
        }
        const bool good = rep.outcome == deploy::NodeOutcome::rolled_back;
        ++*(good ? ok : failed);
        r.status = good ? "ROLLED_BACK_BY_PM" : "PM_ROLLBACK_FAILED";
        r.error = good ? std::string() : rep.error.message;
        r.finished_ms = now_ms();
        node_outcome_metric(r.status);
        deps.audit->upsert_node_result(std::move(r));
    };
    co_await run_bounded(todo.size(), deps.engine.rollout.max_sessions, one);
    co_return std::make_pair(*ok, *failed);
}

asio::awaitable<void> DeployService::Impl::run_pm_rollback(std::shared_ptr<Active> a) {
    auto self = shared_from_this();
    store::AuditEvent e;
    e.sr_id = a->task.sr_id;
    e.rollout_id = a->task.rollout_id;
    e.step = "PM_ROLLBACK";
    e.event = "PM_ROLLBACK_START";
    deps.audit->record(e);
    auto [ok, failed] = co_await pm_rollback_nodes(a->task);
    e.event = "PM_ROLLBACK_DONE";
    e.detail = std::to_string(ok) + " rolled back, " + std::to_string(failed) + " failed";
    deps.audit->record(e);
    const bool good = failed == 0;
    std::string reason = a->task.reason;
    if (!good)
        reason = std::to_string(failed) + " node(s) could not be rolled back; see the audit log";
    const std::string_view final_status = good ? kRolledBack : kRollbackFailed;
    (void)co_await set_status(a->task, final_status, reason, e.detail);
    json::object extra;
    extra["rolled_back"] = ok;
    extra["failed"] = failed;
    const std::string_view event = good ? "rollback_completed" : "rollback_failed";
    co_await notify(event, a->task, std::move(extra));
    a->final_body = json::object{{"sr_id", a->task.sr_id},
                                 {"status", a->task.status},
                                 {"rolled_back", ok},
                                 {"failed", failed}};
    end_active(a->task.sr_id, a);
}

// --- reading ----------------------------------------------------------------------------------

asio::awaitable<http::Response> DeployService::Impl::deploy_status(const http::Request& req,
                                                                   const std::string& sr_id) {
    auto task = co_await read([&](store::Database& db) { return db.task(sr_id); });
    if (!task) co_return store_failed(req, task.error());
    if (!*task)
        co_return http::error_response(req, bh::status::not_found, "not_found",
                                       "no task " + printable(sr_id));
    json::object out{{"sr_id", sr_id}, {"task_status", (*task)->status}};
    json::object counts{{"total", 0},  {"pending", 0}, {"running", 0},    {"deployed", 0},
                        {"failed", 0}, {"skipped", 0}, {"rolled_back", 0}};
    auto count = [&](const char* k) { counts[k] = counts[k].as_int64() + 1; };
    json::array nodes;
    json::array tiers;

    auto it = active.find(sr_id);
    if (it != active.end() && it->second->rollout) {
        const auto& a = *it->second;
        const auto& p = a.rollout->progress();
        if (p.status == deploy::RolloutStatus::running) out["task_status"] = a.task.status;
        out["rollout"] = json::object{{"id", a.rollout_id},
                                      {"status", deploy::to_string(p.status)},
                                      {"reason", p.reason},
                                      {"created_ms", a.created_ms},
                                      {"finished_ms", nullptr}};
        for (const auto& n : p.nodes) {
            std::string state;
            switch (n.state) {
                case deploy::NodeState::pending:
                    state = "pending";
                    count("pending");
                    break;
                case deploy::NodeState::running:
                    state = "running";
                    count("running");
                    break;
                case deploy::NodeState::skipped:
                    state = "skipped";
                    count("skipped");
                    break;
                case deploy::NodeState::done:
                    state = lower(std::string(deploy::to_string(n.report.outcome)));
                    count(n.report.outcome == deploy::NodeOutcome::deployed ? "deployed"
                                                                            : "failed");
                    break;
            }
            count("total");
            nodes.push_back(node_json(n.node.name, n.node.tier, state, n.step,
                                      n.report.error.message, n.report.backup_path));
        }
        for (const auto& t : p.tiers) tiers.push_back(tier_json(t));
    } else if ((*task)->rollout_id.empty()) {
        out["rollout"] = nullptr;
    } else {
        const std::string rid = (*task)->rollout_id, inst = (*task)->inst_id,
                          sys = (*task)->system_name;
        auto r = co_await read([&](store::Database& db) { return db.rollout(rid); });
        auto results = co_await read([&](store::Database& db) { return db.node_results(rid); });
        auto rows =
            co_await read([&](store::Database& db) { return db.inventory_nodes(inst, sys); });
        if (!r) co_return store_failed(req, r.error());
        if (!results) co_return store_failed(req, results.error());
        if (!rows) co_return store_failed(req, rows.error());
        if (*r) {
            json::value finished = nullptr;
            if ((*r)->finished_ms) finished = *(*r)->finished_ms;
            out["rollout"] = json::object{{"id", (*r)->id},
                                          {"status", (*r)->status},
                                          {"reason", (*r)->reason},
                                          {"created_ms", (*r)->created_ms},
                                          {"finished_ms", finished}};
        } else {
            out["rollout"] = nullptr;
        }
        std::map<std::string, std::int64_t> tier_of;
        for (const auto& row : *rows) {
            auto v = json::parse(row.payload);
            if (const auto* t = v.as_object().if_contains("tier"); t && t->is_int64())
                tier_of[row.name] = t->as_int64();
            else
                tier_of[row.name] = 2;
        }
        std::map<std::int64_t, deploy::TierProgress> per_tier;
        for (const auto& n : *results) {
            const std::string state = lower(n.status);
            const auto tier = tier_of.count(n.node) ? tier_of[n.node] : 0;
            deploy::TierProgress& t = per_tier[tier];
            ++t.total;
            count("total");
            if (state == "pending") {
                count("pending");
            } else if (state == "running") {
                count("running");
                ++t.started;
                ++t.in_flight;
            } else if (state == "skipped") {
                count("skipped");
                ++t.skipped;
            } else {
                ++t.started;
                ++t.finished;
                if (state == "deployed") {
                    count("deployed");
                } else if (state == "rolled_back_by_pm") {
                    count("rolled_back");  // deployed, then undone on the PM's verdict
                } else {
                    count("failed");
                    ++t.failed;
                }
            }
            nodes.push_back(node_json(n.node, tier, state, n.step, n.error, n.backup_path));
        }
        for (auto& [tier, t] : per_tier) {
            t.tier = static_cast<int>(tier);
            tiers.push_back(tier_json(t));
        }
    }
    out["counts"] = std::move(counts);
    out["tiers"] = std::move(tiers);
    out["nodes"] = std::move(nodes);
    co_return http::json_response(req, bh::status::ok, out);
}

asio::awaitable<http::Response> DeployService::Impl::audit_page(const http::Request& req) {
    auto q = http::query_params(req.target());
    if (!q) co_return bad(req, Error(errc::invalid_argument, "malformed query string"));
    const std::string sr_id = (*q)["sr_id"];
    if (sr_id.empty()) co_return bad(req, Error(errc::invalid_argument, "sr_id: required"));
    std::int64_t after = 0;
    int limit = 100;
    auto whole_number = [](const std::string& text, auto& into) {
        if (text.empty()) return true;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), into);
        return ec == std::errc() && end == text.data() + text.size();
    };
    if (!whole_number((*q)["after_id"], after) || !whole_number((*q)["limit"], limit))
        co_return bad(req, Error(errc::invalid_argument, "after_id and limit must be integers"));
    if (limit < 1 || limit > 1000 || after < 0)
        co_return bad(req, Error(errc::invalid_argument,
                                 "limit: must be between 1 and 1000; after_id: not negative"));
    auto rows =
        co_await read([&](store::Database& db) { return db.audit_for(sr_id, after, limit); });
    if (!rows) co_return store_failed(req, rows.error());
    json::array events;
    for (const auto& r : *rows) {
        json::value exit_code = nullptr, duration = nullptr;
        if (r.exit_code) exit_code = *r.exit_code;
        if (r.duration_ms) duration = *r.duration_ms;
        events.push_back(json::object{{"id", r.id},
                                      {"ts_ms", r.ts_ms},
                                      {"rollout_id", r.rollout_id},
                                      {"node", r.node},
                                      {"step", r.step},
                                      {"event", r.event},
                                      {"exit_code", exit_code},
                                      {"duration_ms", duration},
                                      {"detail", r.detail}});
    }
    json::value next = nullptr;
    if (static_cast<int>(rows->size()) == limit) next = rows->back().id;
    co_return http::json_response(
        req, bh::status::ok,
        json::object{{"sr_id", sr_id}, {"events", std::move(events)}, {"next_after_id", next}});
}

http::Response DeployService::Impl::healthz(const http::Request& req) {
    if (stopping)
        return http::json_response(
            req, bh::status::service_unavailable,
            json::object{{"status", "stopping"}, {"rollouts_running", active.size()}});
    json::object o{{"status", "ok"},
                   {"rollouts_running", active.size()},
                   {"store_queue", deps.audit->queue_depth()}};
    if (auto e = deps.audit->last_error()) {
        o["status"] = "degraded";
        o["store_error"] = e->message;
    }
    return http::json_response(req, bh::status::ok, o);
}

http::Response DeployService::Impl::metrics(const http::Request& req) {
    std::ostringstream m;
    auto head = [&](const char* name, const char* type, const char* help) {
        m << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
    };
    head("guardia_rollouts_total", "counter", "Rollouts finished by this process, by status.");
    for (const auto& [k, v] : rollouts_by_status)
        m << "guardia_rollouts_total{status=\"" << label(k) << "\"} " << v << '\n';
    head("guardia_nodes_total", "counter", "Node outcomes in this process, by outcome.");
    for (const auto& [k, v] : nodes_by_outcome)
        m << "guardia_nodes_total{outcome=\"" << label(k) << "\"} " << v << '\n';
    head("guardia_step_duration_seconds", "summary", "Time nodes spent in each pipeline step.");
    for (const auto& [k, v] : steps) {
        m << "guardia_step_duration_seconds_sum{step=\"" << label(k) << "\"} " << v.sum << '\n';
        m << "guardia_step_duration_seconds_count{step=\"" << label(k) << "\"} " << v.count << '\n';
    }
    std::size_t deploying = 0, rolling_back = 0;
    for (const auto& [sr, a] : active) {
        if (a->kind == "deploy") ++deploying;
        if (a->kind == "rollback") ++rolling_back;
    }
    head("guardia_rollouts_running", "gauge", "Rollouts in flight.");
    m << "guardia_rollouts_running " << deploying << '\n';
    head("guardia_pm_rollbacks_running", "gauge", "PM-rejected releases being rolled back.");
    m << "guardia_pm_rollbacks_running " << rolling_back << '\n';
    head("guardia_ssh_sessions_open", "gauge", "SSH sessions open now.");
    m << "guardia_ssh_sessions_open " << ssh::open_session_count() << '\n';
    head("guardia_audit_queue_depth", "gauge", "Store writes queued, not yet committed.");
    m << "guardia_audit_queue_depth " << deps.audit->queue_depth() << '\n';
    head("guardia_audit_rejected_total", "counter", "Store writes refused by SQLite.");
    m << "guardia_audit_rejected_total " << deps.audit->rejected() << '\n';
    head("guardia_http_requests_total", "counter", "API requests answered, by status code.");
    for (const auto& [k, v] : http_by_status)
        m << "guardia_http_requests_total{code=\"" << k << "\"} " << v << '\n';
    if (deps.notifier) {
        head("guardia_notifications_delivered_total", "counter", "Webhooks delivered.");
        m << "guardia_notifications_delivered_total " << deps.notifier->delivered() << '\n';
        head("guardia_notifications_failed_attempts_total", "counter",
             "Webhook attempts that failed (retried).");
        m << "guardia_notifications_failed_attempts_total " << deps.notifier->failed_attempts()
          << '\n';
        head("guardia_notifications_pending", "gauge", "Webhooks waiting for delivery.");
        m << "guardia_notifications_pending " << deps.notifier->pending() << '\n';
    }
    return http::text_response(req, bh::status::ok, m.str(),
                               "text/plain; version=0.0.4; charset=utf-8");
}

// --- recovery and drain -----------------------------------------------------------------------

// A rollout the store says is in flight, found at start-up: its process died. Every node it
// left RUNNING is inspected and made safe (recover_node), PENDING nodes are recorded as never
// started, and the rollout and its task end in a truthful state.
asio::awaitable<void> DeployService::Impl::recover_rollout(const store::RolloutRecord& r) {
    const std::string rid = r.id, sr = r.sr_id;
    logger->warn("recovering rollout {} of SR {}: the previous process ended during it", rid, sr);
    auto results = co_await read([&](store::Database& db) { return db.node_results(rid); });
    auto task = co_await read([&](store::Database& db) { return db.task(sr); });
    auto arts = co_await read([&](store::Database& db) { return db.artifacts_for(sr); });
    std::string inst, sys;
    if (task && *task) {
        inst = (*task)->inst_id;
        sys = (*task)->system_name;
    }
    auto rows = co_await read([&](store::Database& db) { return db.inventory_nodes(inst, sys); });
    if (!results || !task || !arts || !rows) {
        logger->error("rollout {}: cannot read the store to recover it; left as it is", rid);
        co_return;
    }
    std::map<std::string, deploy::Node> nodes;
    for (const auto& row : *rows) {
        auto inv = inventory_from({row}, "inventory node " + row.name);
        if (inv && !inv->nodes.empty()) nodes[row.name] = inv->nodes.front();
    }
    auto specs = std::make_shared<std::vector<deploy::ArtifactSpec>>();
    for (const auto& a : *arts) {
        deploy::ArtifactSpec s;
        s.file_name = a.name;
        s.sha256 = a.sha256;
        s.local_path = a.path;
        specs->push_back(std::move(s));
    }
    // PENDING nodes are inspected too: the write that marked a node RUNNING may have died
    // with the process (commits are batched), while the node already holds our lock.
    std::vector<store::NodeResult> running;
    std::size_t pending = 0;
    for (const auto& n : *results)
        if (n.status == "RUNNING" || n.status == "PENDING" || n.status == "RECOVERY_FAILED") {
            running.push_back(n);
            pending += n.status == "PENDING" ? 1 : 0;
        }
    store::AuditEvent e;
    e.sr_id = sr;
    e.rollout_id = rid;
    e.step = "RECOVERY";
    e.event = "RECOVERY_START";
    e.detail = "found in flight at start-up (the previous process ended during it): " +
               std::to_string(running.size() - pending) + " node(s) running, " +
               std::to_string(pending) + " not started (checked too)";
    deps.audit->record(e);

    auto settings = std::make_shared<deploy::PipelineSettings>(pipeline_settings(sr, rid));
    settings->reclaim_own_lock = true;
    std::map<std::string, std::size_t> outcomes;
    const std::function<asio::awaitable<void>(std::size_t)> one =
        [this, &running, &nodes, specs, settings,
         &outcomes](std::size_t i) -> asio::awaitable<void> {
        store::NodeResult n = running[i];
        deploy::NodeReport rep;
        auto it = nodes.find(n.node);
        if (it == nodes.end()) {
            rep.outcome = deploy::NodeOutcome::failed_unchanged;
            rep.error =
                Error(errc::invalid_argument,
                      "node '" + n.node + "' is no longer in the inventory: recover it by hand");
        } else {
            rep = co_await deploy::recover_node(it->second, *specs, n.backup_path, *settings);
        }
        // Not inspected (unreachable, gone from the inventory): the node may still be mid-step
        // under our lock. It stays to be recovered at the next start, and the rollout with it.
        const bool inspected = it != nodes.end() && rep.failed_step != "CONNECT" &&
                               rep.failed_step != "RECOVER_INSPECT";
        if (n.status == "PENDING" && !rep.lock_released &&
            (rep.outcome == deploy::NodeOutcome::failed_unchanged || !inspected)) {
            n.status = "SKIPPED";  // never started (a node we cannot reach was never reached)
            n.step = "";
            n.error = inspected
                          ? "not started: the rollout was interrupted"
                          : "not started: the rollout was interrupted (" + rep.error.message + ")";
        } else if (!inspected) {
            n.status = "RECOVERY_FAILED";
            n.step = "RECOVERY";
            n.error = rep.error.message + "; retried at the next start";
        } else {
            n.status = std::string(deploy::to_string(rep.outcome));
            n.step = rep.failed_step.empty() ? "RECOVERY" : rep.failed_step;
            n.error = rep.error.message;
        }
        if (!rep.backup_path.empty()) n.backup_path = rep.backup_path;
        n.finished_ms = now_ms();
        ++outcomes[n.status];
        node_outcome_metric(n.status);
        store::AuditEvent ev;
        ev.sr_id = settings->sr_id;
        ev.rollout_id = settings->rollout_id;
        ev.node = n.node;
        ev.step = "RECOVERY";
        ev.event = "NODE_RECOVERED";
        ev.detail = n.status + (n.error.empty() ? std::string() : ": " + n.error);
        deps.audit->record(std::move(ev));
        deps.audit->upsert_node_result(std::move(n));
    };
    co_await run_bounded(running.size(), deps.engine.rollout.max_sessions, one);

    std::string summary;
    for (const auto& [k, v] : outcomes)
        summary += (summary.empty() ? "" : ", ") + std::to_string(v) + " " + lower(k);
    std::string reason =
        "interrupted: the previous guardia process ended during the rollout "
        "(crash or kill); recovered at start-up" +
        (summary.empty() ? std::string() : ": " + summary);
    store::RolloutRecord done = r;
    done.status = "ABORTED";
    done.reason = reason;
    // finished_ms stays empty while a node could not be recovered: the next start retries it.
    if (outcomes.count("RECOVERY_FAILED") == 0)
        done.finished_ms = now_ms();
    else
        done.reason += "; not finished: node(s) left to recover at the next start";
    deps.audit->upsert_rollout(done);
    ++rollouts_by_status["ABORTED"];
    e.event = "ROLLOUT_ABORTED";
    e.detail = reason;
    deps.audit->record(e);
    (void)co_await durable();

    if (*task && (*task)->rollout_id == rid && (*task)->status == kDeploying) {
        store::TaskRecord t = **task;
        (void)co_await set_status(t, kFailedRollback, reason, reason);
        json::object extra;
        extra["rollout_status"] = "ABORTED";
        extra["recovered"] = true;
        co_await notify("deployment_failed", t, std::move(extra));
    }
}

asio::awaitable<std::size_t> DeployService::Impl::recover() {
    std::size_t n = 0;
    auto unfinished = co_await read([](store::Database& db) { return db.unfinished_rollouts(); });
    if (!unfinished) throw std::runtime_error("recovery: " + unfinished.error().message);
    for (const auto& r : *unfinished) {
        co_await recover_rollout(r);
        ++n;
    }
    (void)co_await durable();
    // Tasks whose rollout ended but whose own final status was never written.
    auto deploying =
        co_await read([](store::Database& db) { return db.tasks_in_status(kDeploying); });
    if (!deploying) throw std::runtime_error("recovery: " + deploying.error().message);
    for (auto t : *deploying) {
        const std::string rid = t.rollout_id;
        Result<std::optional<store::RolloutRecord>> r = std::optional<store::RolloutRecord>();
        if (!rid.empty()) r = co_await read([&](store::Database& db) { return db.rollout(rid); });
        if (!r) continue;
        if (!*r) {
            const std::string reason =
                "interrupted before its rollout started (the previous process ended)";
            (void)co_await set_status(t, kFailedRollback, reason, reason);
            co_await notify("deployment_failed", t, recovered_flag());
        } else if ((*r)->status == "SUCCEEDED") {
            (void)co_await set_status(t, kPendingPm, "", "rollout SUCCEEDED (status recovered)");
            co_await notify("pm_review_needed", t, recovered_flag());
        } else {
            (void)co_await set_status(t, kFailedRollback, (*r)->reason,
                                      "rollout " + (*r)->status + " (status recovered)");
            co_await notify("deployment_failed", t, recovered_flag());
        }
        ++n;
    }
    // PM rollbacks the previous process did not finish: run them again (rolled-back nodes
    // were recorded as such and are not touched twice).
    auto rolling =
        co_await read([](store::Database& db) { return db.tasks_in_status(kRollingBack); });
    if (!rolling) throw std::runtime_error("recovery: " + rolling.error().message);
    for (const auto& t : *rolling) {
        auto a = std::make_shared<Active>(executor);
        a->kind = "rollback";
        a->task = t;
        a->rollout_id = t.rollout_id;
        active[t.sr_id] = a;
        co_await run_pm_rollback(a);
        ++n;
    }
    (void)co_await durable();
    co_return n;
}

asio::awaitable<void> DeployService::Impl::drain(std::chrono::milliseconds grace) {
    stopping = true;
    for (auto& [sr, a] : active)
        if (a->rollout)
            a->rollout->stop_starting(
                "service stopping (SIGTERM): no new node starts; nodes in flight finish");
    const auto deadline = Clock::now() + grace;
    bool cancelled = false;
    while (!active.empty()) {
        for (auto& [sr, a] : active)
            if (a->rollout) {
                a->rollout->stop_starting("service stopping (SIGTERM): no new node starts");
                if (cancelled) a->rollout->cancel("service stopping: shutdown grace exceeded");
            }
        if (!cancelled && Clock::now() >= deadline) {
            cancelled = true;
            logger->warn("shutdown grace of {} s exceeded: cancelling {} rollout(s)",
                         grace.count() / 1000, active.size());
            for (auto& [sr, a] : active)
                if (a->rollout)
                    a->rollout->cancel(
                        "service stopping: shutdown grace exceeded; nodes in "
                        "flight are rolled back");
        }
        changed.expires_at(cancelled ? Clock::time_point::max() : deadline);
        boost::system::error_code ec;
        co_await changed.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    (void)co_await durable();
}

// --- public -----------------------------------------------------------------------------------

DeployService::DeployService(asio::any_io_executor executor, DeployServiceDeps deps)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(deps))) {
    if (!impl_->deps.audit) throw std::logic_error("DeployService needs an audit writer");
}

DeployService::~DeployService() = default;

asio::awaitable<std::size_t> DeployService::recover() {
    co_return co_await impl_->recover();
}

asio::awaitable<http::Response> DeployService::handle(http::Request request) {
    co_return co_await impl_->handle(std::move(request));
}

asio::awaitable<void> DeployService::drain(std::chrono::milliseconds grace) {
    co_await impl_->drain(grace);
}

bool DeployService::stopping() const {
    return impl_->stopping;
}

std::size_t DeployService::running() const {
    return impl_->active.size();
}

}  // namespace guardia::service
