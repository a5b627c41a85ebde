#include "guardia/service/notifier.hpp"
#include "guardia/service/webhook_signature.hpp"

#include "guardia/core/json_input.hpp"
#include "guardia/core/local_io.hpp"
#include "guardia/http/client.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>
#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <tuple>
#include <variant>

namespace guardia::service {

namespace asio = boost::asio;
namespace json = boost::json;
using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

const std::vector<std::string_view>& known_events() {
    static const std::vector<std::string_view> all{
        event_rollout_started,  event_tier_finished,      event_gate_tripped,
        event_tier_gate,        event_rollout_paused,     event_rollout_resumed,
        event_rollout_aborted,  event_pm_review_needed,   event_deployment_failed,
        event_rollback_completed, event_rollback_failed};
    return all;
}

bool is_known_event(std::string_view event) {
    const auto& all = known_events();
    return std::find(all.begin(), all.end(), event) != all.end();
}

bool WebhookConfig::subscribes(std::string_view ev) const {
    if (events.empty()) return event == ev;
    return std::find(events.begin(), events.end(), ev) != events.end();
}

namespace {

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t max_webhooks = 64;
constexpr std::size_t max_headers = 32;
constexpr std::size_t max_name_length = 64;
constexpr std::int64_t max_delay_limit_ms = 24LL * 3600 * 1000;
// Pending rows held in memory; more stay in the store and are loaded as these drain.
constexpr int load_limit = 1000;
constexpr std::size_t max_error_snippet = 120;

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

std::int64_t now_ms() {
    return std::chrono::duration_cast<milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string format_ms(std::int64_t ms) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g s", static_cast<double>(ms) / 1000.0);
    return buf;
}

// ------------------------------------------------------------------------- configuration

Error field_error(const std::string& source, const std::string& field, const std::string& what) {
    return Error(errc::invalid_argument, source + ": " + field + ": " + what);
}

Result<void> only_keys(const json::object& obj, const std::string& source, const std::string& at,
                       std::initializer_list<std::string_view> known) {
    for (const auto& kv : obj) {
        if (std::find(known.begin(), known.end(), std::string_view(kv.key())) == known.end())
            return field_error(source, at + "." + printable(kv.key()), "unknown field");
    }
    return {};
}

Result<std::int64_t> integer_field(const json::value& v, const std::string& source,
                                   const std::string& field, std::int64_t lo, std::int64_t hi) {
    std::int64_t x = 0;
    if (v.is_int64())
        x = v.get_int64();
    else if (v.is_uint64() && v.get_uint64() <= static_cast<std::uint64_t>(hi))
        x = static_cast<std::int64_t>(v.get_uint64());
    else
        return field_error(
            source, field,
            "must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi));
    if (x < lo || x > hi)
        return field_error(source, field,
                           "must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                               " (got " + std::to_string(x) + ")");
    return x;
}

Result<std::string> string_field(const json::value& v, const std::string& source,
                                 const std::string& field) {
    if (!v.is_string()) return field_error(source, field, "must be a string");
    return std::string(v.get_string());
}

Result<std::string> known_event_field(const json::value& v, const std::string& source,
                                      const std::string& field) {
    auto ev = string_field(v, source, field);
    if (!ev) return ev.error();
    if (!is_known_event(*ev)) {
        std::string known;
        for (const auto e : known_events()) known += (known.empty() ? "" : ", ") + std::string(e);
        return field_error(source, field,
                           "unknown event '" + printable(*ev) + "' (known: " + known + ")");
    }
    return ev;
}

Result<std::string> absolute_path_field(const json::value& v, const std::string& source,
                                        const std::string& field) {
    auto p = string_field(v, source, field);
    if (!p) return p.error();
    if (p->empty() || p->front() != '/') return field_error(source, field, "must be an absolute path");
    return p;
}

bool valid_webhook_name(std::string_view s) {
    return !s.empty() && s.size() <= max_name_length && std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    });
}

// Set by the notifier or the HTTP client: a webhook may not override them.
bool reserved_header(const std::string& lower_name) {
    return lower_name == "host" || lower_name == "content-length" || lower_name == "content-type" ||
           lower_name == "connection" || lower_name == "transfer-encoding" ||
           lower_name == "user-agent" || lower_name.rfind("x-guardia-", 0) == 0;
}

Result<void> read_headers(const json::value& v, const std::string& source, const std::string& at,
                          WebhookConfig& hook) {
    if (!v.is_object()) return field_error(source, at, "must be an object of strings");
    const auto& obj = v.get_object();
    if (obj.size() > max_headers)
        return field_error(source, at, "at most " + std::to_string(max_headers) + " headers");
    std::set<std::string> seen;
    for (const auto& kv : obj) {
        const std::string name(kv.key());
        const std::string field = at + "." + printable(name);
        if (!http::is_header_name(name))
            return field_error(source, field, "not a valid header name");
        const std::string l = lower(name);
        if (reserved_header(l)) return field_error(source, field, "is set by Guardia");
        if (!seen.insert(l).second)
            return field_error(source, field, "duplicate header (names ignore case)");
        // The value is never quoted in a message: it may be a secret.
        if (!kv.value().is_string()) return field_error(source, field, "must be a string");
        const auto& value = kv.value().get_string();
        if (!http::is_header_value(value))
            return field_error(source, field, "must not hold control characters");
        hook.headers.emplace_back(name, std::string(value));
    }
    return {};
}

// Slack's incoming webhooks read Slack markup: escape by default (unless "markup" says).
void default_markup(WebhookConfig& hook, const http::Url& url) {
    if (!hook.markup_given && url.host == "hooks.slack.com")
        hook.markup = WebhookConfig::Markup::slack;
}

// A webhook's url_file: like a secret file (0600 / 0400), owned by this process's user or root,
// holding one http(s) URL. Errors name the file, never its content (the URL is the secret).
Result<http::Url> read_url_file(WebhookConfig& hook, const std::string& source,
                                const std::string& field) {
    const std::string& file = hook.url_file;
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0)
        return field_error(source, field, "url file " + file + ": cannot stat");
    if (!S_ISREG(st.st_mode))
        return field_error(source, field, "url file " + file + ": not a regular file");
    if ((st.st_mode & 077) != 0)
        return field_error(source, field,
                           "url file " + file + ": readable by group or others; chmod 600 it");
    if (st.st_uid != ::geteuid() && st.st_uid != 0)
        return field_error(source, field,
                           "url file " + file + ": owned by uid " + std::to_string(st.st_uid) +
                               ", neither this service's user nor root");
    std::string text;
    try {
        text = read_secret_file(file).reveal();
    } catch (const std::exception& e) {
        return field_error(source, field, e.what());
    }
    const auto first = text.find_first_not_of(" \t\r\n");
    const auto last = text.find_last_not_of(" \t\r\n");
    const std::string url =
        first == std::string::npos ? std::string() : text.substr(first, last - first + 1);
    if (url.empty()) return field_error(source, field, "url file " + file + " is empty");
    auto parsed = http::parse_url(url);
    if (!parsed || url.find_first_of(" \t\r\n") != std::string::npos)
        return field_error(source, field,
                           "url file " + file + ": does not hold one http(s) URL (not quoted)");
    if (!hook.ca_file.empty() && !parsed->https)
        return field_error(source, field, "url file " + file + ": ca_file is only for https URLs");
    hook.url = url;
    return *parsed;
}

Result<WebhookConfig> read_webhook(const json::value& v, const std::string& source,
                                   std::size_t index) {
    const std::string at = "notifications.webhooks[" + std::to_string(index) + "]";
    if (!v.is_object()) return field_error(source, at, "must be an object");
    const auto& obj = v.get_object();
    if (auto r = only_keys(obj, source, at,
                           {"name", "event", "events", "url", "url_file", "headers", "template",
                            "markup", "timeout_ms", "ca_file", "secret_file"});
        !r)
        return r.error();
    WebhookConfig hook;

    const auto* event = obj.if_contains("event");
    const auto* events = obj.if_contains("events");
    if (event && events) return field_error(source, at + ".events", "give event or events, not both");
    if (!event && !events) return field_error(source, at + ".event", "is required");
    if (event) {
        auto ev = known_event_field(*event, source, at + ".event");
        if (!ev) return ev.error();
        hook.events.push_back(*ev);
    } else {
        if (!events->is_array() || events->get_array().empty())
            return field_error(source, at + ".events", "must be a non-empty array of events");
        const auto& arr = events->get_array();
        for (std::size_t i = 0; i < arr.size(); ++i) {
            auto ev = known_event_field(arr[i], source, at + ".events[" + std::to_string(i) + "]");
            if (!ev) return ev.error();
            if (std::find(hook.events.begin(), hook.events.end(), *ev) != hook.events.end())
                return field_error(source, at + ".events[" + std::to_string(i) + "]",
                                   "duplicate event '" + *ev + "'");
            hook.events.push_back(*ev);
        }
    }
    hook.event = hook.events.front();

    const auto* url = obj.if_contains("url");
    const auto* url_file = obj.if_contains("url_file");
    if (url && url_file) return field_error(source, at + ".url_file", "give url or url_file, not both");
    if (!url && !url_file) return field_error(source, at + ".url", "is required");
    std::optional<http::Url> parsed;  // unknown until start-up for a url_file
    if (url) {
        auto u = string_field(*url, source, at + ".url");
        if (!u) return u.error();
        auto p = http::parse_url(*u);
        if (!p) return field_error(source, at + ".url", p.error().message);
        parsed = *p;
        hook.url = *u;
    } else {
        auto f = absolute_path_field(*url_file, source, at + ".url_file");
        if (!f) return f.error();
        hook.url_file = *f;
    }

    hook.name = hook.event + "-" + std::to_string(index);
    if (const auto* name = obj.if_contains("name")) {
        auto n = string_field(*name, source, at + ".name");
        if (!n) return n.error();
        if (!valid_webhook_name(*n))
            return field_error(source, at + ".name",
                               "must be 1 to " + std::to_string(max_name_length) +
                                   " letters, digits, '-', '_' or '.'");
        hook.name = *n;
    }
    if (const auto* headers = obj.if_contains("headers")) {
        if (auto r = read_headers(*headers, source, at + ".headers", hook); !r) return r.error();
    }
    if (const auto* tmpl = obj.if_contains("template")) hook.body_template = *tmpl;
    if (parsed) default_markup(hook, *parsed);
    if (const auto* markup = obj.if_contains("markup")) {
        hook.markup_given = true;
        auto m = string_field(*markup, source, at + ".markup");
        if (!m) return m.error();
        if (*m == "slack")
            hook.markup = WebhookConfig::Markup::slack;
        else if (*m == "none")
            hook.markup = WebhookConfig::Markup::none;
        else
            return field_error(source, at + ".markup", "must be \"slack\" or \"none\"");
    }
    if (const auto* timeout = obj.if_contains("timeout_ms")) {
        auto t = integer_field(*timeout, source, at + ".timeout_ms", 1, 600000);
        if (!t) return t.error();
        hook.timeout = milliseconds(*t);
    }
    if (const auto* ca = obj.if_contains("ca_file")) {
        auto c = string_field(*ca, source, at + ".ca_file");
        if (!c) return c.error();
        if (c->empty() || c->front() != '/')
            return field_error(source, at + ".ca_file", "must be an absolute path");
        if (parsed && !parsed->https)
            return field_error(source, at + ".ca_file", "only for https URLs");
        hook.ca_file = *c;
    }
    if (const auto* sf = obj.if_contains("secret_file")) {
        auto f = absolute_path_field(*sf, source, at + ".secret_file");
        if (!f) return f.error();
        hook.secret_file = *f;
    }
    return hook;
}

Result<void> read_retry(const json::value& v, const std::string& source, RetryPolicy& retry) {
    const std::string at = "notifications.retry";
    if (!v.is_object()) return field_error(source, at, "must be an object");
    const auto& obj = v.get_object();
    if (auto r = only_keys(obj, source, at, {"initial_delay_ms", "max_delay_ms", "max_attempts"});
        !r)
        return r;
    if (const auto* x = obj.if_contains("initial_delay_ms")) {
        auto n = integer_field(*x, source, at + ".initial_delay_ms", 1, max_delay_limit_ms);
        if (!n) return n.error();
        retry.initial_delay = milliseconds(*n);
    }
    if (const auto* x = obj.if_contains("max_delay_ms")) {
        auto n = integer_field(*x, source, at + ".max_delay_ms", 1, max_delay_limit_ms);
        if (!n) return n.error();
        retry.max_delay = milliseconds(*n);
    }
    if (retry.max_delay < retry.initial_delay)
        return field_error(source, at + ".max_delay_ms", "must be at least initial_delay_ms");
    if (const auto* x = obj.if_contains("max_attempts")) {
        auto n = integer_field(*x, source, at + ".max_attempts", 0, 1000000);
        if (!n) return n.error();
        retry.max_attempts = *n;
    }
    return {};
}

// ------------------------------------------------------------------------- templates

// "{{ a.b }}" at `open` (pointing at "{{"): the trimmed name and the end, or nothing when
// this is not a placeholder (then the text is kept as written).
std::optional<std::pair<std::string_view, std::size_t>> placeholder_at(std::string_view s,
                                                                       std::size_t open) {
    const auto close = s.find("}}", open + 2);
    if (close == std::string_view::npos) return std::nullopt;
    std::string_view name = s.substr(open + 2, close - open - 2);
    while (!name.empty() && name.front() == ' ') name.remove_prefix(1);
    while (!name.empty() && name.back() == ' ') name.remove_suffix(1);
    const bool ok = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
    });
    if (!ok) return std::nullopt;
    return std::make_pair(name, close + 2);
}

const json::value* lookup(const json::object& context, std::string_view path) {
    const json::object* obj = &context;
    const json::value* found = nullptr;
    while (true) {
        const auto dot = path.find('.');
        const std::string_view key = path.substr(0, dot);
        found = obj->if_contains(key);
        if (!found || dot == std::string_view::npos) return found;
        if (!found->is_object()) return nullptr;
        obj = &found->get_object();
        path.remove_prefix(dot + 1);
    }
}

std::string text_of(const json::value* v) {
    if (!v || v->is_null()) return {};
    if (v->is_string()) return std::string(v->get_string());
    return json::serialize(*v);
}

// `escape`: the fields' text is Slack-escaped (render_template).
json::value render_string(std::string_view s, const json::object& context, bool escape) {
    // A string that is exactly one placeholder takes the field's value, type and all (a string
    // value escaped like any other text).
    if (s.size() >= 4 && s.substr(0, 2) == "{{") {
        if (auto p = placeholder_at(s, 0); p && p->second == s.size()) {
            const auto* v = lookup(context, p->first);
            if (v && escape && v->is_string()) return json::string(slack_escape(v->get_string()));
            return v ? *v : json::value(nullptr);
        }
    }
    std::string out;
    std::size_t pos = 0;
    while (pos < s.size()) {
        const auto open = s.find("{{", pos);
        if (open == std::string_view::npos) break;
        auto p = placeholder_at(s, open);
        if (!p) {
            out.append(s.substr(pos, open + 2 - pos));
            pos = open + 2;
            continue;
        }
        out.append(s.substr(pos, open - pos));
        const std::string text = text_of(lookup(context, p->first));
        out += escape ? slack_escape(text) : text;
        pos = p->second;
    }
    out.append(s.substr(std::min(pos, s.size())));
    return json::value(json::string(out));
}

std::string random_delivery_id() {
    std::array<unsigned char, 16> b{};
    if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) {
        std::random_device rd;
        for (auto& x : b) x = static_cast<unsigned char>(rd());
    }
    b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);  // UUID version 4
    b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    for (std::size_t i = 0; i < b.size(); ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
        out += hex[b[i] >> 4];
        out += hex[b[i] & 0x0f];
    }
    return out;
}

std::string webhook_of(const store::OutboxRecord& row) {
    boost::system::error_code ec;
    auto v = json::parse(row.headers, ec);
    if (ec || !v.is_object()) return {};
    const auto* name = v.get_object().if_contains("webhook");
    return name && name->is_string() ? std::string(name->get_string()) : std::string();
}

}  // namespace

Result<NotifierConfig> parse_notifier_config(const json::value& section,
                                             std::string_view source_view) {
    const std::string source(source_view);
    NotifierConfig config;
    if (section.is_null()) return config;
    if (!section.is_object()) return field_error(source, "notifications", "must be an object");
    const auto& obj = section.get_object();
    if (auto r = only_keys(obj, source, "notifications", {"webhooks", "retry", "signing_secret_file"});
        !r)
        return r.error();
    if (const auto* sf = obj.if_contains("signing_secret_file")) {
        auto f = absolute_path_field(*sf, source, "notifications.signing_secret_file");
        if (!f) return f.error();
        config.signing_secret_file = *f;
    }
    if (const auto* hooks = obj.if_contains("webhooks")) {
        if (!hooks->is_array())
            return field_error(source, "notifications.webhooks", "must be an array");
        const auto& arr = hooks->get_array();
        if (arr.size() > max_webhooks)
            return field_error(source, "notifications.webhooks",
                               "at most " + std::to_string(max_webhooks) + " webhooks");
        std::set<std::string> names;
        for (std::size_t i = 0; i < arr.size(); ++i) {
            auto hook = read_webhook(arr[i], source, i);
            if (!hook) return hook.error();
            if (!names.insert(hook->name).second)
                return field_error(source, "notifications.webhooks[" + std::to_string(i) + "].name",
                                   "duplicate webhook name '" + hook->name + "'");
            config.webhooks.push_back(std::move(*hook));
        }
    }
    if (const auto* retry = obj.if_contains("retry")) {
        if (auto r = read_retry(*retry, source, config.retry); !r) return r.error();
    }
    return config;
}

Result<void> load_webhook_secrets(NotifierConfig& config, std::string_view source_view) {
    const std::string source(source_view);
    std::map<std::string, Secret> by_file;  // one read per file
    for (std::size_t i = 0; i < config.webhooks.size(); ++i) {
        auto& hook = config.webhooks[i];
        if (!hook.url_file.empty()) {
            auto url = read_url_file(
                hook, source, "notifications.webhooks[" + std::to_string(i) + "].url_file");
            if (!url) return url.error();
            default_markup(hook, *url);
        }
        const bool own = !hook.secret_file.empty();
        const std::string file = own ? hook.secret_file : config.signing_secret_file;
        if (file.empty()) continue;
        const std::string field = own ? "notifications.webhooks[" + std::to_string(i) +
                                            "].secret_file"
                                      : std::string("notifications.signing_secret_file");
        auto it = by_file.find(file);
        if (it == by_file.end()) {
            Secret secret;
            try {
                secret = read_secret_file(file);
            } catch (const std::exception& e) {
                return field_error(source, field, e.what());  // names the file, not its content
            }
            if (secret.empty())
                return field_error(source, field, "secret file " + file + " is empty");
            it = by_file.emplace(file, std::move(secret)).first;
        }
        hook.secret = it->second;
    }
    return {};
}

void add_console_links(json::object& fields, std::string_view public_url) {
    const auto* sr = fields.if_contains("sr_id");
    if (public_url.empty() || !sr || !sr->is_string() || sr->get_string().empty()) return;
    while (!public_url.empty() && public_url.back() == '/') public_url.remove_suffix(1);
    const std::string console = std::string(public_url) + "/ui/#/sr/" +
                                std::string(sr->get_string());
    fields["console_url"] = console;
    fields["review_url"] = console + "/review";
}

std::string event_summary(std::string_view event, const json::object& fields) {
    const auto text = [&](std::string_view path) { return text_of(lookup(fields, path)); };
    std::string sr = "SR " + text("sr_id");
    if (const auto sys = text("system_name"); !sys.empty()) sr += " (" + sys + ")";
    const std::string tier = "tier " + text("tier");
    const auto with_reason = [&](std::string s) {
        if (const auto r = text("reason"); !r.empty()) s += ": " + r;
        return s;
    };
    const auto by = [&]() {
        const auto p = text("principal");
        return p.empty() ? std::string() : " by " + p;
    };
    if (event == event_rollout_started) {
        std::string s = sr + ": rollout started on " + text("counts.total") + " node(s)";
        if (const auto tiers = text("tiers"); !tiers.empty()) s += " in " + tiers + " tier(s)";
        return s;
    }
    if (event == event_tier_finished)
        return sr + ": " + tier + " finished: " + text("counts.deployed") + " deployed, " +
               text("counts.failed") + " failed, " + text("counts.not_started") +
               " not started";
    if (event == event_gate_tripped) return with_reason(sr + ": " + tier + " tripped the gate");
    if (event == event_tier_gate)
        return sr + ": " + tier + " is done; an approver must resume the rollout";
    if (event == event_rollout_paused) return sr + ": rollout paused" + by();
    if (event == event_rollout_resumed) return sr + ": rollout resumed" + by();
    if (event == event_rollout_aborted) return with_reason(sr + ": rollout aborted" + by());
    if (event == event_pm_review_needed)
        return sr + ": deployed on " + text("counts.deployed") + " of " + text("counts.total") +
               " node(s); waiting for the PM's review";
    if (event == event_deployment_failed) return with_reason(sr + ": deployment failed");
    if (event == event_rollback_completed)
        return sr + ": rollback completed (" + text("rolled_back") + " node(s))";
    if (event == event_rollback_failed)
        return sr + ": rollback failed on " + text("failed") + " node(s)";
    return sr + ": " + std::string(event);
}

std::string slack_escape(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (const char ch : text) {
        if (ch == '&')
            out += "&amp;";
        else if (ch == '<')
            out += "&lt;";
        else if (ch == '>')
            out += "&gt;";
        else
            out += ch;
    }
    return out;
}

namespace {

// A key whose value is a URL (Slack's "url", Mattermost's "title_link", "image_url", ...).
bool link_key(std::string_view key) {
    return key == "url" || key.ends_with("_url") || key.ends_with("_link") ||
           key.ends_with("Url");
}

json::value render_value(const json::value& tmpl, const json::object& context, bool escape,
                         bool link) {
    switch (tmpl.kind()) {
        case json::kind::string:
            return render_string(tmpl.get_string(), context, escape && !link);
        case json::kind::array: {
            json::array out;
            for (const auto& v : tmpl.get_array())
                out.push_back(render_value(v, context, escape, link));
            return out;
        }
        case json::kind::object: {
            json::object out;
            for (const auto& kv : tmpl.get_object())
                out[kv.key()] = render_value(kv.value(), context, escape, link_key(kv.key()));
            return out;
        }
        default:
            return tmpl;
    }
}

}  // namespace

json::value render_template(const json::value& tmpl, const json::object& context,
                            WebhookConfig::Markup markup) {
    return render_value(tmpl, context, markup == WebhookConfig::Markup::slack, false);
}

std::string render_body(const WebhookConfig& webhook, std::string_view event,
                        std::string_view delivery_id, std::int64_t ts_ms,
                        const json::object& fields) {
    json::object context;
    context["event"] = event;
    context["delivery_id"] = delivery_id;
    context["ts_ms"] = ts_ms;
    if (const auto* given = fields.if_contains("summary");
        !given || !given->is_string() || given->get_string().empty())
        context["summary"] = event_summary(event, fields);
    for (const auto& kv : fields)
        if (!context.contains(kv.key())) context[kv.key()] = kv.value();
    if (webhook.body_template.is_null()) return json::serialize(context);
    return json::serialize(render_template(webhook.body_template, context, webhook.markup));
}

// ============================================================================ Notifier

struct Notifier::Impl : std::enable_shared_from_this<Impl> {
    Impl(asio::any_io_executor executor, NotifierConfig cfg, store::AuditWriter& w,
         std::string path, std::shared_ptr<spdlog::logger> logger)
        : ex(std::move(executor)),
          config(std::move(cfg)),
          writer(w),
          db_path(std::move(path)),
          log(logger ? std::move(logger) : spdlog::default_logger()),
          wake_timer(ex),
          idle_timer(ex),
          cut_timer(ex),
          done_timer(ex),
          rng(std::random_device{}()) {
        // Timers used as condition variables: they never expire, cancel() notifies.
        cut_timer.expires_at(SteadyClock::time_point::max());
        done_timer.expires_at(SteadyClock::time_point::max());
        idle_timer.expires_at(SteadyClock::time_point::max());
        wake_timer.expires_at(SteadyClock::time_point::max());
        for (const auto& hook : config.webhooks) {
            by_name[hook.name] = &hook;
            for (const auto& h : hook.headers)
                if (!h.second.empty()) secrets.push_back(h.second);
            if (!hook.secret.empty()) secrets.push_back(hook.secret.reveal());
        }
    }

    struct Entry {
        Entry() {}
        store::OutboxRecord row;
        std::string webhook;
    };
    using ScheduleKey = std::tuple<std::int64_t, std::int64_t, std::string>;

    asio::any_io_executor ex;
    const NotifierConfig config;
    std::string public_url = config.public_url;  // set_public_url()
    std::map<std::string, const WebhookConfig*> by_name;
    std::vector<std::string> secrets;  // header values: scrubbed from any text we keep
    store::AuditWriter& writer;
    const std::string db_path;
    std::shared_ptr<spdlog::logger> log;

    std::unique_ptr<store::Database> db;   // touched only inside run_blocking, one at a time
    std::map<std::string, Entry> entries;  // pending deliveries by id
    std::set<ScheduleKey> schedule;        // entries not in flight, by next attempt
    std::set<std::string> busy;            // webhooks with an attempt in flight
    std::size_t in_flight = 0;
    bool backlog_in_store = false;  // the last load was cut at load_limit
    bool loading = false;
    std::set<std::string> done_while_loading;  // finished while a load's read was running
    std::map<std::string, std::shared_ptr<asio::ssl::context>> tls_by_ca_file;

    asio::steady_timer wake_timer;  // the loop sleeps on it; wake() cancels it
    bool wake_pending = false;
    asio::steady_timer idle_timer;  // stop's drain sleeps on it; a finished attempt cancels it
    asio::steady_timer cut_timer;   // expires (at time_point::min) to cut attempts in flight
    asio::steady_timer done_timer;  // stop() sleeps on it; the loop's end cancels it
    bool started = false;
    bool stopping = false;
    bool loop_running = false;
    milliseconds grace{0};
    std::minstd_rand rng;

    std::atomic<std::uint64_t> delivered_count{0};
    std::atomic<std::uint64_t> failed_count{0};
    std::atomic<std::uint64_t> gave_up_count{0};
    std::atomic<std::size_t> pending_count{0};

    void wake() {
        wake_pending = true;
        wake_timer.cancel();
    }

    std::string scrub(std::string text) const {
        for (const auto& s : secrets) {
            for (auto pos = text.find(s); pos != std::string::npos; pos = text.find(s, pos + 3))
                text.replace(pos, s.size(), "***");
        }
        return text;
    }

    void add(store::OutboxRecord row) {
        if (entries.count(row.id)) return;
        Entry e;
        e.webhook = webhook_of(row);
        e.row = std::move(row);
        schedule.emplace(e.row.next_attempt_ms, e.row.created_ms, e.row.id);
        const std::string id = e.row.id;
        entries.emplace(id, std::move(e));
        pending_count = entries.size();
    }

    std::int64_t backoff_ms(std::int64_t failed_attempts) {
        const auto initial = config.retry.initial_delay.count();
        const auto cap = config.retry.max_delay.count();
        std::int64_t delay = initial;
        for (std::int64_t i = 1; i < failed_attempts && delay < cap; ++i) delay *= 2;
        delay = std::min(delay, cap);
        // Up to 10 % less, so that receivers coming back are not hit by every retry at once.
        const auto jitter = delay / 10;
        if (jitter > 0) delay -= std::uniform_int_distribution<std::int64_t>(0, jitter)(rng);
        return std::max<std::int64_t>(delay, 1);
    }

    asio::awaitable<Result<std::size_t>> enqueue(std::string_view event,
                                                 const json::object& fields);
    asio::awaitable<Result<std::size_t>> load();
    asio::awaitable<void> run();
    void launch_due();
    std::optional<std::int64_t> next_wake() const;
    asio::awaitable<void> attempt(std::string id);
    asio::awaitable<Result<std::shared_ptr<asio::ssl::context>>> tls_for(const WebhookConfig&);
    void finish(const std::string& webhook);  // an attempt on `webhook` ended
};

asio::awaitable<Result<std::size_t>> Notifier::Impl::enqueue(std::string_view event,
                                                             const json::object& fields) {
    if (!is_known_event(event))
        co_return Error(errc::invalid_argument,
                        "notifier: unknown event '" + printable(event) + "'");
    // Everything is rendered before the first suspension: `event` and `fields` belong to
    // the caller.
    const std::int64_t now = now_ms();
    std::string sr_id;
    if (const auto* sr = fields.if_contains("sr_id"); sr && sr->is_string())
        sr_id = std::string(sr->get_string());
    json::object with_links = fields;
    add_console_links(with_links, public_url);
    std::vector<store::OutboxRecord> rows;
    for (const auto& hook : config.webhooks) {
        if (!hook.subscribes(event)) continue;
        store::OutboxRecord row;
        row.id = random_delivery_id();
        row.event = std::string(event);
        row.sr_id = sr_id;
        row.url = hook.url;
        row.headers = json::serialize(json::object{{"webhook", hook.name}});
        row.body = render_body(hook, event, row.id, now, with_links);
        row.next_attempt_ms = now;
        row.created_ms = now;
        writer.upsert_outbox(row);
        rows.push_back(std::move(row));
    }
    if (rows.empty()) co_return std::size_t{0};
    auto self = shared_from_this();
    auto durable = co_await writer.durable();
    // Scheduled whatever the outcome: the rows stay queued in the writer, which retries.
    const std::size_t count = rows.size();
    for (auto& row : rows) {
        log->info("notifier: queued {} delivery {} for webhook {} (SR {})", row.event, row.id,
                  webhook_of(row), row.sr_id.empty() ? "-" : row.sr_id);
        add(std::move(row));
    }
    if (loop_running) wake();
    if (!durable) {
        log->error("notifier: {} deliveries of {} not yet durable: {}", count, std::string(event),
                   durable.error().describe());
        co_return Error(durable.error().code, "notifier: queuing " + std::string(event) +
                                                  " deliveries: " + durable.error().message);
    }
    co_return count;
}

asio::awaitable<Result<std::size_t>> Notifier::Impl::load() {
    auto self = shared_from_this();  // keeps *this alive; the lambda below takes a raw pointer
    loading = true;
    done_while_loading.clear();
    // Lambdas given to run_blocking() capture only trivially copyable values: GCC 12 copies a
    // temporary passed by value to a coroutine bitwise into its frame (see ssh/session.hpp),
    // which would unbalance a shared_ptr's count or leave a std::string dangling.
    Impl* impl = this;
    auto rows = co_await run_blocking([impl]() -> Result<std::vector<store::OutboxRecord>> {
        try {
            if (!impl->db) impl->db = std::make_unique<store::Database>(impl->db_path);
        } catch (const std::exception& e) {
            return Error(errc::local_io_failed, e.what());
        }
        return impl->db->outbox_pending(load_limit);
    });
    loading = false;
    if (!rows) co_return rows.error();
    backlog_in_store = rows->size() >= static_cast<std::size_t>(load_limit);
    std::size_t added = 0;
    for (auto& row : *rows) {
        if (entries.count(row.id) || done_while_loading.count(row.id)) continue;
        add(std::move(row));
        ++added;
    }
    done_while_loading.clear();
    co_return added;
}

void Notifier::Impl::launch_due() {
    const std::int64_t now = now_ms();
    for (auto it = schedule.begin(); it != schedule.end() && in_flight < config.max_concurrent;) {
        const auto& [when, created, id] = *it;
        (void)created;
        if (when > now) break;
        auto& entry = entries.at(id);
        if (busy.count(entry.webhook)) {
            ++it;
            continue;
        }
        busy.insert(entry.webhook);
        ++in_flight;
        std::string attempt_id = id;
        it = schedule.erase(it);
        asio::co_spawn(ex, attempt(std::move(attempt_id)),
                       [self = shared_from_this()](std::exception_ptr e) {
                           if (!e) return;
                           try {
                               std::rethrow_exception(e);
                           } catch (const std::exception& x) {
                               self->log->error("notifier: delivery attempt failed: {}", x.what());
                           }
                       });
    }
}

std::optional<std::int64_t> Notifier::Impl::next_wake() const {
    if (in_flight >= config.max_concurrent) return std::nullopt;  // a finished attempt wakes
    for (const auto& [when, created, id] : schedule) {
        (void)created;
        // A busy webhook's rows wait for its attempt to finish, which wakes the loop.
        if (!busy.count(entries.at(id).webhook)) return when;
    }
    return std::nullopt;
}

asio::awaitable<Result<std::shared_ptr<asio::ssl::context>>> Notifier::Impl::tls_for(
    const WebhookConfig& hook) {
    using Ctx = std::shared_ptr<asio::ssl::context>;
    if (hook.ca_file.empty()) co_return Ctx();  // the client's shared system-CA context
    if (auto it = tls_by_ca_file.find(hook.ca_file); it != tls_by_ca_file.end())
        co_return it->second;
    const std::string* ca = &hook.ca_file;  // trivially copyable capture: see load()
    auto made = co_await run_blocking([ca]() { return http::make_tls_client_context(*ca); });
    if (!made) co_return made.error();
    tls_by_ca_file[hook.ca_file] = *made;
    co_return *made;
}

void Notifier::Impl::finish(const std::string& webhook) {
    busy.erase(webhook);
    --in_flight;
    idle_timer.cancel();
    if (!stopping) wake();
}

asio::awaitable<void> Notifier::Impl::attempt(std::string id) {
    using namespace asio::experimental::awaitable_operators;
    auto self = shared_from_this();
    store::OutboxRecord row = entries.at(id).row;
    const std::string webhook = entries.at(id).webhook;
    const auto found = by_name.find(webhook);
    const WebhookConfig* hook = found == by_name.end() ? nullptr : found->second;

    std::optional<int> status;
    std::string failure;
    bool give_up_now = false;
    if (!hook) {
        failure = "webhook '" + printable(webhook) + "' is no longer configured";
        give_up_now = true;
    } else if (auto tls = co_await tls_for(*hook); !tls) {
        failure = tls.error().message;
    } else {
        http::HeaderList headers;
        headers.emplace_back("Content-Type", "application/json");
        headers.emplace_back("X-Guardia-Event", row.event);
        headers.emplace_back("X-Guardia-Delivery", row.id);
        for (const auto& h : hook->headers) headers.push_back(h);
        if (!hook->secret.empty()) {
            // Signed at send time, over the stored body's exact bytes (webhook_signature.hpp).
            const std::int64_t ts = now_ms() / 1000;
            headers.emplace_back(std::string(timestamp_header_name), std::to_string(ts));
            headers.emplace_back(std::string(signature_header_name),
                                 webhook_signature(hook->secret.reveal(), ts, row.body));
        }
        http::ClientOptions options;
        options.tls = *tls;
        options.user_agent = "guardia-notifier";
        auto outcome = co_await (http::http_post(row.url, row.body, std::move(headers),
                                                 hook->timeout, std::move(options)) ||
                                 cut_timer.async_wait(tuple_awaitable));
        auto* response = std::get_if<0>(&outcome);
        if (!response || (!*response && response->error().code == errc::cancelled)) {
            // Cut by stop(): the row stays as it was, to be sent again at the next start.
            log->info("notifier: delivery {} to webhook {} cut by shutdown; it stays pending",
                      row.id, webhook);
            schedule.emplace(row.next_attempt_ms, row.created_ms, row.id);
            finish(webhook);
            co_return;
        }
        if (!*response) {
            failure = response->error().message;
        } else if ((*response)->status >= 200 && (*response)->status < 300) {
            status = (*response)->status;
        } else {
            status = (*response)->status;
            failure = "HTTP " + std::to_string((*response)->status);
            const std::string snippet = printable((*response)->body);
            if (!snippet.empty())
                failure += ": " + snippet.substr(0, std::min(snippet.size(), max_error_snippet));
        }
    }

    const std::int64_t now = now_ms();
    row.attempts += 1;
    bool done = false;
    if (failure.empty()) {
        row.delivered_ms = now;
        done = true;
    } else {
        row.last_error = scrub(std::move(failure));
        if (give_up_now ||
            (config.retry.max_attempts > 0 && row.attempts >= config.retry.max_attempts)) {
            row.gave_up_ms = now;
            done = true;
        } else {
            row.next_attempt_ms = now + backoff_ms(row.attempts);
        }
    }
    writer.upsert_outbox(row);
    // The outcome is durable before it counts: a delivered row is never sent again after a
    // restart (except if we crash right here), and a reload never sees stale state.
    if (auto d = co_await writer.durable(); !d)
        log->warn("notifier: delivery {}: recording the outcome is not durable yet: {}", row.id,
                  d.error().describe());

    if (row.delivered_ms) {
        ++delivered_count;
        log->info(
            "notifier: delivery {} ({} for SR {}) to webhook {} answered HTTP {} on attempt {}",
            row.id, row.event, row.sr_id.empty() ? "-" : row.sr_id, webhook, status.value_or(0),
            row.attempts);
    } else if (row.gave_up_ms) {
        if (!give_up_now) ++failed_count;
        ++gave_up_count;
        log->error(
            "notifier: giving up delivery {} ({} for SR {}) to webhook {} after {} attempts: {}",
            row.id, row.event, row.sr_id.empty() ? "-" : row.sr_id, webhook, row.attempts,
            row.last_error);
    } else {
        ++failed_count;
        log->warn("notifier: delivery {} to webhook {} failed (attempt {}): {}; next in {}", row.id,
                  webhook, row.attempts, row.last_error, format_ms(row.next_attempt_ms - now));
    }
    if (done) {
        entries.erase(id);
        pending_count = entries.size();
        if (loading) done_while_loading.insert(id);
    } else {
        entries.at(id).row = row;
        schedule.emplace(row.next_attempt_ms, row.created_ms, row.id);
    }
    finish(webhook);
}

asio::awaitable<void> Notifier::Impl::run() {
    auto self = shared_from_this();
    // Load what the store holds (what a crash or a stop left), retrying while it cannot be
    // read. Deliveries enqueued meanwhile go out already.
    milliseconds retry_delay{500};
    bool loaded = false;
    while (!stopping) {
        wake_pending = false;
        if (!loaded || (backlog_in_store && entries.size() < load_limit / 2)) {
            auto added = co_await load();
            if (added) {
                loaded = true;
                if (*added > 0) log->info("notifier: {} pending deliveries loaded", *added);
                retry_delay = milliseconds(500);
            } else {
                log->error("notifier: cannot read the outbox (retrying in {}): {}",
                           format_ms(retry_delay.count()), added.error().describe());
            }
        }
        if (stopping) break;
        launch_due();
        if (wake_pending) continue;
        auto next = next_wake();
        if (!loaded) {
            const auto retry_at = now_ms() + retry_delay.count();
            next = next ? std::min(*next, retry_at) : retry_at;
            retry_delay = std::min(retry_delay * 2, milliseconds(30000));
        }
        if (next)
            wake_timer.expires_after(milliseconds(std::max<std::int64_t>(*next - now_ms(), 0)));
        else
            wake_timer.expires_at(SteadyClock::time_point::max());
        co_await wake_timer.async_wait(tuple_awaitable);
    }

    // Stopping: attempts in flight get the grace period, then are cut.
    const auto until = SteadyClock::now() + grace;
    while (in_flight > 0 && SteadyClock::now() < until) {
        idle_timer.expires_at(until);
        co_await idle_timer.async_wait(tuple_awaitable);
    }
    if (in_flight > 0) {
        log->info("notifier: cutting {} delivery attempts in flight", in_flight);
        cut_timer.expires_at(SteadyClock::time_point::min());
        while (in_flight > 0) {
            idle_timer.expires_at(SteadyClock::time_point::max());
            co_await idle_timer.async_wait(tuple_awaitable);
        }
    }
    // Close the read connection off the loop.
    Impl* impl = this;  // trivially copyable capture: see load()
    co_await run_blocking([impl] {
        impl->db.reset();
        return 0;
    });
    loop_running = false;
    done_timer.cancel();
}

// ---------------------------------------------------------------------------- public

Notifier::Notifier(asio::any_io_executor executor, NotifierConfig config,
                   store::AuditWriter& writer, std::string db_path,
                   std::shared_ptr<spdlog::logger> logger)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(config), writer,
                                   std::move(db_path), std::move(logger))) {}

Notifier::~Notifier() {
    if (impl_ && impl_->loop_running) {
        // A bug in the caller (stop() not awaited). Let the loop wind down on its own: it
        // holds the Impl alive; no I/O here.
        impl_->log->error("notifier: destroyed while running; call stop() first");
        impl_->stopping = true;
        impl_->grace = milliseconds(0);
        impl_->wake();
    }
}

asio::awaitable<Result<std::size_t>> Notifier::enqueue(std::string_view event,
                                                       const json::object& fields) {
    auto impl = impl_;
    co_return co_await impl->enqueue(event, fields);
}

void Notifier::set_public_url(std::string url) {
    impl_->public_url = std::move(url);
}

void Notifier::start() {
    if (impl_->started) return;
    impl_->started = true;
    impl_->loop_running = true;
    asio::co_spawn(impl_->ex, impl_->run(), [impl = impl_](std::exception_ptr e) {
        if (!e) return;
        impl->loop_running = false;
        impl->done_timer.cancel();
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& x) {
            impl->log->error("notifier: delivery loop ended: {}", x.what());
        }
    });
}

asio::awaitable<void> Notifier::stop(milliseconds grace) {
    auto impl = impl_;
    if (!impl->loop_running) co_return;
    if (!impl->stopping) {
        impl->stopping = true;
        impl->grace = grace;
        impl->wake();
    }
    while (impl->loop_running) co_await impl->done_timer.async_wait(tuple_awaitable);
}

std::uint64_t Notifier::delivered() const {
    return impl_->delivered_count.load();
}
std::uint64_t Notifier::failed_attempts() const {
    return impl_->failed_count.load();
}
std::uint64_t Notifier::gave_up() const {
    return impl_->gave_up_count.load();
}
std::size_t Notifier::pending() const {
    return impl_->pending_count.load();
}

}  // namespace guardia::service
