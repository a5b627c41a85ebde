// HTTP health probe: the pipeline's "is the service up" step (the HEALTH step, docs/ARCHITECTURE.md).
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

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace guardia::http {

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
};

struct HealthOutcome {
    int attempts = 0;
    int last_status = 0;  // HTTP status of the last attempt; 0 when it got no answer
    std::chrono::milliseconds elapsed{0};
    // Why the most recent failed attempt failed ("HTTP 503", "connection refused", ...);
    // kept after later successes, empty when no attempt failed.
    std::string last_error;
};

// Polls GET http://host:port/path, one attempt every `interval` (measured from attempt
// start; an attempt that overruns the interval is followed at once), until
// `required_consecutive` consecutive 200s. Any other status, a connect or read error or an
// attempt's timeout resets the count.
// Errors: errc::timeout when `timeout` elapses first, with a message naming node, URL,
// attempts and the last failure ("...not healthy after 30 s: 15 attempts, last: HTTP 503");
// errc::cancelled; errc::invalid_argument for an unusable check.
boost::asio::awaitable<Result<HealthOutcome>> wait_healthy(HealthCheck check);

// One GET; returns the status whatever it is (a 503 is a value, not an error).
// Errors: errc::connect_failed (refused, unresolvable), errc::timeout (nothing within
// `timeout`), errc::connection_lost (closed or reset before a full answer), Beast's own
// http::error codes for malformed or oversized answers, errc::cancelled,
// errc::invalid_argument.
boost::asio::awaitable<Result<int>> http_get_status(std::string host, std::uint16_t port,
                                                    std::string path,
                                                    std::chrono::milliseconds timeout);

}  // namespace guardia::http
