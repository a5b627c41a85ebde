// The web console's server side (issue 15): its embedded files and the answers for /ui.
//
// Why the service layer and not http: the http layer is a generic server (it knows requests,
// limits and connections, not what a path means); which paths are the console, the security
// headers its pages carry and the files compiled into the binary are the console's policy, and
// the console is a part of the deployment service (its pages call the service's /api). The
// asset table is generated at build time (cmake/embed_files.cmake over src/ui/*).
#pragma once

#include "guardia/http/api_util.hpp"
#include "guardia/service/clients.hpp"
#include "guardia/store/records.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::service {

struct UiAsset {
    std::string_view name;   // base name in src/ui/, e.g. "app.js"
    std::string_view bytes;  // the file's content, embedded at build time
};

// Every file of src/ui/, sorted by name (generated source, ui_assets.cpp in the build tree).
std::span<const UiAsset> ui_assets();
// The asset of that exact name, or nullptr.
const UiAsset* find_ui_asset(std::string_view name);
// Content-Type by extension: text/html, text/javascript, text/css, image/svg+xml (each with
// charset=utf-8 but svg), application/json; "" for an extension the console does not serve.
std::string_view ui_content_type(std::string_view name);

// The headers every /ui answer carries: the Content-Security-Policy of the console (no inline
// script or style, same-origin fetches only, no framing), nosniff, no referrer, no framing,
// Cache-Control: no-cache.
inline constexpr std::string_view ui_csp =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
void add_ui_security_headers(http::Response& res);

// Whether the request's path is the console's (/ui or below); `seg` as path_segments gives it.
bool is_ui_path(const std::vector<std::string>& seg);
// The answer to a static console request (any /ui path but /ui/session): GET or HEAD of /ui is
// 302 to /ui/, of /ui/ is index.html, of /ui/<file> that file; an unknown file is 404, another
// method 405. Public: the files hold no data.
http::Response ui_static_answer(const http::Request& req, const std::vector<std::string>& seg);

// The steps of one node's pipeline from its audit rows (oldest first): each STEP_START opens a
// step, the next STEP_OK / STEP_FAILED of that step closes it (status OK / FAIL, its duration,
// exit code and detail); a step never closed is RUNNING. Rows of other events are skipped.
struct StepSpan {
    std::string step;
    std::string status;  // "OK", "FAIL", "RUNNING"
    std::int64_t started_ms = 0;
    std::optional<std::int64_t> duration_ms;
    std::optional<int> exit_code;
    std::string detail;
};
std::vector<StepSpan> step_spans(const std::vector<store::AuditRow>& rows);

// --- GET /api/tasks paging ---------------------------------------------------------------------
//
// Pages run newest updated_ms first, ties by sr_id descending; the cursor names the last task of
// a page by both, so tasks sharing its millisecond are neither skipped nor repeated. Opaque to
// clients ("c1.<updated_ms>.<sr_id in hex>"); a plain integer (the old cursor, an updated_ms)
// is still accepted and keeps its meaning: updated_ms strictly below it.
struct TaskCursor {
    std::int64_t updated_ms = 0;
    std::string sr_id;  // empty: an old numeric cursor
};
std::string task_cursor(std::int64_t updated_ms, std::string_view sr_id);
// nullopt: not a cursor (a negative number, a malformed or unknown form).
std::optional<TaskCursor> parse_task_cursor(std::string_view text);
// How many leading rows of a page read from the cursor's millisecond on (newest first, ties by
// sr_id descending) are at or before the cursor's task: the tasks the previous page ended with.
// 0 for an old numeric cursor.
std::size_t cursor_skip(const TaskCursor& cursor, const std::vector<store::TaskRecord>& rows);

// --- sessions (POST/GET/DELETE /ui/session) ----------------------------------------------------
//
// A browser signs in with a client token once and then holds a session cookie; the cookie
// authenticates /api/* and /metrics like the client's Bearer token, with the client's roles.
// Its value is 256 random bits (OpenSSL RAND_bytes), kept by the service only as its SHA-256
// (a memory dump does not hold a usable cookie), looked up by that digest (a timing difference
// of the lookup tells an attacker about digests, not about cookies). Because the browser sends
// the cookie by itself, every state-changing request it authenticates must also prove that the
// page of this origin sent it: the X-Guardia-CSRF header carries the session's csrf value
// (a page of another origin cannot read it; compared in constant time), and an Origin header,
// when present, must be this service's own.

inline constexpr std::string_view session_cookie_name = "guardia_session";
inline constexpr std::string_view csrf_header = "X-Guardia-CSRF";

// The value of cookie `name` in the request's Cookie header(s) ("a=1; b=2"); the first one
// when it appears more than once; nullopt when absent.
std::optional<std::string_view> cookie_value(const http::Request& req, std::string_view name);

enum class CsrfVerdict : std::uint8_t {
    ok,              // safe method, or the header matches and the origin is ours (or absent)
    missing_token,   // a state-changing request without X-Guardia-CSRF
    wrong_token,     // X-Guardia-CSRF differs from the session's value
    foreign_origin,  // Origin is not scheme://<Host header> of this service (or "null")
};
std::string_view to_string(CsrfVerdict);
// The decision for a request authenticated by a session cookie whose csrf value is
// `session_csrf`; `tls`: the service speaks HTTPS (the scheme its own origin has).
// `public_url` (service.public_url; empty: none): how browsers reach the service, e.g. through a
// TLS-terminating proxy; when set, the one origin accepted is its origin (url_origin), whatever
// the listener speaks and whatever the Host header says.
CsrfVerdict csrf_check(const http::Request& req, std::string_view session_csrf, bool tls,
                       std::string_view public_url = {});
// The origin of an http(s) URL as a browser writes it in an Origin header: the scheme and host
// lower-cased, the port kept unless it is the scheme's default (80, 443), no path:
// "https://Guardia.Example.com:443/x" -> "https://guardia.example.com".
std::string url_origin(std::string_view url);
// Whether the session cookie gets Secure: the service speaks TLS, or public_url is https (a
// proxy terminates TLS in front of a plain-HTTP listener).
bool cookie_secure(bool tls, std::string_view public_url);

struct Session {
    Principal who;
    std::string csrf;           // 256 random bits, hex; given to the page, echoed in the header
    std::int64_t created_ms = 0;
    std::int64_t last_used_ms = 0;
    std::int64_t expires_ms = 0;  // min(created + max_age, last_used + idle)
};

struct SessionLimits {
    SessionLimits() {}
    // Beyond max_sessions: the oldest session of the principal holding the most is evicted.
    std::size_t max_sessions = 1000;
    // A principal's sign-in beyond this ends that principal's own oldest session, never another's
    // (one client signing in 1,000 times must not sign everyone else out).
    std::size_t max_per_principal = 16;
    std::int64_t max_age_ms = 8 * 3600 * 1000;  // from sign-in
    std::int64_t idle_ms = 3600 * 1000;         // since the last request
};

// In memory only: a restart signs everyone out. Single-threaded (the service's executor).
class SessionStore {
  public:
    explicit SessionStore(SessionLimits limits = SessionLimits());
    struct Opened {
        std::string cookie;  // the cookie's value: returned once, never stored
        Session session;
    };
    Opened open(const Principal& who, std::int64_t now_ms);
    // The live session of a cookie value, its idle clock reset; nullopt (and forgotten) when
    // unknown, malformed, expired or idle too long.
    std::optional<Session> find(std::string_view cookie, std::int64_t now_ms);
    // Whether the session whose key (key_of(cookie)) is given still lives: neither signed out,
    // evicted, expired nor idle too long. Does not reset the idle clock (a live stream's ticks
    // are not the user's activity); an ended session is forgotten. What a live stream opened
    // with the cookie re-checks on every tick (it keeps the key, never the cookie).
    bool alive(std::string_view key, std::int64_t now_ms);
    static std::string key_of(std::string_view cookie);  // SHA-256 hex
    // Forgets the session; false when there was none.
    bool close(std::string_view cookie);
    std::size_t size() const { return by_digest_.size(); }

  private:
    SessionLimits limits_;
    std::map<std::string, Session, std::less<>> by_digest_;  // SHA-256 hex of the cookie
};

// Set-Cookie values: the session (HttpOnly, SameSite=Strict, Path=/, Secure under TLS) and
// its removal (Max-Age=0).
std::string session_set_cookie(std::string_view cookie, bool tls);
std::string session_clear_cookie(bool tls);

}  // namespace guardia::service
