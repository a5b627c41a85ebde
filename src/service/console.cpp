#include "guardia/service/console.hpp"

#include "guardia/core/digest.hpp"
#include "guardia/core/json_input.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <array>
#include <charconv>
#include <stdexcept>

namespace guardia::service {

namespace bh = boost::beast::http;

const UiAsset* find_ui_asset(std::string_view name) {
    const auto assets = ui_assets();
    const auto it = std::find_if(assets.begin(), assets.end(),
                                 [&](const UiAsset& a) { return a.name == name; });
    return it == assets.end() ? nullptr : &*it;
}

std::string_view ui_content_type(std::string_view name) {
    const auto dot = name.rfind('.');
    if (dot == std::string_view::npos) return {};
    const auto ext = name.substr(dot + 1);
    if (ext == "html") return "text/html; charset=utf-8";
    if (ext == "js") return "text/javascript; charset=utf-8";
    if (ext == "css") return "text/css; charset=utf-8";
    if (ext == "svg") return "image/svg+xml";
    if (ext == "json") return "application/json";
    return {};
}

void add_ui_security_headers(http::Response& res) {
    res.set("Content-Security-Policy", ui_csp);
    res.set("X-Content-Type-Options", "nosniff");
    res.set("Referrer-Policy", "no-referrer");
    res.set("X-Frame-Options", "DENY");
    res.set(bh::field::cache_control, "no-cache");
}

http::Response ui_static_answer(const http::Request& req, const std::vector<std::string>& seg) {
    http::Response res;
    const std::string_view target = req.target();
    const std::string_view path = target.substr(0, target.find('?'));
    if (req.method() != bh::verb::get && req.method() != bh::verb::head) {
        res = http::error_response(req, bh::status::method_not_allowed, "method_not_allowed",
                                   "use GET, HEAD on this path");
        res.set(bh::field::allow, "GET, HEAD");
    } else if (seg.size() == 1 && path == "/ui") {
        res = http::text_response(req, bh::status::found, "", "text/plain; charset=utf-8");
        res.set(bh::field::location, "/ui/");
    } else if (seg.size() > 2) {
        res = http::error_response(req, bh::status::not_found, "not_found",
                                   "no such console file: " + printable(path));
    } else {
        const std::string name = seg.size() == 1 ? std::string("index.html") : seg[1];
        const UiAsset* asset = find_ui_asset(name);
        const std::string_view type = ui_content_type(name);
        if (!asset || type.empty())
            res = http::error_response(req, bh::status::not_found, "not_found",
                                       "no such console file: " + printable(path));
        else
            res = http::text_response(req, bh::status::ok, std::string(asset->bytes), type);
    }
    add_ui_security_headers(res);
    return res;
}

std::vector<StepSpan> step_spans(const std::vector<store::AuditRow>& rows) {
    std::vector<StepSpan> out;
    for (const auto& r : rows) {
        if (r.event == "STEP_START") {
            StepSpan s;
            s.step = r.step;
            s.status = "RUNNING";
            s.started_ms = r.ts_ms;
            s.detail = r.detail;
            out.push_back(std::move(s));
        } else if (r.event == "STEP_OK" || r.event == "STEP_FAILED") {
            auto open = std::find_if(out.rbegin(), out.rend(), [&](const StepSpan& s) {
                return s.step == r.step && s.status == "RUNNING";
            });
            if (open == out.rend()) continue;
            open->status = r.event == "STEP_OK" ? "OK" : "FAIL";
            open->duration_ms = r.duration_ms;
            open->exit_code = r.exit_code;
            if (!r.detail.empty()) open->detail = r.detail;
        }
    }
    return out;
}

// --- GET /api/tasks paging ---------------------------------------------------------------------

namespace {

std::optional<std::int64_t> non_negative(std::string_view text) {
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v < 0)
        return std::nullopt;
    return v;
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

}  // namespace

std::string task_cursor(std::int64_t updated_ms, std::string_view sr_id) {
    std::string out = "c1.";
    out += std::to_string(updated_ms);
    out += '.';
    out += to_hex(reinterpret_cast<const unsigned char*>(sr_id.data()), sr_id.size());
    return out;
}

std::optional<TaskCursor> parse_task_cursor(std::string_view text) {
    TaskCursor c;
    if (!text.starts_with("c1.")) {
        const auto ms = non_negative(text);
        if (!ms) return std::nullopt;
        c.updated_ms = *ms;
        return c;
    }
    text.remove_prefix(3);
    const auto dot = text.find('.');
    if (dot == std::string_view::npos) return std::nullopt;
    const auto ms = non_negative(text.substr(0, dot));
    const std::string_view hex = text.substr(dot + 1);
    if (!ms || hex.empty() || hex.size() % 2 != 0) return std::nullopt;
    c.updated_ms = *ms;
    for (std::size_t i = 0; i < hex.size(); i += 2) {
        const int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        c.sr_id += static_cast<char>(hi * 16 + lo);
    }
    return c;
}

std::size_t cursor_skip(const TaskCursor& cursor, const std::vector<store::TaskRecord>& rows) {
    if (cursor.sr_id.empty()) return 0;
    const auto up_to_cursor = [&](const store::TaskRecord& r) {
        return r.updated_ms > cursor.updated_ms ||
               (r.updated_ms == cursor.updated_ms && r.sr_id >= cursor.sr_id);
    };
    std::size_t n = 0;
    while (n < rows.size() && up_to_cursor(rows[n])) ++n;
    return n;
}

// --- sessions ---------------------------------------------------------------------------------

namespace {

std::string_view trim_blanks(std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    return v;
}

// 256 bits from OpenSSL's CSPRNG as 64 lower-case hex characters.
std::string random_256() {
    std::array<unsigned char, 32> bytes{};
    if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1)
        throw std::runtime_error("RAND_bytes failed: no session can be opened");
    return to_hex(bytes.data(), bytes.size());
}

bool well_formed(std::string_view cookie) {
    return cookie.size() == 64 && std::all_of(cookie.begin(), cookie.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

bool same_secret(std::string_view a, std::string_view b) {
    return a.size() == b.size() && !a.empty() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

std::optional<std::string_view> cookie_value(const http::Request& req, std::string_view name) {
    for (auto it = req.find(bh::field::cookie); it != req.end() && it->name() == bh::field::cookie;
         ++it) {
        std::string_view rest = it->value();
        while (!rest.empty()) {
            const auto semi = rest.find(';');
            std::string_view pair = trim_blanks(rest.substr(0, semi));
            rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
            const auto eq = pair.find('=');
            if (eq == std::string_view::npos) continue;
            if (trim_blanks(pair.substr(0, eq)) != name) continue;
            std::string_view v = trim_blanks(pair.substr(eq + 1));
            if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
            return v;
        }
    }
    return std::nullopt;
}

std::string_view to_string(CsrfVerdict v) {
    switch (v) {
        case CsrfVerdict::ok:
            return "ok";
        case CsrfVerdict::missing_token:
            return "missing_token";
        case CsrfVerdict::wrong_token:
            return "wrong_token";
        case CsrfVerdict::foreign_origin:
            return "foreign_origin";
    }
    return "unknown";
}

std::string url_origin(std::string_view url) {
    std::string out;
    const auto sep = url.find("://");
    if (sep == std::string_view::npos) return out;
    for (const char ch : url.substr(0, sep + 3))
        out += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::string_view authority = url.substr(sep + 3);
    authority = authority.substr(0, authority.find_first_of("/?#"));
    std::string_view port;
    const auto colon = authority.rfind(':');
    if (colon != std::string_view::npos && authority.find(']', colon) == std::string_view::npos) {
        port = authority.substr(colon + 1);
        authority = authority.substr(0, colon);
    }
    for (const char ch : authority)
        out += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    const bool default_port = port.empty() || (out.starts_with("https://") && port == "443") ||
                              (out.starts_with("http://") && port == "80");
    if (!default_port) {
        out += ':';
        out += port;
    }
    return out;
}

bool cookie_secure(bool tls, std::string_view public_url) {
    return tls || url_origin(public_url).starts_with("https://");
}

CsrfVerdict csrf_check(const http::Request& req, std::string_view session_csrf, bool tls,
                       std::string_view public_url) {
    if (req.method() == bh::verb::get || req.method() == bh::verb::head) return CsrfVerdict::ok;
    if (auto it = req.find(bh::field::origin); it != req.end()) {
        const std::string_view host = req[bh::field::host];
        std::string own;
        if (!public_url.empty()) {
            own = url_origin(public_url);
        } else if (!host.empty()) {
            own = tls ? "https://" : "http://";
            own += host;
        }
        if (own.empty() || trim_blanks(it->value()) != own) return CsrfVerdict::foreign_origin;
    }
    const auto it = req.find(csrf_header);
    if (it == req.end()) return CsrfVerdict::missing_token;
    if (!same_secret(trim_blanks(it->value()), session_csrf)) return CsrfVerdict::wrong_token;
    return CsrfVerdict::ok;
}

SessionStore::SessionStore(SessionLimits limits) : limits_(limits) {}

SessionStore::Opened SessionStore::open(const Principal& who, std::int64_t now_ms) {
    // Room first: expired sessions go; then, at the principal's cap, its own oldest; then, at
    // the store's cap, the oldest of whoever holds the most sessions (never a lone session of
    // another principal while someone holds several).
    std::erase_if(by_digest_, [&](const auto& kv) { return kv.second.expires_ms <= now_ms; });
    const auto oldest_of = [&](const std::string& name) {
        auto found = by_digest_.end();
        for (auto it = by_digest_.begin(); it != by_digest_.end(); ++it)
            if (it->second.who.name == name &&
                (found == by_digest_.end() || it->second.created_ms < found->second.created_ms))
                found = it;
        return found;
    };
    const auto count_of = [&](const std::string& name) {
        return static_cast<std::size_t>(
            std::count_if(by_digest_.begin(), by_digest_.end(),
                          [&](const auto& kv) { return kv.second.who.name == name; }));
    };
    while (count_of(who.name) >= std::max<std::size_t>(1, limits_.max_per_principal))
        by_digest_.erase(oldest_of(who.name));
    while (!by_digest_.empty() && by_digest_.size() >= limits_.max_sessions) {
        std::map<std::string, std::size_t> held;
        for (const auto& kv : by_digest_) ++held[kv.second.who.name];
        std::string most;
        std::size_t n = 0;
        for (const auto& [name, k] : held)
            if (k > n || (k == n && oldest_of(name)->second.created_ms <
                                        oldest_of(most)->second.created_ms)) {
                most = name;
                n = k;
            }
        by_digest_.erase(oldest_of(most));
    }
    Opened o;
    o.cookie = random_256();
    o.session.who = who;
    o.session.csrf = random_256();
    o.session.created_ms = o.session.last_used_ms = now_ms;
    o.session.expires_ms = std::min(now_ms + limits_.max_age_ms, now_ms + limits_.idle_ms);
    by_digest_[sha256_hex(o.cookie)] = o.session;
    return o;
}

std::optional<Session> SessionStore::find(std::string_view cookie, std::int64_t now_ms) {
    if (!well_formed(cookie)) return std::nullopt;
    const auto it = by_digest_.find(sha256_hex(cookie));
    if (it == by_digest_.end()) return std::nullopt;
    Session& s = it->second;
    if (now_ms >= s.expires_ms) {
        by_digest_.erase(it);
        return std::nullopt;
    }
    s.last_used_ms = now_ms;
    s.expires_ms = std::min(s.created_ms + limits_.max_age_ms, now_ms + limits_.idle_ms);
    return s;
}

bool SessionStore::alive(std::string_view key, std::int64_t now_ms) {
    const auto it = by_digest_.find(key);
    if (it == by_digest_.end()) return false;
    if (now_ms >= it->second.expires_ms) {
        by_digest_.erase(it);
        return false;
    }
    return true;
}

std::string SessionStore::key_of(std::string_view cookie) { return sha256_hex(cookie); }

bool SessionStore::close(std::string_view cookie) {
    if (!well_formed(cookie)) return false;
    return by_digest_.erase(sha256_hex(cookie)) > 0;
}

std::string session_set_cookie(std::string_view cookie, bool tls) {
    return std::string(session_cookie_name) + "=" + std::string(cookie) +
           "; Path=/; HttpOnly; SameSite=Strict" + (tls ? "; Secure" : "");
}

std::string session_clear_cookie(bool tls) {
    return std::string(session_cookie_name) + "=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict" +
           (tls ? "; Secure" : "");
}

}  // namespace guardia::service
