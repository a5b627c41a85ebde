#include "guardia/service/deploy_service.hpp"

#include "guardia/core/json_input.hpp"
#include "guardia/service/clients.hpp"
#include "guardia/service/metrics.hpp"
#include "guardia/service/console.hpp"
#include "guardia/service/live_hub.hpp"
#include "guardia/service/notifier.hpp"
#include "guardia/service/staging_policy.hpp"
#include "guardia/ssh/session.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <spdlog/spdlog.h>
#include <boost/json.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <sstream>

namespace guardia::service {

namespace asio = boost::asio;
namespace json = boost::json;
namespace bh = boost::beast::http;

// --- one mapping from service errors to HTTP answers -------------------------------------------

bh::status http_status(ServiceErrc code) noexcept {
    switch (code) {
        case ServiceErrc::bad_request:
            return bh::status::bad_request;
        case ServiceErrc::forbidden:
        case ServiceErrc::self_approval:
        case ServiceErrc::four_eyes:
        case ServiceErrc::path_refused:
        case ServiceErrc::path_form_disabled:
        case ServiceErrc::approval_needs_validate:
            return bh::status::forbidden;
        case ServiceErrc::payload_too_large:
            return bh::status::payload_too_large;
        case ServiceErrc::not_found:
            return bh::status::not_found;
        case ServiceErrc::conflict:
        case ServiceErrc::node_claimed:
        case ServiceErrc::approval_mismatch:
        case ServiceErrc::no_rollout_in_flight:
        case ServiceErrc::control_refused:
            return bh::status::conflict;
        case ServiceErrc::checksum_mismatch:
        case ServiceErrc::idempotency_key_reused:
            return bh::status::unprocessable_entity;
        case ServiceErrc::local_io_failed:
            return bh::status::internal_server_error;
        case ServiceErrc::store_unavailable:
        case ServiceErrc::stopping:
            return bh::status::service_unavailable;
    }
    return bh::status::internal_server_error;
}

http::Response error_answer(const http::Request& req, const ServiceError& e) {
    json::object body{{"error", to_string(e.code)}, {"message", e.message}};
    for (const auto& kv : e.details) body[kv.key()] = kv.value();
    return http::json_response(req, http_status(e.code), body);
}

namespace {

ServiceError bad(std::string message) {
    return ServiceError(ServiceErrc::bad_request, std::move(message));
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
    boost::system::error_code ec;
    auto payload = json::parse(t.payload, ec);
    if (!ec && payload.is_object())
        if (const auto* set = payload.get_object().if_contains("approved_artifacts"))
            o["approved_artifacts"] = *set;
    return o;
}

// A field of a request object: absent / wrong type / empty are errors naming the field.
ServiceResult<std::string> required_string(const json::object& o, std::string_view field,
                                           std::size_t max_len = 256) {
    const auto* v = o.if_contains(field);
    if (!v) return bad(std::string(field) + ": required");
    if (!v->is_string()) return bad(std::string(field) + ": must be a string");
    std::string s(v->get_string());
    if (s.empty()) return bad(std::string(field) + ": must not be empty");
    if (s.size() > max_len)
        return bad(std::string(field) + ": longer than " + std::to_string(max_len));
    return s;
}

ServiceResult<std::string> optional_string(const json::object& o, std::string_view field,
                                           std::size_t max_len = 4096) {
    const auto* v = o.if_contains(field);
    if (!v || v->is_null()) return std::string();
    if (!v->is_string()) return bad(std::string(field) + ": must be a string");
    if (v->get_string().size() > max_len)
        return bad(std::string(field) + ": longer than " + std::to_string(max_len));
    return std::string(v->get_string());
}

ServiceResult<void> only_fields(const json::object& o,
                                std::initializer_list<std::string_view> known) {
    for (const auto& kv : o)
        if (std::find(known.begin(), known.end(), kv.key()) == known.end())
            return bad(printable(kv.key()) + ": unknown field");
    return {};
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

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// An audit row as GET /api/audit (and the console's node detail) shows it.
json::object audit_row_json(const store::AuditRow& r) {
    json::value exit_code = nullptr, duration = nullptr;
    if (r.exit_code) exit_code = *r.exit_code;
    if (r.duration_ms) duration = *r.duration_ms;
    return json::object{{"id", r.id},           {"ts_ms", r.ts_ms},   {"rollout_id", r.rollout_id},
                        {"node", r.node},       {"step", r.step},     {"event", r.event},
                        {"exit_code", exit_code}, {"duration_ms", duration}, {"detail", r.detail},
                        {"principal", r.principal}};
}

bool wants_wait(const std::map<std::string, std::string>& q) {
    auto it = q.find("wait");
    return it != q.end() && (it->second == "true" || it->second == "1");
}

}  // namespace

// --- the API --------------------------------------------------------------------------------

struct DeployService::Impl : std::enable_shared_from_this<DeployService::Impl> {
    Impl(asio::any_io_executor ex, DeployServiceDeps d)
        : executor(ex), clients(d.clients), coordinator(std::move(ex), std::move(d)) {
        logger = coordinator.deps().logger ? coordinator.deps().logger : spdlog::default_logger();
    }

    asio::any_io_executor executor;
    std::shared_ptr<const ClientRegistry> clients;
    Coordinator coordinator;
    SessionStore sessions;  // the console's sign-ins (console.hpp)
    std::shared_ptr<spdlog::logger> logger;
    std::map<unsigned, std::uint64_t> http_by_status;

    // A request as a handler sees it: who sent it (null on public routes) and the path's
    // segments ("*" parts of the pattern are seg[i]).
    struct Call {
        const http::Request& req;
        const Principal* who;
        const std::vector<std::string>& seg;
        http::StreamProducer* stream = nullptr;  // a stream route's answer, when allowed
        std::string session_key{};  // authenticated by a session cookie: its key (key_of)
        std::string principal() const { return who ? who->name : std::string(); }
    };
    using Handler = asio::awaitable<http::Response> (Impl::*)(const Call&);
    struct Route {
        bh::verb method;
        std::vector<std::string_view> pattern;  // "*": any one segment
        std::optional<Role> role;               // nullopt: public (no token)
        Handler handler;
        std::optional<Role> also_role{};        // a second role that admits the caller too
    };
    static const std::vector<Route>& routes();

    asio::awaitable<http::Response> handle(http::Request req) {
        return handle_streaming(std::move(req), nullptr);
    }
    asio::awaitable<http::Response> handle_streaming(http::Request req,
                                                     http::StreamProducer* stream);
    bool tls() const { return !coordinator.deps().service.tls_cert_file.empty(); }
    // How browsers reach the service (service.public_url, e.g. behind a TLS-terminating proxy):
    // the console's Origin check and the cookie's Secure follow it when it is set.
    const std::string& public_url() const { return coordinator.deps().service.public_url; }
    bool secure_cookie() const { return cookie_secure(tls(), public_url()); }
    // Who sends a request: its Bearer token's client, else its session cookie's (with the
    // session's csrf value); nullopt for neither.
    struct Caller {
        Principal who;
        std::optional<std::string> session_csrf;  // set: authenticated by a session cookie
        std::string session_key{};                // then: SessionStore::key_of(cookie)
    };
    std::optional<Caller> authenticate(const http::Request& req);
    std::optional<http::Response> admit(const http::Request& head);
    http::Response ui_session(const http::Request& req);
    asio::awaitable<http::Response> dispatch(const http::Request& req,
                                             const std::vector<std::string>& seg,
                                             http::StreamProducer* stream);

    asio::awaitable<http::Response> work_answer(const Call& c,
                                                ServiceResult<Coordinator::Answer> r,
                                                bool wait);

    asio::awaitable<http::Response> import_inventory(const Call& c);
    asio::awaitable<http::Response> list_inventory(const Call& c);
    asio::awaitable<http::Response> create_task(const Call& c);
    asio::awaitable<http::Response> get_task(const Call& c);
    asio::awaitable<http::Response> stage_upload(const Call& c);
    asio::awaitable<http::Response> stage_from_path(const Call& c);
    asio::awaitable<http::Response> trigger(const Call& c);
    asio::awaitable<http::Response> validation(const Call& c);
    asio::awaitable<http::Response> operator_rollback(const Call& c);
    asio::awaitable<http::Response> deploy_status(const Call& c);
    asio::awaitable<http::Response> list_tasks(const Call& c);
    asio::awaitable<http::Response> node_detail(const Call& c);
    // Live updates (Server-Sent Events, live_hub.hpp).
    asio::awaitable<http::Response> deploy_events(const Call& c);
    asio::awaitable<http::Response> task_events(const Call& c);
    std::optional<http::Response> open_stream(const Call& c);  // limits; nullopt: admitted
    // Whether a stream may deliver its next tick: one opened with a session cookie ends with
    // the session (sign-out, expiry, idle timeout, eviction). One opened with a Bearer token
    // goes on: the clients are fixed for the process's life (no reload), so a token that
    // authenticated the stream is still valid.
    bool stream_session_lives(const std::string& session_key);
    std::size_t streams_open = 0;
    std::map<std::string, std::size_t> streams_by_principal;
    // The reading each SR's streams share (SharedReading below), while any of them lives.
    std::map<std::string, std::weak_ptr<struct SharedReading>> live_readings;
    asio::awaitable<http::Response> control(const Call& c, deploy::ControlRequest request);
    asio::awaitable<http::Response> pause(const Call& c) {
        return control(c, deploy::ControlRequest::pause);
    }
    asio::awaitable<http::Response> resume(const Call& c) {
        return control(c, deploy::ControlRequest::resume);
    }
    asio::awaitable<http::Response> abort(const Call& c) {
        return control(c, deploy::ControlRequest::abort);
    }
    asio::awaitable<http::Response> audit_page(const Call& c);
    asio::awaitable<http::Response> healthz(const Call& c);
    asio::awaitable<http::Response> metrics(const Call& c);
};

// Who may call what. Only /healthz is public; every other route names the role it needs.
const std::vector<DeployService::Impl::Route>& DeployService::Impl::routes() {
    using R = Role;
    static const std::vector<Route> table{
        {bh::verb::get, {"healthz"}, std::nullopt, &Impl::healthz},
        {bh::verb::get, {"metrics"}, R::read, &Impl::metrics},
        {bh::verb::post, {"api", "inventory"}, R::admin, &Impl::import_inventory},
        {bh::verb::get, {"api", "inventory"}, R::read, &Impl::list_inventory},
        {bh::verb::post, {"api", "tasks"}, R::submit, &Impl::create_task},
        {bh::verb::get, {"api", "tasks"}, R::read, &Impl::list_tasks},
        {bh::verb::get, {"api", "tasks", "*"}, R::read, &Impl::get_task},
        {bh::verb::post, {"api", "tasks", "*", "artifacts"}, R::submit, &Impl::stage_from_path},
        {bh::verb::put, {"api", "tasks", "*", "artifacts", "*"}, R::submit, &Impl::stage_upload},
        {bh::verb::post, {"api", "tasks", "*", "validation"}, R::validate, &Impl::validation},
        {bh::verb::post, {"api", "deploy", "trigger"}, R::submit, &Impl::trigger},
        {bh::verb::get, {"api", "deploy", "*"}, R::read, &Impl::deploy_status},
        {bh::verb::get, {"api", "deploy", "*", "nodes", "*"}, R::read, &Impl::node_detail},
        {bh::verb::get, {"api", "deploy", "*", "events"}, R::read, &Impl::deploy_events},
        {bh::verb::get, {"api", "events"}, R::read, &Impl::task_events},
        {bh::verb::post, {"api", "deploy", "*", "rollback"}, R::operate, &Impl::operator_rollback},
        // Operator control of a rollout in flight; a validate client may resume a tier gate.
        {bh::verb::post, {"api", "deploy", "*", "pause"}, R::operate, &Impl::pause},
        {bh::verb::post, {"api", "deploy", "*", "resume"}, R::operate, &Impl::resume, R::validate},
        {bh::verb::post, {"api", "deploy", "*", "abort"}, R::operate, &Impl::abort},
        {bh::verb::get, {"api", "audit"}, R::read, &Impl::audit_page},
    };
    return table;
}

std::vector<RouteInfo> DeployService::routes() {
    std::vector<RouteInfo> out;
    for (const auto& r : Impl::routes()) {
        RouteInfo i;
        i.method = std::string(bh::to_string(r.method));
        for (auto p : r.pattern) {  // not "/" + std::string: GCC bug 105329 at -O3
            i.path += '/';
            i.path += p == "*" ? std::string_view("{}") : std::string_view(p);
        }
        i.role = r.role;
        i.also_role = r.also_role;
        out.push_back(std::move(i));
    }
    return out;
}

asio::awaitable<http::Response> DeployService::Impl::handle_streaming(
    http::Request req, http::StreamProducer* stream) {
    http::Response res;
    auto seg = http::path_segments(req.target());
    if (!seg) {
        res = http::error_response(req, bh::status::bad_request, "bad_request",
                                   "the request path is not a valid URL path");
    } else {
        try {
            if (seg->size() == 2 && (*seg)[0] == "ui" && (*seg)[1] == "session")
                res = ui_session(req);
            else if (is_ui_path(*seg))  // the console's files: public, outside the route table
                res = ui_static_answer(req, *seg);
            else
                res = co_await dispatch(req, *seg, stream);
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

asio::awaitable<http::Response> DeployService::Impl::dispatch(const http::Request& req,
                                                              const std::vector<std::string>& seg,
                                                              http::StreamProducer* stream) {
    auto matches = [&](const Route& r) {
        if (r.pattern.size() != seg.size()) return false;
        for (std::size_t i = 0; i < seg.size(); ++i)
            if (r.pattern[i] != "*" && r.pattern[i] != seg[i]) return false;
        return true;
    };
    // The most specific pattern wins: /api/deploy/trigger is not /api/deploy/{sr_id}.
    auto literals = [](const Route& r) {
        return std::count_if(r.pattern.begin(), r.pattern.end(), [](auto p) { return p != "*"; });
    };
    std::ptrdiff_t best = -1;
    for (const auto& r : routes())
        if (matches(r)) best = std::max<std::ptrdiff_t>(best, literals(r));
    const Route* route = nullptr;
    std::string allowed;
    bool path_known = false, needs_token = !seg.empty() && seg[0] == "api";
    for (const auto& r : routes()) {
        if (!matches(r) || literals(r) != best) continue;
        path_known = true;
        needs_token = needs_token || r.role.has_value();
        allowed += (allowed.empty() ? "" : ", ") + std::string(bh::to_string(r.method));
        if (r.method == req.method()) route = &r;
    }
    const Principal* who = nullptr;
    std::optional<Caller> caller;  // in this frame: a session may end while the handler runs
    // Everything but a body-less GET of /healthz needs a token (the same rule as the server's
    // admit hook): an anonymous client learns nothing about the API beyond /healthz.
    if (needs_token || !anonymous_request_allowed(req)) {
        caller = authenticate(req);
        if (!caller) co_return unauthorized_response(req);  // the same answer as the server's admit
        who = &caller->who;
        // A cookie comes along by itself: a state-changing request must prove our page sent it.
        if (caller->session_csrf) {
            const auto v = csrf_check(req, *caller->session_csrf, tls(), public_url());
            if (v != CsrfVerdict::ok) {
                logger->warn("{} {}: refused for client '{}': csrf {}",
                             std::string(req.method_string()),
                             printable(req.target().substr(0, req.target().find('?'))), who->name,
                             to_string(v));
                co_return http::error_response(req, bh::status::forbidden, "csrf_failed",
                                               "a session's state-changing request needs its "
                                               "X-Guardia-CSRF header, from this origin");
            }
        }
    }
    if (!path_known)
        co_return http::error_response(req, bh::status::not_found, "not_found",
                                       "no such path: " + printable(req.target()));
    if (!route) {
        auto r = http::error_response(req, bh::status::method_not_allowed, "method_not_allowed",
                                      "use " + allowed + " on this path");
        r.set(bh::field::allow, allowed);
        co_return r;
    }
    if (route->role && !who->roles.has(*route->role) &&
        !(route->also_role && who->roles.has(*route->also_role)))
        co_return error_answer(
            req, ServiceError(ServiceErrc::forbidden,
                              "client '" + who->name + "' lacks the role '" +
                                  std::string(to_string(*route->role)) + "'" +
                                  (route->also_role
                                       ? " (or '" + std::string(to_string(*route->also_role)) + "')"
                                       : std::string()) +
                                  " that " +
                                  std::string(bh::to_string(route->method)) + " " +
                                  printable(req.target().substr(0, req.target().find('?'))) +
                                  " needs"));
    const bool mutating = req.method() != bh::verb::get && req.method() != bh::verb::head;
    if (mutating && coordinator.stopping())
        co_return error_answer(
            req, ServiceError(ServiceErrc::stopping,
                              "the service is stopping: no new work is accepted"));
    // Audit or stop: while the store cannot commit, nothing new is accepted (it could not be
    // recorded). Reads go on; the writer keeps retrying and the first commit ends this.
    if (mutating && coordinator.deps().audit->degraded()) {
        if (auto e = coordinator.deps().audit->last_error()) {
            auto r = error_answer(
                req, ServiceError(ServiceErrc::store_unavailable,
                                  "the audit store cannot be written (" + e->message +
                                      "): no new work is accepted until it writes again "
                                      "(GET /healthz says when)"));
            r.set(bh::field::retry_after, "10");
            co_return r;
        }
    }
    const Call call{req, who, seg, stream, caller ? caller->session_key : std::string()};
    co_return co_await (this->*(route->handler))(call);
}

// --- the console's sessions ---------------------------------------------------------------------

namespace {

std::int64_t wall_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

json::object session_json(const Session& s) {
    json::array roles;
    for (auto r : s.who.roles.names()) roles.push_back(json::string(r));
    return json::object{{"principal", s.who.name},
                        {"roles", std::move(roles)},
                        {"csrf", s.csrf},
                        {"expires_ms", s.expires_ms}};
}

}  // namespace

std::optional<DeployService::Impl::Caller> DeployService::Impl::authenticate(
    const http::Request& req) {
    if (bearer_token(req)) {  // a Bearer header decides alone: a bad one is not rescued by a cookie
        const Principal* p = clients->authenticate(req);
        if (!p) return std::nullopt;
        return Caller{*p, std::nullopt};
    }
    const auto cookie = cookie_value(req, session_cookie_name);
    if (!cookie) return std::nullopt;
    auto s = sessions.find(*cookie, wall_ms());
    if (!s) return std::nullopt;
    return Caller{std::move(s->who), std::move(s->csrf), SessionStore::key_of(*cookie)};
}

std::optional<http::Response> DeployService::Impl::admit(const http::Request& head) {
    if (anonymous_request_allowed(head)) return std::nullopt;
    const auto seg = http::path_segments(head.target());
    // Signing in: the token is in the body (at most 4 KiB, request_body_limit); signing out and
    // asking who one is: the cookie, checked by the handler.
    if (seg && seg->size() == 2 && (*seg)[0] == "ui" && (*seg)[1] == "session") return std::nullopt;
    if (authenticate(head)) return std::nullopt;
    return unauthorized_response(head);
}

http::Response DeployService::Impl::ui_session(const http::Request& req) {
    http::Response res;
    const auto cookie = cookie_value(req, session_cookie_name);
    std::optional<Session> current;
    if (cookie) current = sessions.find(*cookie, wall_ms());
    if (req.method() == bh::verb::post) {
        // A page of another origin may not sign a browser in (login CSRF): a JSON body already
        // needs a CORS preflight, and an Origin header must be ours.
        const auto verdict = csrf_check(req, "", tls(), public_url());
        auto parsed = http::parse_json_object(req, 2);
        if (verdict == CsrfVerdict::foreign_origin) {
            res = http::error_response(req, bh::status::forbidden, "csrf_failed",
                                       "sign in from this service's own pages");
        } else if (auto* r = std::get_if<http::Response>(&parsed)) {
            res = std::move(*r);
        } else {
            const auto& body = std::get<json::object>(parsed);
            const auto* t = body.if_contains("token");
            const Principal* p =
                t && t->is_string() ? clients->authenticate(std::string_view(t->get_string()))
                                    : nullptr;
            if (!p) {
                res = unauthorized_response(req);
            } else {
                if (cookie) sessions.close(*cookie);  // a new sign-in replaces the old session
                auto opened = sessions.open(*p, wall_ms());
                logger->info("console: session opened for client '{}'", p->name);
                res = http::json_response(req, bh::status::ok, session_json(opened.session));
                res.set(bh::field::set_cookie, session_set_cookie(opened.cookie, secure_cookie()));
            }
        }
    } else if (req.method() == bh::verb::get || req.method() == bh::verb::head) {
        res = current ? http::json_response(req, bh::status::ok, session_json(*current))
                      : unauthorized_response(req);
    } else if (req.method() == bh::verb::delete_) {
        if (!current) {
            res = unauthorized_response(req);
        } else if (csrf_check(req, current->csrf, tls(), public_url()) != CsrfVerdict::ok) {
            res = http::error_response(req, bh::status::forbidden, "csrf_failed",
                                       "signing out needs the session's X-Guardia-CSRF header");
        } else {
            sessions.close(*cookie);
            logger->info("console: session closed for client '{}'", current->who.name);
            res = http::text_response(req, bh::status::no_content, "", "text/plain");
            res.set(bh::field::set_cookie, session_clear_cookie(secure_cookie()));
        }
    } else {
        res = http::error_response(req, bh::status::method_not_allowed, "method_not_allowed",
                                   "use GET, POST, DELETE on this path");
        res.set(bh::field::allow, "GET, POST, DELETE");
    }
    add_ui_security_headers(res);
    return res;
}

asio::awaitable<http::Response> DeployService::Impl::work_answer(
    const Call& c, ServiceResult<Coordinator::Answer> r, bool wait) {
    if (!r) co_return error_answer(c.req, r.error());
    if (wait && r->work) {
        auto body = co_await coordinator.wait(r->work);
        co_return http::json_response(c.req, bh::status::ok, body);
    }
    co_return http::json_response(c.req, static_cast<bh::status>(r->status), r->body);
}

// --- inventory --------------------------------------------------------------------------------

asio::awaitable<http::Response> DeployService::Impl::import_inventory(const Call& c) {
    auto parsed = http::parse_json_object(c.req, coordinator.deps().service.max_json_depth);
    if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
    auto r = co_await coordinator.import_inventory(std::move(std::get<json::object>(parsed)),
                                                   c.principal());
    if (!r) co_return error_answer(c.req, r.error());
    json::array names;
    for (const auto& n : r->names) names.push_back(json::string(n));
    co_return http::json_response(c.req, bh::status::ok,
                                  json::object{{"imported", r->names.size()},
                                               {"nodes", std::move(names)},
                                               {"changes", std::move(r->changes)}});
}

asio::awaitable<http::Response> DeployService::Impl::list_inventory(const Call& c) {
    auto q = http::query_params(c.req.target());
    if (!q) co_return error_answer(c.req, bad("malformed query string"));
    auto rows = co_await coordinator.list_inventory((*q)["inst_id"], (*q)["system_name"]);
    if (!rows) co_return error_answer(c.req, rows.error());
    json::array nodes;
    for (const auto& p : *rows) nodes.push_back(json::parse(p));
    co_return http::json_response(c.req, bh::status::ok,
                                  json::object{{"nodes", std::move(nodes)}});
}

// --- tasks and staging ------------------------------------------------------------------------

asio::awaitable<http::Response> DeployService::Impl::create_task(const Call& c) {
    auto parsed = http::parse_json_object(c.req, coordinator.deps().service.max_json_depth);
    if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
    auto& body = std::get<json::object>(parsed);
    if (auto ok = only_fields(body, {"sr_id", "inst_id", "system_name", "requester", "title"});
        !ok)
        co_return error_answer(c.req, ok.error());
    Coordinator::NewTask t;
    auto sr = required_string(body, "sr_id", 128);
    if (!sr) co_return error_answer(c.req, sr.error());
    if (!valid_sr_id(*sr))
        co_return error_answer(c.req,
                               bad("sr_id: 1-128 characters of A-Z a-z 0-9 . _ : - (not only dots)"));
    auto inst = required_string(body, "inst_id");
    if (!inst) co_return error_answer(c.req, inst.error());
    auto sys = required_string(body, "system_name");
    if (!sys) co_return error_answer(c.req, sys.error());
    auto requester = optional_string(body, "requester", 256);
    if (!requester) co_return error_answer(c.req, requester.error());
    auto title = optional_string(body, "title");
    if (!title) co_return error_answer(c.req, title.error());
    t.sr_id = *sr;
    t.inst_id = *inst;
    t.system_name = *sys;
    t.requester = *requester;
    t.title = *title;
    auto r = co_await coordinator.create_task(std::move(t), c.principal());
    if (!r) co_return error_answer(c.req, r.error());
    co_return http::json_response(c.req, bh::status::created, task_json(r->task, r->artifacts));
}

asio::awaitable<http::Response> DeployService::Impl::get_task(const Call& c) {
    auto r = co_await coordinator.task(c.seg[2]);
    if (!r) co_return error_answer(c.req, r.error());
    co_return http::json_response(c.req, bh::status::ok, task_json(r->task, r->artifacts));
}

namespace {

http::Response staged_answer(const http::Request& req,
                             const ServiceResult<store::ArtifactRecord>& r) {
    if (!r) return error_answer(req, r.error());
    return http::json_response(
        req, bh::status::created,
        json::object{{"sr_id", r->sr_id}, {"name", r->name}, {"sha256", r->sha256}, {"size", r->size}});
}

}  // namespace

asio::awaitable<http::Response> DeployService::Impl::stage_upload(const Call& c) {
    auto q = http::query_params(c.req.target());
    if (!q) co_return error_answer(c.req, bad("malformed query string"));
    Coordinator::StageRequest s;
    s.sr_id = c.seg[2];
    s.name = c.seg[4];
    s.sha256 = (*q)["sha256"];
    if (s.sha256.empty() && c.req.count("X-Sha256")) s.sha256 = std::string(c.req["X-Sha256"]);
    const std::string* data = &c.req.body();
    s.write = [data](const std::string& tmp) -> Result<std::int64_t> {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        out.write(data->data(), static_cast<std::streamsize>(data->size()));
        out.close();
        if (!out) return Error(errc::local_io_failed, "cannot write " + tmp);
        return static_cast<std::int64_t>(data->size());
    };
    s.caller_sent_bytes = true;
    co_return staged_answer(c.req, co_await coordinator.stage(std::move(s), c.principal()));
}

asio::awaitable<http::Response> DeployService::Impl::stage_from_path(const Call& c) {
    auto parsed = http::parse_json_object(c.req, coordinator.deps().service.max_json_depth);
    if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
    auto& body = std::get<json::object>(parsed);
    if (auto ok = only_fields(body, {"name", "path", "sha256"}); !ok)
        co_return error_answer(c.req, ok.error());
    auto name = required_string(body, "name", 128);
    if (!name) co_return error_answer(c.req, name.error());
    auto path = required_string(body, "path", 4096);
    if (!path) co_return error_answer(c.req, path.error());
    if ((*path)[0] != '/') co_return error_answer(c.req, bad("path: must be an absolute path"));
    auto sha = required_string(body, "sha256", 64);
    if (!sha) co_return error_answer(c.req, sha.error());
    Coordinator::StageRequest s;
    s.sr_id = c.seg[2];
    s.name = *name;
    s.sha256 = *sha;
    // Only a regular file inside service.drop_dir, opened without following any link below
    // it, hashed while copied (staging_policy.hpp).
    const std::string src = *path, expected = lower(*sha), drop_dir = coordinator.deps().service.drop_dir;
    const std::uint64_t max_bytes = coordinator.deps().service.max_artifact_bytes;
    s.write = [src, expected, drop_dir, max_bytes](const std::string& tmp) -> Result<std::int64_t> {
        return copy_from_drop_dir(drop_dir, src, max_bytes, expected, tmp);
    };
    s.caller_sent_bytes = false;
    co_return staged_answer(c.req, co_await coordinator.stage(std::move(s), c.principal()));
}

// --- deploying ----------------------------------------------------------------------------------

asio::awaitable<http::Response> DeployService::Impl::trigger(const Call& c) {
    auto q = http::query_params(c.req.target());
    if (!q) co_return error_answer(c.req, bad("malformed query string"));
    const bool wait = wants_wait(*q);
    Coordinator::TriggerRequest t;
    t.sr_id = (*q)["sr_id"];
    t.approver = (*q)["approver_id"];
    if (!c.req.body().empty()) {
        auto parsed = http::parse_json_object(c.req, coordinator.deps().service.max_json_depth);
        if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
        auto& body = std::get<json::object>(parsed);
        if (auto ok = only_fields(body, {"sr_id", "approver_id", "artifacts"}); !ok)
            co_return error_answer(c.req, ok.error());
        auto s = required_string(body, "sr_id", 128);
        if (!s) co_return error_answer(c.req, s.error());
        auto a = required_string(body, "approver_id");
        if (!a) co_return error_answer(c.req, a.error());
        t.sr_id = *s;
        t.approver = *a;
        if (const auto* set = body.if_contains("artifacts")) {
            auto expected = artifact_set_from_json(*set, "artifacts");
            if (!expected) co_return error_answer(c.req, expected.error());
            t.expected = std::move(*expected);
        }
    }
    if (t.sr_id.empty()) co_return error_answer(c.req, bad("sr_id: required"));
    if (t.approver.empty()) co_return error_answer(c.req, bad("approver_id: required"));
    if (c.req.count("Idempotency-Key")) {
        t.idempotency_key = std::string(c.req["Idempotency-Key"]);
        if (t.idempotency_key.empty() || t.idempotency_key.size() > 128)
            co_return error_answer(c.req, bad("Idempotency-Key: 1-128 characters"));
    }
    auto r = co_await coordinator.trigger(std::move(t), c.principal());
    co_return co_await work_answer(c, std::move(r), wait);
}

asio::awaitable<http::Response> DeployService::Impl::validation(const Call& c) {
    auto q = http::query_params(c.req.target());
    if (!q) co_return error_answer(c.req, bad("malformed query string"));
    const bool wait = wants_wait(*q);
    auto parsed = http::parse_json_object(c.req, coordinator.deps().service.max_json_depth);
    if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
    auto& body = std::get<json::object>(parsed);
    if (auto ok = only_fields(body, {"verdict", "pm_id", "comment"}); !ok)
        co_return error_answer(c.req, ok.error());
    auto verdict = required_string(body, "verdict", 16);
    if (!verdict) co_return error_answer(c.req, verdict.error());
    if (*verdict != "accepted" && *verdict != "rejected")
        co_return error_answer(c.req, bad("verdict: must be \"accepted\" or \"rejected\""));
    auto pm = required_string(body, "pm_id");
    if (!pm) co_return error_answer(c.req, pm.error());
    auto comment = optional_string(body, "comment");
    if (!comment) co_return error_answer(c.req, comment.error());
    Coordinator::VerdictRequest v;
    v.sr_id = c.seg[2];
    v.pm_id = *pm;
    v.comment = *comment;
    v.accepted = *verdict == "accepted";
    auto r = co_await coordinator.verdict(std::move(v), c.principal());
    co_return co_await work_answer(c, std::move(r), wait);
}

// POST /api/deploy/{sr_id}/rollback: no body (an empty JSON object is accepted); ?wait=true.
asio::awaitable<http::Response> DeployService::Impl::operator_rollback(const Call& c) {
    auto q = http::query_params(c.req.target());
    if (!q) co_return error_answer(c.req, bad("malformed query string"));
    const bool wait = wants_wait(*q);
    if (!c.req.body().empty()) {
        auto parsed = http::parse_json_object(c.req, coordinator.deps().service.max_json_depth);
        if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
        if (auto ok = only_fields(std::get<json::object>(parsed), {}); !ok)
            co_return error_answer(c.req, ok.error());
    }
    auto r = co_await coordinator.rollback(c.seg[2], c.principal());
    co_return co_await work_answer(c, std::move(r), wait);
}

// POST /api/deploy/{sr_id}/pause|resume|abort: the body is optional ({} or absent); abort
// takes {"on_abort": "keep_deployed"|"roll_back_all"} (default: the configured policy).
asio::awaitable<http::Response> DeployService::Impl::control(const Call& c,
                                                             deploy::ControlRequest request) {
    auto q = http::query_params(c.req.target());
    if (!q) co_return error_answer(c.req, bad("malformed query string"));
    Coordinator::ControlCall call;
    call.sr_id = c.seg[2];
    call.request = request;
    call.may_operate = c.who && c.who->roles.has(Role::operate);
    call.may_approve = c.who && c.who->roles.has(Role::validate);
    if (!c.req.body().empty()) {
        auto parsed = http::parse_json_object(c.req, coordinator.deps().service.max_json_depth);
        if (auto* r = std::get_if<http::Response>(&parsed)) co_return std::move(*r);
        auto& body = std::get<json::object>(parsed);
        if (request == deploy::ControlRequest::abort) {
            if (auto ok = only_fields(body, {"on_abort"}); !ok)
                co_return error_answer(c.req, ok.error());
            auto policy = optional_string(body, "on_abort", 32);
            if (!policy) co_return error_answer(c.req, policy.error());
            if (*policy == "keep_deployed")
                call.on_abort = deploy::AbortPolicy::keep_deployed;
            else if (*policy == "roll_back_all")
                call.on_abort = deploy::AbortPolicy::roll_back_all;
            else if (body.contains("on_abort"))
                co_return error_answer(
                    c.req, bad("on_abort: must be \"keep_deployed\" or \"roll_back_all\""));
        } else if (auto ok = only_fields(body, {}); !ok) {
            co_return error_answer(c.req, ok.error());
        }
    }
    auto r = co_await coordinator.control(std::move(call), c.principal());
    co_return co_await work_answer(c, std::move(r), wants_wait(*q));
}

// --- reading ----------------------------------------------------------------------------------

asio::awaitable<http::Response> DeployService::Impl::deploy_status(const Call& c) {
    const std::string sr_id = c.seg[2];
    auto task = co_await coordinator.read([&](store::Database& db) { return db.task(sr_id); });
    if (!task)
        co_return error_answer(c.req, ServiceError(ServiceErrc::store_unavailable,
                                                   "the store could not be read or written: " +
                                                       task.error().message));
    if (!*task)
        co_return error_answer(c.req,
                               ServiceError(ServiceErrc::not_found, "no task " + printable(sr_id)));
    json::object out{{"sr_id", sr_id}, {"task_status", (*task)->status}};
    json::object counts{{"total", 0},  {"pending", 0}, {"running", 0},    {"deployed", 0},
                        {"failed", 0}, {"skipped", 0}, {"rolled_back", 0}};
    auto count = [&](const char* k) { counts[k] = counts[k].as_int64() + 1; };
    json::array nodes;
    json::array tiers;
    json::value gate = nullptr;
    std::string rid_for_times;
    const double ratio = coordinator.deps().engine.rollout.failure_threshold;
    auto gate_json = [&](const deploy::TierProgress& t, const std::string& reason) {
        const bool tripped =
            t.finished > 0 && static_cast<double>(t.failed) / static_cast<double>(t.finished) > ratio;
        return json::value(json::object{{"tier", t.tier},
                                        {"failed", t.failed},
                                        {"done", t.finished},
                                        {"max_failure_ratio", ratio},
                                        {"tripped", tripped},
                                        {"reason", tripped ? reason : std::string()}});
    };

    if (auto live = coordinator.live(sr_id)) {
        const auto& p = *live->progress;
        if (p.status == deploy::RolloutStatus::running) out["task_status"] = live->task_status;
        out["rollout"] = json::object{{"id", live->rollout_id},
                                      {"status", deploy::to_string(p.status)},
                                      {"state", deploy::stored_status(p.status, p.control)},
                                      {"reason", p.reason},
                                      {"created_ms", live->created_ms},
                                      {"finished_ms", nullptr}};
        if (p.control != deploy::ControlState::running)
            out["rollout"].as_object()["state_by"] = p.control_by;
        if (p.awaiting_tier != 0) out["rollout"].as_object()["awaiting_tier"] = p.awaiting_tier;
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
        // The current tier: the last one that started.
        for (const auto& t : p.tiers)
            if (t.started > 0 || t.active) gate = gate_json(t, p.reason);
        rid_for_times = live->rollout_id;
    } else if ((*task)->rollout_id.empty()) {
        out["rollout"] = nullptr;
    } else {
        const std::string rid = (*task)->rollout_id, inst = (*task)->inst_id,
                          sys = (*task)->system_name;
        auto r = co_await coordinator.read([&](store::Database& db) { return db.rollout(rid); });
        auto results =
            co_await coordinator.read([&](store::Database& db) { return db.node_results(rid); });
        auto rows = co_await coordinator.read(
            [&](store::Database& db) { return db.inventory_nodes(inst, sys); });
        std::optional<Error> failed;
        if (!r) failed = r.error();
        if (!results) failed = results.error();
        if (!rows) failed = rows.error();
        if (failed)
            co_return error_answer(
                c.req, ServiceError(ServiceErrc::store_unavailable,
                                    "the store could not be read or written: " + failed->message));
        if (*r) {
            json::value finished = nullptr;
            if ((*r)->finished_ms) finished = *(*r)->finished_ms;
            out["rollout"] = json::object{{"id", (*r)->id},
                                          {"status", (*r)->status},
                                          {"state", (*r)->status},
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
            if (t.started > 0) gate = gate_json(t, *r ? (*r)->reason : std::string());
        }
        rid_for_times = rid;
    }
    // Console extensions: each node's start and end (node_results), the task's artifacts and
    // the safety gate of the current (or last) tier.
    std::map<std::string, std::pair<json::value, json::value>> times;
    if (!rid_for_times.empty()) {
        auto rows = co_await coordinator.read(
            [&](store::Database& db) { return db.node_results(rid_for_times); });
        if (rows)
            for (const auto& n : *rows)
                times[n.node] = {n.started_ms ? json::value(*n.started_ms) : json::value(nullptr),
                                 n.finished_ms ? json::value(*n.finished_ms) : json::value(nullptr)};
    }
    for (auto& v : nodes) {
        auto& o = v.as_object();
        auto it = times.find(std::string(o["name"].as_string()));
        o["started_ms"] = it == times.end() ? json::value(nullptr) : it->second.first;
        o["finished_ms"] = it == times.end() ? json::value(nullptr) : it->second.second;
    }
    auto arts =
        co_await coordinator.read([&](store::Database& db) { return db.artifacts_for(sr_id); });
    json::array art_list;
    if (arts)
        for (const auto& a : *arts)
            art_list.push_back(json::object{{"name", a.name}, {"sha256", a.sha256}, {"size", a.size}});
    out["artifacts"] = std::move(art_list);
    out["gate"] = std::move(gate);
    out["counts"] = std::move(counts);
    out["tiers"] = std::move(tiers);
    out["nodes"] = std::move(nodes);
    co_return http::json_response(c.req, bh::status::ok, out);
}

// --- live updates (Server-Sent Events) -----------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;

// One open stream: counted in the service's limits while it lives (the server drops the
// producer, and with it this state, when the stream ends).
struct LiveStream {
    // `owner` (the service's Impl, which holds the counters) lives at least as long as this:
    // the server may destroy a stream's producer after the service (at teardown).
    LiveStream(std::shared_ptr<const void> owner, asio::any_io_executor ex, std::size_t& all,
               std::size_t& mine)
        : timer(std::move(ex)), owner_(std::move(owner)), all_(all), mine_(mine) {
        ++all_;
        ++mine_;
    }
    ~LiveStream() {
        --all_;
        --mine_;
    }
    LiveStream(const LiveStream&) = delete;
    LiveStream& operator=(const LiveStream&) = delete;

    // Waits for the next reading: the first one at once (slot 0: a reading of its own), then
    // the start of the next tick of the common grid (live_slot), whose number it returns.
    asio::awaitable<std::uint64_t> next_tick() {
        if (!started) {
            started = true;
            co_return 0;
        }
        const std::uint64_t slot = live_slot(Clock::now()) + 1;
        timer.expires_at(live_slot_start(slot));
        co_await timer.async_wait(asio::use_awaitable);
        co_return slot;
    }
    std::string frame(const std::vector<LiveMessage>& msgs) {
        std::string out;
        for (const auto& m : msgs) out += sse_event(++seq, to_string(m.event), json::serialize(m.data));
        if (!out.empty() || Clock::now() - last_sent >= live_keepalive_interval) {
            if (out.empty()) out = sse_keepalive();
            last_sent = Clock::now();
        }
        return out;
    }

    asio::steady_timer timer;
    bool started = false;
    std::uint64_t seq = 0;
    Clock::time_point last_sent = Clock::now();
    RolloutDiff rollout;
    TaskListDiff tasks;

  private:
    std::shared_ptr<const void> owner_;
    std::size_t& all_;
    std::size_t& mine_;
};

}  // namespace

// The rollout document of one SR as its streams last read it, shared by all of them: on each
// tick of the grid the first stream to wake reads it, the others wait for that reading (the
// `ready` timer never expires: cancelling it wakes them) instead of reading it again. Held by
// the SR's streams; the service keeps a weak reference per SR.
struct SharedReading {
    explicit SharedReading(asio::any_io_executor ex) : ready(std::move(ex)) {
        ready.expires_at(Clock::time_point::max());
    }
    std::uint64_t slot = 0;  // the tick `doc` was read for (0: none yet)
    bool reading = false;    // a stream is reading for a newer tick
    std::shared_ptr<const json::object> doc;  // null: the task is gone or unreadable
    asio::steady_timer ready;
};

namespace {

using ReadDoc = std::function<asio::awaitable<http::Response>()>;

// The document as of tick `slot` (a newer one if there is); null when it cannot be read. Slot 0
// (a stream's first reading) is always a reading of its own.
asio::awaitable<std::shared_ptr<const json::object>> read_shared(SharedReading& r,
                                                                 std::uint64_t slot,
                                                                 const ReadDoc& read_doc) {
    auto read_now = [&]() -> asio::awaitable<std::shared_ptr<const json::object>> {
        http::Response res = co_await read_doc();
        if (res.result() != bh::status::ok) co_return nullptr;
        boost::system::error_code ec;
        auto doc = json::parse(res.body(), ec);
        if (ec || !doc.is_object()) co_return nullptr;
        co_return std::make_shared<const json::object>(std::move(doc.as_object()));
    };
    if (slot == 0) co_return co_await read_now();
    while (r.slot < slot) {
        if (!r.reading) {
            // This stream reads for everyone; if it is cancelled half way (its viewer left),
            // the guard wakes the others and one of them reads instead.
            r.reading = true;
            struct Done {
                SharedReading& r;
                ~Done() {
                    r.reading = false;
                    r.ready.cancel();
                }
            } done{r};
            auto doc = co_await read_now();
            r.doc = std::move(doc);
            r.slot = slot;
            co_return r.doc;
        }
        boost::system::error_code ec;
        co_await r.ready.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
        if (cs.cancelled() != asio::cancellation_type::none)
            throw boost::system::system_error(asio::error::operation_aborted);
    }
    co_return r.doc;
}

http::Response event_stream_head(const http::Request& req) {
    http::Response res{bh::status::ok, req.version()};
    res.set(bh::field::content_type, "text/event-stream");
    res.set(bh::field::cache_control, "no-cache");
    res.set("X-Accel-Buffering", "no");
    return res;
}

}  // namespace

std::optional<http::Response> DeployService::Impl::open_stream(const Call& c) {
    if (!c.stream)
        return http::error_response(c.req, bh::status::not_acceptable, "not_streaming",
                                    "this entry point cannot answer with a stream");
    auto& mine = streams_by_principal[c.principal()];
    const std::size_t allowed = live_streams_allowed(coordinator.deps().service.max_connections);
    if (streams_open >= allowed || mine >= max_live_streams_per_principal) {
        if (mine == 0) streams_by_principal.erase(c.principal());
        return http::error_response(
            c.req, bh::status::too_many_requests, "too_many_streams",
            "at most " + std::to_string(allowed) + " live streams in all and " +
                std::to_string(max_live_streams_per_principal) + " per client ('" +
                c.principal() + "' has " + std::to_string(mine) + ")");
    }
    return std::nullopt;
}

bool DeployService::Impl::stream_session_lives(const std::string& session_key) {
    return session_key.empty() || sessions.alive(session_key, wall_ms());
}

asio::awaitable<http::Response> DeployService::Impl::deploy_events(const Call& c) {
    const std::string sr_id = c.seg[2];
    // The document a viewer would GET, read the same way (404 for an unknown SR).
    auto self = shared_from_this();
    auto read_doc = [self, sr_id, req = c.req]() -> asio::awaitable<http::Response> {
        const std::vector<std::string> seg{"api", "deploy", sr_id};
        const Call call{req, nullptr, seg};
        co_return co_await self->deploy_status(call);
    };
    http::Response first = co_await read_doc();
    if (first.result() != bh::status::ok) co_return first;
    if (auto refused = open_stream(c)) co_return std::move(*refused);
    auto st = std::make_shared<LiveStream>(shared_from_this(), executor, streams_open,
                                           streams_by_principal[c.principal()]);
    auto shared = live_readings[sr_id].lock();
    if (!shared) {
        std::erase_if(live_readings, [](const auto& kv) { return kv.second.expired(); });
        shared = std::make_shared<SharedReading>(executor);
        live_readings[sr_id] = shared;
    }
    *c.stream = [self, st, shared, read = ReadDoc(read_doc),
                 key = c.session_key]() -> asio::awaitable<std::optional<std::string>> {
        for (;;) {
            const std::uint64_t slot = co_await st->next_tick();
            if (!self->stream_session_lives(key)) co_return std::nullopt;
            auto doc = co_await read_shared(*shared, slot, read);
            if (!doc) co_return std::nullopt;  // the task is gone
            std::string chunk = st->frame(st->rollout.update(*doc));
            if (!chunk.empty()) co_return chunk;
        }
    };
    co_return event_stream_head(c.req);
}

asio::awaitable<http::Response> DeployService::Impl::task_events(const Call& c) {
    if (auto refused = open_stream(c)) co_return std::move(*refused);
    auto st = std::make_shared<LiveStream>(shared_from_this(), executor, streams_open,
                                           streams_by_principal[c.principal()]);
    auto self = shared_from_this();
    http::Request req = c.req;
    req.target("/api/tasks?limit=200");
    *c.stream = [self, st, req,
                 key = c.session_key]() -> asio::awaitable<std::optional<std::string>> {
        for (;;) {
            co_await st->next_tick();
            if (!self->stream_session_lives(key)) co_return std::nullopt;
            const std::vector<std::string> seg{"api", "tasks"};
            const Call call{req, nullptr, seg};
            http::Response r = co_await self->list_tasks(call);
            if (r.result() != bh::status::ok) continue;
            boost::system::error_code ec;
            auto doc = json::parse(r.body(), ec);
            if (ec || !doc.is_object() || !doc.as_object().contains("tasks")) continue;
            const auto& tasks = doc.as_object().at("tasks");
            if (!tasks.is_array()) continue;
            std::string chunk = st->frame(st->tasks.update(tasks.as_array()));
            if (!chunk.empty()) co_return chunk;
        }
    };
    co_return event_stream_head(c.req);
}

asio::awaitable<http::Response> DeployService::Impl::list_tasks(const Call& c) {
    auto q = http::query_params(c.req.target());
    if (!q) co_return error_answer(c.req, bad("malformed query string"));
    if (auto ok = only_fields(json::object{[&] {
                                  json::object o;
                                  for (const auto& [k, v] : *q) o[k] = v;
                                  return o;
                              }()},
                              {"status", "requester", "approver", "q", "limit", "before"});
        !ok)
        co_return error_answer(c.req, bad("query " + ok.error().message));
    store::Database::TaskFilter f;
    f.status = (*q)["status"];
    f.requester = (*q)["requester"];
    f.approver = (*q)["approver"];
    f.text = (*q)["q"];
    if (f.text.size() > 256) co_return error_answer(c.req, bad("q: longer than 256"));
    auto number = [](const std::string& text, std::int64_t& into) {
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), into);
        return !text.empty() && ec == std::errc() && end == text.data() + text.size();
    };
    std::int64_t limit = 50;
    if (!(*q)["limit"].empty() && (!number((*q)["limit"], limit) || limit < 1 || limit > 200))
        co_return error_answer(c.req, bad("limit: an integer from 1 to 200"));
    std::optional<TaskCursor> cursor;
    if (!(*q)["before"].empty()) {
        cursor = parse_task_cursor((*q)["before"]);
        if (!cursor)
            co_return error_answer(c.req, bad("before: a next_cursor value (or an updated_ms "
                                              "value, an integer)"));
        // The store's `before` is strict on updated_ms alone: a cursor naming a task reads from
        // its millisecond on and drops the tasks up to it (cursor_skip).
        if (cursor->sr_id.empty())
            f.before_updated_ms = cursor->updated_ms;
        else if (cursor->updated_ms < std::numeric_limits<std::int64_t>::max())
            f.before_updated_ms = cursor->updated_ms + 1;
    }
    // Read enough rows to fill the page after the skipped ones (more when many tasks share the
    // cursor's millisecond).
    std::vector<store::TaskRecord> rows;
    std::size_t skip = 0;
    for (std::int64_t want = limit;;) {
        f.limit = static_cast<int>(want);
        auto page = co_await coordinator.read([&](store::Database& db) { return db.tasks_page(f); });
        if (!page)
            co_return error_answer(c.req, ServiceError(ServiceErrc::store_unavailable,
                                                       "the store could not be read or written: " +
                                                           page.error().message));
        skip = cursor ? cursor_skip(*cursor, *page) : 0;
        const auto got = static_cast<std::int64_t>(page->size());
        const auto left = got - static_cast<std::int64_t>(skip);
        if (got < want || left >= limit || want >= 1'000'000) {
            rows = std::move(*page);
            break;
        }
        want = left > 0 ? static_cast<std::int64_t>(skip) + limit : want * 2;
    }
    rows.erase(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(skip));
    if (static_cast<std::int64_t>(rows.size()) > limit) rows.resize(static_cast<std::size_t>(limit));
    json::array tasks;
    for (const auto& t : rows) {
        auto o = task_json(t, {});
        o.erase("artifacts");
        tasks.push_back(std::move(o));
    }
    // next_before (the last updated_ms) is kept for old clients; next_cursor also names the
    // last task, so tasks sharing that millisecond are not skipped.
    json::value next = nullptr, next_cursor = nullptr;
    if (static_cast<std::int64_t>(rows.size()) == limit) {
        next = rows.back().updated_ms;
        next_cursor = json::string(task_cursor(rows.back().updated_ms, rows.back().sr_id));
    }
    co_return http::json_response(c.req, bh::status::ok,
                                  json::object{{"tasks", std::move(tasks)},
                                               {"next_before", next},
                                               {"next_cursor", next_cursor}});
}

asio::awaitable<http::Response> DeployService::Impl::node_detail(const Call& c) {
    const std::string sr_id = c.seg[2], node = c.seg[4];
    auto task = co_await coordinator.read([&](store::Database& db) { return db.task(sr_id); });
    auto unavailable = [&](const Error& e) {
        return error_answer(c.req, ServiceError(ServiceErrc::store_unavailable,
                                                "the store could not be read or written: " +
                                                    e.message));
    };
    if (!task) co_return unavailable(task.error());
    if (!*task)
        co_return error_answer(c.req,
                               ServiceError(ServiceErrc::not_found, "no task " + printable(sr_id)));
    const std::string rid = (*task)->rollout_id, inst = (*task)->inst_id,
                      sys = (*task)->system_name;
    auto row = co_await coordinator.read(
        [&](store::Database& db) { return db.node_result(rid, node); });
    if (!row) co_return unavailable(row.error());
    if (rid.empty() || !*row)
        co_return error_answer(c.req, ServiceError(ServiceErrc::not_found,
                                                   "no node " + printable(node) + " in the rollout of " +
                                                       printable(sr_id)));
    auto inv = co_await coordinator.read(
        [&](store::Database& db) { return db.inventory_nodes(inst, sys); });
    auto audit =
        co_await coordinator.read([&](store::Database& db) { return db.audit_for_rollout(rid); });
    if (!inv) co_return unavailable(inv.error());
    if (!audit) co_return unavailable(audit.error());
    std::int64_t tier = 0;
    for (const auto& n : *inv)
        if (n.name == node) {
            auto v = json::parse(n.payload);
            const auto* t = v.as_object().if_contains("tier");
            tier = t && t->is_int64() ? t->as_int64() : 2;
        }
    std::vector<store::AuditRow> mine;
    json::array rows;
    for (const auto& r : *audit) {
        if (r.node != node) continue;
        mine.push_back(r);
        rows.push_back(audit_row_json(r));
    }
    json::array steps;
    for (const auto& s : step_spans(mine))
        steps.push_back(json::object{
            {"step", s.step},
            {"status", s.status},
            {"started_ms", s.started_ms},
            {"duration_ms", s.duration_ms ? json::value(*s.duration_ms) : json::value(nullptr)},
            {"exit_code", s.exit_code ? json::value(*s.exit_code) : json::value(nullptr)},
            {"detail", s.detail}});
    const auto& n = **row;
    co_return http::json_response(
        c.req, bh::status::ok,
        json::object{{"sr_id", sr_id},
                     {"rollout_id", rid},
                     {"name", node},
                     {"tier", tier},
                     {"state", lower(n.status)},
                     {"step", n.step},
                     {"error", n.error},
                     {"started_ms", n.started_ms ? json::value(*n.started_ms) : json::value(nullptr)},
                     {"finished_ms", n.finished_ms ? json::value(*n.finished_ms) : json::value(nullptr)},
                     {"steps", std::move(steps)},
                     {"audit", std::move(rows)}});
}

asio::awaitable<http::Response> DeployService::Impl::audit_page(const Call& c) {
    auto q = http::query_params(c.req.target());
    if (!q) co_return error_answer(c.req, bad("malformed query string"));
    const std::string sr_id = (*q)["sr_id"];
    if (sr_id.empty()) co_return error_answer(c.req, bad("sr_id: required"));
    std::int64_t after = 0;
    int limit = 100;
    auto whole_number = [](const std::string& text, auto& into) {
        if (text.empty()) return true;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), into);
        return ec == std::errc() && end == text.data() + text.size();
    };
    if (!whole_number((*q)["after_id"], after) || !whole_number((*q)["limit"], limit))
        co_return error_answer(c.req, bad("after_id and limit must be integers"));
    if (limit < 1 || limit > 1000 || after < 0)
        co_return error_answer(c.req,
                               bad("limit: must be between 1 and 1000; after_id: not negative"));
    auto rows = co_await coordinator.read(
        [&](store::Database& db) { return db.audit_for(sr_id, after, limit); });
    if (!rows)
        co_return error_answer(c.req, ServiceError(ServiceErrc::store_unavailable,
                                                   "the store could not be read or written: " +
                                                       rows.error().message));
    json::array events;
    for (const auto& r : *rows) events.push_back(audit_row_json(r));
    json::value next = nullptr;
    if (static_cast<int>(rows->size()) == limit) next = rows->back().id;
    co_return http::json_response(
        c.req, bh::status::ok,
        json::object{{"sr_id", sr_id}, {"events", std::move(events)}, {"next_after_id", next}});
}

asio::awaitable<http::Response> DeployService::Impl::healthz(const Call& c) {
    const auto& deps = coordinator.deps();
    if (coordinator.stopping())
        co_return http::json_response(
            c.req, bh::status::service_unavailable,
            json::object{{"status", "stopping"}, {"rollouts_running", coordinator.running()}});
    json::object o{{"status", "ok"},
                   {"rollouts_running", coordinator.running()},
                   {"store_queue", deps.audit->queue_depth()}};
    // Degraded: the store cannot commit, so no new work is accepted (503 to monitors and load
    // balancers too) until the writer's retry commits.
    if (auto e = deps.audit->last_error(); e && deps.audit->degraded()) {
        o["status"] = "degraded";
        o["store_error"] = e->message;
        co_return http::json_response(c.req, bh::status::service_unavailable, o);
    }
    co_return http::json_response(c.req, bh::status::ok, o);
}

asio::awaitable<http::Response> DeployService::Impl::metrics(const Call& c) {
    // Exposition format: include/guardia/service/metrics.hpp; every metric: docs/OPERATIONS.md.
    const auto& deps = coordinator.deps();
    const auto& stats = coordinator.stats();
    Exposition m;
    auto single = [&](const char* name, const char* type, const char* help, std::uint64_t v) {
        m.family(name, type, help);
        m.sample(name, {}, v);
    };
    m.family("guardia_build_info", "gauge",
             "Always 1; the labels name the version, commit and libraries of this binary.");
    m.sample("guardia_build_info", build_info_labels(), std::uint64_t{1});
    m.family("guardia_rollouts_total", "counter", "Rollouts finished by this process, by status.");
    for (const auto& [k, v] : stats.rollouts_by_status)
        m.sample("guardia_rollouts_total", {{"status", k}}, v);
    m.family("guardia_nodes_total", "counter", "Node outcomes in this process, by outcome.");
    for (const auto& [k, v] : stats.nodes_by_outcome)
        m.sample("guardia_nodes_total", {{"outcome", k}}, v);
    m.family("guardia_step_duration_seconds", "histogram",
             "Time nodes spent in each pipeline step.");
    for (const auto& [k, h] : stats.steps)
        m.histogram("guardia_step_duration_seconds", {{"step", k}}, h);
    m.family("guardia_rollout_duration_seconds", "histogram",
             "Wall time of the rollouts this process finished, by final status.");
    for (const auto& [k, h] : stats.rollouts_by_duration)
        m.histogram("guardia_rollout_duration_seconds", {{"status", k}}, h);
    single("guardia_rollouts_running", "gauge", "Rollouts in flight.", coordinator.deploying());
    single("guardia_pm_rollbacks_running", "gauge", "PM-rejected releases being rolled back.",
           coordinator.rolling_back());
    single("guardia_nodes_claimed", "gauge",
           "Nodes held by an SR (deploying, awaiting its PM verdict, or rolling back).",
           coordinator.claims().size());
    single("guardia_ssh_sessions_open", "gauge", "SSH sessions open now.",
           ssh::open_session_count());
    single("guardia_audit_queue_depth", "gauge", "Store writes queued, not yet committed.",
           deps.audit->queue_depth());
    single("guardia_store_degraded", "gauge",
           "1 while the store cannot commit (audit or stop: no new work is accepted).",
           deps.audit->degraded() ? 1 : 0);
    single("guardia_audit_spilled_total", "counter",
           "Store writes spilled to the journal at stop (replayed at the next start).",
           deps.audit->spilled());
    single("guardia_audit_replayed_total", "counter",
           "Store writes replayed from the spill journal at start-up.", deps.audit->replayed());
    single("guardia_audit_committed_total", "counter", "Store writes committed.",
           deps.audit->committed());
    single("guardia_audit_rejected_total", "counter", "Store writes refused by SQLite.",
           deps.audit->rejected());
    m.family("guardia_http_requests_total", "counter", "API requests answered, by status code.");
    for (const auto& [k, v] : http_by_status)
        m.sample("guardia_http_requests_total", {{"code", std::to_string(k)}}, v);
    if (deps.notifier) {
        single("guardia_notifications_delivered_total", "counter", "Webhooks delivered.",
               deps.notifier->delivered());
        single("guardia_notifications_failed_attempts_total", "counter",
               "Webhook attempts that failed (retried).", deps.notifier->failed_attempts());
        single("guardia_notifications_pending", "gauge", "Webhooks waiting for delivery.",
               deps.notifier->pending());
    }
    co_return http::text_response(c.req, bh::status::ok, m.str(),
                                  "text/plain; version=0.0.4; charset=utf-8");
}

// --- public -----------------------------------------------------------------------------------

DeployService::DeployService(asio::any_io_executor executor, DeployServiceDeps deps) {
    if (!deps.clients) throw std::logic_error("DeployService needs its clients");
    impl_ = std::make_shared<Impl>(std::move(executor), std::move(deps));
}

DeployService::~DeployService() = default;

asio::awaitable<std::size_t> DeployService::recover() {
    co_return co_await impl_->coordinator.recover();
}

std::optional<http::Response> DeployService::admit(const http::Request& head) {
    return impl_->admit(head);
}

asio::awaitable<http::Response> DeployService::handle(http::Request request) {
    co_return co_await impl_->handle(std::move(request));
}

asio::awaitable<http::Reply> DeployService::handle_streaming(http::Request request) {
    http::StreamProducer stream;
    http::Response res = co_await impl_->handle_streaming(std::move(request), &stream);
    co_return http::Reply(std::move(res), std::move(stream));
}

asio::awaitable<void> DeployService::drain(std::chrono::milliseconds grace) {
    co_await impl_->coordinator.drain(grace);
}

bool DeployService::stopping() const {
    return impl_->coordinator.stopping();
}

std::size_t DeployService::running() const {
    return impl_->coordinator.running();
}

}  // namespace guardia::service
