// Webhook notifications from a durable outbox (docs/OPERATIONS.md, notifications).
//
// enqueue() renders one delivery per webhook subscribed to the event (URL and JSON body,
// final from then on) and writes it to the store's outbox through the AuditWriter; it
// completes once the rows are durable, so a notice the service has promised survives a
// crash. The delivery loop, on the same executor, POSTs each pending row until a 2xx
// answer, retrying with exponential backoff; a restart loads the rows still pending.
//
// Delivery is AT LEAST ONCE. A 2xx is written to the store (delivered_ms) and awaited
// durable before the delivery counts as done, but a crash between the receiver's 2xx and
// that commit, or a stop() that cuts an attempt after the request left, sends the delivery
// again. Every delivery carries a unique id in `X-Guardia-Delivery` (also "delivery_id" in
// the default body): receivers de-duplicate on it.
//
// Secrets: configured header values (e.g. Authorization) are never written to the store,
// the audit log or the logs. The outbox row holds the URL, the body and, in its `headers`
// column, only {"webhook": "<name>"}; the headers are taken from the current configuration
// by that name when the delivery is sent. A delivery whose webhook was removed from the
// configuration gives up with an error naming it. (Secrets must therefore not be put in the
// URL or the template: those are stored.) The same holds for a webhook's signing secret: each
// attempt is signed at send time over the stored body (X-Guardia-Timestamp and
// X-Guardia-Signature, webhook_signature.hpp) with the secret the configuration holds.
//
// Scheduling: deliveries go in order of next attempt; at most one attempt per webhook at a
// time (a receiver that is down is not hammered by parallel connects, and one that is up
// gets its notices in queue order) and at most NotifierConfig::max_concurrent attempts in
// all (one slow receiver, up to its timeout, does not hold back the others). The loop never
// polls: it sleeps until the earliest next attempt, an enqueue() or a finished attempt.
//
// Threading: every member function runs on the executor's (single) thread, except the
// metrics, which any thread may read.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/core/secret.hpp"
#include "guardia/store/records.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace spdlog {
class logger;
}

namespace guardia::store {
class AuditWriter;
}

namespace guardia::service {

// The events the engine notifies about.
inline constexpr std::string_view event_pm_review_needed = "pm_review_needed";
inline constexpr std::string_view event_deployment_failed = "deployment_failed";
inline constexpr std::string_view event_rollback_completed = "rollback_completed";
inline constexpr std::string_view event_rollback_failed = "rollback_failed";
// Operator control of a rollout in flight (issue 14) and the tier gate (tiers[].approve).
inline constexpr std::string_view event_rollout_paused = "rollout_paused";
inline constexpr std::string_view event_rollout_resumed = "rollout_resumed";
inline constexpr std::string_view event_rollout_aborted = "rollout_aborted";
inline constexpr std::string_view event_tier_gate = "tier_gate";
// A rollout's course (issue 15): it started, a tier ended (its counts), the safety gate
// stopped it (the reason).
inline constexpr std::string_view event_rollout_started = "rollout_started";
inline constexpr std::string_view event_tier_finished = "tier_finished";
inline constexpr std::string_view event_gate_tripped = "gate_tripped";
bool is_known_event(std::string_view event);
// Every event above, in a stable order (documentation, error messages, tests).
const std::vector<std::string_view>& known_events();

// User-declared constructors on purpose: GCC 12 miscompiles a braced aggregate temporary
// passed by value to a coroutine (see ssh/session.hpp).
struct WebhookConfig {
    WebhookConfig() {}
    std::string name;   // unique; default "<event>-<index>"
    std::string event;  // one of the events above (the first of `events`)
    // Every event the webhook subscribes to: "event" (one) or "events" (a list) in the file.
    std::vector<std::string> events;
    bool subscribes(std::string_view ev) const;
    std::string url;    // validated http(s) URL
    // "url_file" (instead of "url"): a file holding the URL, for URLs that are credentials
    // (Slack, Teams and Mattermost hooks are). Read at start-up by load_webhook_secrets(), like
    // secret_file: mode 0600 or 0400, owned by the service's user or root; then `url` is set.
    std::string url_file;
    // Sent with every delivery; never stored nor logged (may hold secrets).
    std::vector<std::pair<std::string, std::string>> headers;
    // The body: any JSON value whose strings may hold "{{field}}" placeholders (see
    // render_template). Null: the default body (see render_body).
    boost::json::value body_template;
    // How the messenger reads text ("markup" in the file): slack (Slack and Mattermost incoming
    // webhooks: "<!channel>", "<@U123>", "<https://x|label>" are markup) escapes '&', '<', '>'
    // in every value a placeholder puts into a string of the template, except in link fields
    // (a key "url" or ending in "_url" / "_link": a URL, not text); none leaves values as they
    // are. Default: slack for a hooks.slack.com URL, else none.
    enum class Markup : std::uint8_t { none, slack };
    Markup markup = Markup::none;
    bool markup_given = false;  // "markup" was in the file (else the default follows the URL)
    std::chrono::milliseconds timeout{10000};  // per attempt: connect, TLS, send, answer
    std::string ca_file;                       // https only: trusted besides the system CAs
    // Signing (webhook_signature.hpp): "secret_file" here, else the section's
    // signing_secret_file; empty: deliveries are not signed. The secret is read at start-up
    // by load_webhook_secrets(), never stored in the outbox, logged or audited.
    std::string secret_file;
    Secret secret;
};

struct RetryPolicy {
    RetryPolicy() {}
    // Delay before attempt n+1 after n failed attempts: min(max_delay, initial * 2^(n-1)),
    // less up to 10 % of jitter.
    std::chrono::milliseconds initial_delay{1000};
    std::chrono::milliseconds max_delay{300000};
    std::int64_t max_attempts = 0;  // 0: retry forever; else give up after that many attempts
};

struct NotifierConfig {
    NotifierConfig() {}
    std::vector<WebhookConfig> webhooks;
    RetryPolicy retry;
    std::size_t max_concurrent = 4;  // attempts in flight, across webhooks (not in the file)
    std::string signing_secret_file;  // the default secret_file of every webhook
    // The console's base URL (service.public_url, or derived from the listen address; not in
    // the "notifications" section): every event with an sr_id gets console_url and review_url.
    std::string public_url;
};

// Reads the engine configuration's "notifications" section (null: no webhooks):
//   { "webhooks": [ { "name", "event" | "events": [..], "url" | "url_file", "headers": {..},
//                     "template": <json>, "markup", "timeout_ms", "ca_file", "secret_file" } ],
//     "retry": { "initial_delay_ms", "max_delay_ms", "max_attempts" },
//     "signing_secret_file": "/abs/path" }
// Unknown keys and bad values are errc::invalid_argument naming the field:
// "<source>: notifications.webhooks[1].url: ...". Header values are never quoted.
Result<NotifierConfig> parse_notifier_config(const boost::json::value& section,
                                             std::string_view source);

// Reads every webhook's signing secret (its secret_file, else signing_secret_file): the file
// must not be readable by group or others and must hold a non-empty secret (one trailing
// newline dropped). Start-up work (blocking). Errors name the file and the field, never the
// secret: "<source>: notifications.webhooks[1].secret_file: ...". Reads each url_file too
// (0600 or 0400, owned by this process's user or root, one http(s) URL; blank lines and
// surrounding blanks dropped), never quoting its content in an error.
Result<void> load_webhook_secrets(NotifierConfig& config, std::string_view source);

// The links every event about an SR carries: console_url "<public_url>/ui/#/sr/<sr_id>" and
// review_url "<console_url>/review", added to `fields` when public_url and sr_id are set.
void add_console_links(boost::json::object& fields, std::string_view public_url);

// A one-line, human-readable text of the event for messengers ("summary" in the context),
// from its fields (sr_id, system_name, tier, counts, reason, principal, ...).
std::string event_summary(std::string_view event, const boost::json::object& fields);

// Renders a template against `context`. In every string (object keys excepted),
// "{{name}}" or "{{a.b}}" (a path into nested objects; spaces inside the braces allowed) is
// replaced by the field's text: a string as is, null or a missing field as "", any other
// value as compact JSON. A string that is exactly one placeholder becomes the field's JSON
// value itself (numbers and objects kept; a missing field: null).
// With Markup::slack, the fields' text is escaped as WebhookConfig::markup says (the template's
// own text is kept as written: it is the operator's markup).
boost::json::value render_template(const boost::json::value& tmpl,
                                   const boost::json::object& context,
                                   WebhookConfig::Markup markup = WebhookConfig::Markup::none);
// Slack's escaping of message text: '&' -> "&amp;", '<' -> "&lt;", '>' -> "&gt;".
std::string slack_escape(std::string_view text);

// The body of one delivery. The context (and the default body, without a template) is
// {"event", "delivery_id", "ts_ms", "summary", ...fields}; a field cannot override the first
// three (nor "summary", when it is not empty).
std::string render_body(const WebhookConfig& webhook, std::string_view event,
                        std::string_view delivery_id, std::int64_t ts_ms,
                        const boost::json::object& fields);

class Notifier {
  public:
    // `writer` must outlive the Notifier and be started; `db_path` is the store it writes,
    // opened here (off the loop) for reads. Nothing runs before start().
    Notifier(boost::asio::any_io_executor executor, NotifierConfig config,
             store::AuditWriter& writer, std::string db_path,
             std::shared_ptr<spdlog::logger> logger);
    // stop() must have completed (or start() never been called): the loop refers to *this.
    ~Notifier();
    Notifier(const Notifier&) = delete;
    Notifier& operator=(const Notifier&) = delete;

    // Renders one delivery per webhook subscribed to `event` (fields: sr_id, rollout_id,
    // status, reason, counts {...}, ...), queues them through the writer and completes once
    // they are durable. Returns how many deliveries were queued (0 when no webhook
    // subscribes). Wakes the delivery loop (deliveries queued while it is stopped go out at
    // the next start). Errors: errc::invalid_argument for an unknown event; the store's error
    // when the rows could not be made durable (they stay queued in the writer, which retries,
    // and are scheduled anyway).
    boost::asio::awaitable<Result<std::size_t>> enqueue(std::string_view event,
                                                        const boost::json::object& fields);

    // Replaces NotifierConfig::public_url for the events enqueued from now on (the service
    // learns its real port only once it listens).
    void set_public_url(std::string url);

    // Spawns the delivery loop on the executor. It first loads the undelivered rows from the
    // store (what a crash or a stop left), retrying with backoff while the store cannot be
    // read. Calling start() twice, or after stop(), does nothing.
    void start();

    // Ends the loop: no new attempt starts; attempts in flight get `grace` to finish (their
    // outcome is recorded), then are cut. A cut attempt leaves its row as it was (pending,
    // same attempt count): it is sent again at the next start. Completes once the loop and
    // every attempt are done. Safe to call more than once, or without start().
    boost::asio::awaitable<void> stop(std::chrono::milliseconds grace = std::chrono::seconds(5));

    // Metrics (any thread).
    std::uint64_t delivered() const;        // deliveries answered 2xx since construction
    std::uint64_t failed_attempts() const;  // attempts that failed since construction
    std::uint64_t gave_up() const;          // deliveries given up since construction
    // Deliveries the loop holds and has not finished. It holds at most about 1000 rows read
    // from the store (plus what enqueue() adds); more wait in the store and are read as these
    // drain.
    std::size_t pending() const;

  private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace guardia::service
