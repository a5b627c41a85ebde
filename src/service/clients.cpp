#include "guardia/service/clients.hpp"

#include "guardia/core/digest.hpp"
#include "guardia/service/console.hpp"
#include "guardia/service/service_config.hpp"

#include <array>
#include <set>

namespace guardia::service {

namespace {

constexpr std::array<std::string_view, role_count> role_names = {"submit", "validate", "operate",
                                                                 "admin", "read"};

std::uint8_t bit(Role r) {
    return static_cast<std::uint8_t>(1u << static_cast<unsigned>(r));
}

bool ieq(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
        if (lower(a[i]) != lower(b[i])) return false;
    }
    return true;
}

}  // namespace

std::string_view to_string(Role r) {
    const auto i = static_cast<std::size_t>(r);
    return i < role_names.size() ? role_names[i] : std::string_view("unknown");
}

std::optional<Role> parse_role(std::string_view s) {
    for (std::size_t i = 0; i < role_names.size(); ++i)
        if (role_names[i] == s) return static_cast<Role>(i);
    return std::nullopt;
}

RoleSet RoleSet::all() {
    RoleSet s;
    for (std::size_t i = 0; i < role_count; ++i) s.add(static_cast<Role>(i));
    return s;
}

bool RoleSet::has(Role r) const {
    return (bits_ & bit(r)) != 0;
}

void RoleSet::add(Role r) {
    bits_ = static_cast<std::uint8_t>(bits_ | bit(r));
}

std::vector<std::string_view> RoleSet::names() const {
    std::vector<std::string_view> out;
    for (std::size_t i = 0; i < role_count; ++i)
        if (has(static_cast<Role>(i))) out.push_back(role_names[i]);
    return out;
}

std::optional<std::string_view> bearer_token(const http::Request& head) {
    const auto it = head.find(http::beast_http::field::authorization);
    if (it == head.end()) return std::nullopt;
    std::string_view v = it->value();
    constexpr std::string_view scheme = "bearer";
    if (v.size() <= scheme.size() || !ieq(v.substr(0, scheme.size()), scheme) ||
        v[scheme.size()] != ' ')
        return std::nullopt;
    v.remove_prefix(scheme.size());
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    if (v.empty()) return std::nullopt;
    return v;
}

Result<ClientRegistry> ClientRegistry::load(const ServiceConfig& config) {
    const std::string& src = config.source;
    auto fail = [&](const std::string& field, const std::string& what) {
        return Error(errc::invalid_argument,
                     (src.empty() ? std::string() : src + ": ") + field + ": " + what);
    };
    ClientRegistry reg;
    std::set<std::string, std::less<>> names;
    std::map<std::string, std::string, std::less<>> owner_of;  // digest -> field that set it
    auto add = [&](const std::string& field, const std::string& digest, Principal p) -> Result<void> {
        if (auto it = owner_of.find(digest); it != owner_of.end())
            return fail(field, "the same token as " + it->second +
                                   " (every client needs a token of its own)");
        owner_of.emplace(digest, field);
        reg.by_digest_.emplace(digest, std::move(p));
        return {};
    };
    for (std::size_t i = 0; i < config.clients.size(); ++i) {
        const ClientSpec& c = config.clients[i];
        const std::string at = "service.clients[" + std::to_string(i) + "]";
        if (!names.insert(c.name).second)
            return fail(at + ".name", "duplicate client name \"" + c.name + "\"");
        if (c.roles.empty()) return fail(at + ".roles", "must name at least one role");
        std::string digest;
        std::string field;
        if (!c.token_file.empty()) {
            field = at + ".token_file";
            auto token = load_api_token(c.token_file);
            if (!token) return fail(field, token.error().message);
            digest = sha256_hex(*token);
        } else if (!c.token_sha256.empty()) {
            field = at + ".token_sha256";
            digest = c.token_sha256;
        } else {
            return fail(at, "needs token_sha256 or token_file");
        }
        Principal p;
        p.name = c.name;
        p.roles = c.roles;
        if (auto r = add(field, digest, std::move(p)); !r) return r.error();
    }
    if (!config.token_file.empty()) {
        if (names.count("default"))
            return fail("service.clients", "the name \"default\" is taken by service.token_file's "
                                           "client; rename it");
        auto token = load_api_token(config.token_file);
        if (!token) return fail("service.token_file", token.error().message);
        Principal p;
        p.name = "default";
        p.roles = RoleSet::all();
        if (auto r = add("service.token_file", sha256_hex(*token), std::move(p)); !r)
            return r.error();
    }
    if (reg.by_digest_.empty())
        return fail("service.clients", "no client: set service.clients or service.token_file");
    return reg;
}

// Defined here, not in console.cpp: the admission rule below needs it, and the fuzz subject
// (test/fuzz) compiles this file without the console and its embedded assets.
bool is_ui_path(const std::vector<std::string>& seg) {
    return !seg.empty() && seg[0] == "ui";
}

bool anonymous_request_allowed(const http::Request& head) {
    namespace bh = http::beast_http;
    if (head.method() != bh::verb::get && head.method() != bh::verb::head) return false;
    const auto seg = http::path_segments(head.target());
    // /healthz, and the console's static files under /ui (they hold no data).
    const bool healthz = seg && seg->size() == 1 && (*seg)[0] == "healthz";
    if (!healthz && !(seg && is_ui_path(*seg))) return false;
    if (head.count(bh::field::transfer_encoding)) return false;
    if (auto it = head.find(bh::field::content_length); it != head.end() && it->value() != "0")
        return false;
    return true;
}

http::Response unauthorized_response(const http::Request& req) {
    auto r = http::error_response(req, http::beast_http::status::unauthorized, "unauthorized",
                                  "a valid 'Authorization: Bearer <token>' header is required");
    r.set(http::beast_http::field::www_authenticate, "Bearer realm=\"guardia\"");
    return r;
}

const Principal* ClientRegistry::authenticate(std::string_view token) const {
    if (token.empty()) return nullptr;
    const auto it = by_digest_.find(sha256_hex(token));
    return it == by_digest_.end() ? nullptr : &it->second;
}

const Principal* ClientRegistry::authenticate(const http::Request& head) const {
    const auto token = bearer_token(head);
    return token ? authenticate(*token) : nullptr;
}

std::size_t ClientRegistry::size() const {
    return by_digest_.size();
}

}  // namespace guardia::service
