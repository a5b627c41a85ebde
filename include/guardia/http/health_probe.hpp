// Health probe: the pipeline's "is the service up" step (the HEALTH step, docs/ARCHITECTURE.md).
//
// Four kinds of check (ProbeKind): an HTTP GET (the default), the same over TLS (HTTPS, verified
// against the system trust store or a CA file, with SNI and host name / IP verification), a
// bare TCP connect, and a command run by the caller (the pipeline runs it on the node over its
// SSH session and passes it in as an AttemptFn). One polling loop serves all four.
//
// Beast HTTP/1.1 client on the caller's executor: no thread, no blocking call. Every attempt
// is one GET on a fresh TCP connection with `Connection: close`. Not reusing a connection is
// deliberate: a restarted service must be reached the way its clients reach it (a kept-alive
// socket to the old process proves nothing), and a thousand nodes polled every 2 s should
// not each pin an idle socket between polls.
//
// Every network wait (resolve, connect, write, read) has a deadline, and both functions honour
// Asio cancellation (e.g. `probe || timer`): a cancelled call returns errc::cancelled.
// Answers are bounded: headers up to max_response_header, body up to max_response_body;
// a larger answer counts as a failed attempt, never as healthy.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/http/health_check.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace guardia::http {

// One attempt's result: `ok` when healthy; otherwise `reason` says why in a few words that fit
// after "last: " in a message. `status` is the HTTP status (or a command's exit code), 0 when
// there was none. `code` is set when the attempt got no answer at all (errc::cancelled for a
// cancelled attempt).
struct Attempt {
    Attempt() {}
    bool ok = false;
    int status = 0;
    boost::system::error_code code;
    std::string reason;
};

inline constexpr std::size_t max_response_header = 8 * 1024;
inline constexpr std::size_t max_response_body = 64 * 1024;

// User-declared constructor on purpose: GCC 12 miscompiles a braced aggregate temporary
// passed by value to a coroutine (see ssh/session.hpp).
struct HealthCheck {
    HealthCheck() {}
    std::string host;  // numeric address (no DNS) or a name resolved under the deadline
    std::uint16_t port = 0;
    std::string path = "/";
    std::chrono::milliseconds timeout{30000};  // overall: no attempt starts after this
    std::chrono::milliseconds interval{2000};  // between attempt starts
    int required_consecutive = 1;              // strict mode (tier 1) uses 3
    // Per attempt (connect + request + answer), capped by what remains of `timeout`.
    std::chrono::milliseconds request_timeout{5000};
    std::string node;  // names the node in messages

    ProbeKind kind = ProbeKind::http;  // command: only through the AttemptFn overload below
    StatusSet expect_status;           // http/https: the accepted statuses
    std::string body_contains;         // http/https: a substring the body must contain
    // https: a PEM bundle to verify against instead of the system trust store; the name sent
    // as SNI and verified instead of `host`; no verification at all (insecure, by name only).
    std::string ca_file;
    std::string tls_server_name;
    bool insecure_skip_verify = false;
    std::string command;  // command: for messages ("command 'test -f ...'")
};

// What the check probes, for messages and the audit log: "https://10.0.0.5:8443/health",
// "tcp://10.0.0.5:5432", "command 'systemctl is-active app'".
std::string describe_target(const HealthCheck& check);

// Runs one attempt of a caller-defined check, within `limit` (already capped by what remains
// of the overall timeout).
using AttemptFn = std::function<boost::asio::awaitable<Attempt>(std::chrono::milliseconds limit)>;

struct HealthOutcome {
    int attempts = 0;
    int last_status = 0;  // HTTP status of the last attempt; 0 when it got no answer
    std::chrono::milliseconds elapsed{0};
    // Why the most recent failed attempt failed ("HTTP 503", "connection refused", ...);
    // kept after later successes, empty when no attempt failed.
    std::string last_error;
};

// Polls the check (GET http(s)://host:port/path, or a TCP connect to host:port), one attempt
// every `interval` (measured from attempt start; an attempt that overruns the interval is
// followed at once), until `required_consecutive` consecutive healthy attempts: a status in
// `expect_status` (and a body holding `body_contains`) or, for tcp, a connection. Anything
// else (another status, a connect or read error, a TLS verification failure, an attempt's
// timeout) resets the count.
// Errors: errc::timeout when `timeout` elapses first, with a message naming node, URL,
// attempts and the last failure ("...not healthy after 30 s: 15 attempts, last: HTTP 503");
// errc::cancelled; errc::invalid_argument for an unusable check.
boost::asio::awaitable<Result<HealthOutcome>> wait_healthy(HealthCheck check);
// The same polling loop around `attempt` (kind command, or any other check the caller runs).
boost::asio::awaitable<Result<HealthOutcome>> wait_healthy(HealthCheck check, AttemptFn attempt);

// Whether one answer passes the check's status set and body condition; `reason` says why not
// ("HTTP 503", "HTTP 200 (expected 204)", "HTTP 200 but the body does not contain 'UP'").
bool answer_accepted(const HealthCheck& check, int status, std::string_view body,
                     std::string& reason);

// One GET; returns the status whatever it is (a 503 is a value, not an error).
// Errors: errc::connect_failed (refused, unresolvable), errc::timeout (nothing within
// `timeout`), errc::connection_lost (closed or reset before a full answer), Beast's own
// http::error codes for malformed or oversized answers, errc::cancelled,
// errc::invalid_argument.
boost::asio::awaitable<Result<int>> http_get_status(std::string host, std::uint16_t port,
                                                    std::string path,
                                                    std::chrono::milliseconds timeout);

}  // namespace guardia::http
