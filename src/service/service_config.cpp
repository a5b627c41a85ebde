#include "guardia/service/service_config.hpp"

#include "guardia/core/json_section.hpp"

#include <boost/asio/ip/address.hpp>

#include <sys/stat.h>

#include <fstream>
#include <optional>
#include <set>

namespace guardia::service {

namespace json = boost::json;

namespace {

bool valid_client_name(std::string_view n) {
    if (n.empty() || n.size() > 64) return false;
    for (char ch : n) {
        const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                        (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
        if (!ok) return false;
    }
    return true;
}

bool lower_hex_64(std::string_view h) {
    if (h.size() != 64) return false;
    for (char ch : h)
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
    return true;
}

std::string role_list() {
    std::string out;
    for (auto n : RoleSet::all().names()) out += (out.empty() ? "" : ", ") + std::string(n);
    return out;
}

Result<std::vector<ClientSpec>> parse_clients(const json::value& v, const std::string& src) {
    const std::string field = src + ": service.clients";
    if (!v.is_array())
        return Error(errc::invalid_argument, field + ": must be an array of {\"name\", "
                                                     "\"token_sha256\"|\"token_file\", \"roles\"}");
    std::vector<ClientSpec> out;
    std::set<std::string, std::less<>> names;
    const auto& arr = v.get_array();
    for (std::size_t i = 0; i < arr.size(); ++i) {
        const std::string at = "service.clients[" + std::to_string(i) + "]";
        if (!arr[i].is_object())
            return Error(errc::invalid_argument, src + ": " + at + ": must be an object");
        Section c(arr[i].get_object(), src, at);
        if (auto r = c.only({"name", "token_sha256", "token_file", "roles"}); !r) return r.error();
        ClientSpec spec;
        Result<void> r;
        if (!(r = c.string("name", spec.name))) return r.error();
        if (!c.find("name")) return c.error("name", "is required");
        if (!valid_client_name(spec.name))
            return c.error("name", "must be 1-64 characters of [A-Za-z0-9._-]");
        if (!names.insert(spec.name).second)
            return c.error("name", "duplicate client name \"" + spec.name + "\"");
        if (!(r = c.string("token_sha256", spec.token_sha256))) return r.error();
        if (!(r = c.path("token_file", spec.token_file))) return r.error();
        const bool has_digest = c.find("token_sha256") != nullptr;
        const bool has_file = c.find("token_file") != nullptr;
        if (has_digest == has_file)
            return Error(errc::invalid_argument,
                         src + ": " + at + ": needs exactly one of token_sha256 and token_file");
        if (has_digest && !lower_hex_64(spec.token_sha256))
            return c.error("token_sha256",
                           "must be 64 lower-case hex digits (printf %s \"$TOKEN\" | sha256sum)");
        const auto* roles = c.find("roles");
        if (!roles) return c.error("roles", "is required (" + role_list() + ")");
        if (!roles->is_array() || roles->get_array().empty())
            return c.error("roles", "must be a non-empty array of roles (" + role_list() + ")");
        const auto& ra = roles->get_array();
        for (std::size_t j = 0; j < ra.size(); ++j) {
            const std::string rf = "roles[" + std::to_string(j) + "]";
            if (!ra[j].is_string()) return c.error(rf, "must be a string (" + role_list() + ")");
            const auto role = parse_role(ra[j].get_string());
            if (!role)
                return c.error(rf, "unknown role \"" + printable(ra[j].get_string()) + "\" (" +
                                       role_list() + ")");
            spec.roles.add(*role);
        }
        out.push_back(std::move(spec));
    }
    return out;
}

// What is wrong with a service.public_url, if anything: an http(s) URL with a host, no
// credentials, query, fragment, spaces or control characters. (Checked here rather than with
// http::parse_url: the configuration's parsers link without the HTTP client.)
std::optional<std::string> public_url_problem(std::string_view url) {
    std::string_view rest;
    if (url.rfind("https://", 0) == 0)
        rest = url.substr(8);
    else if (url.rfind("http://", 0) == 0)
        rest = url.substr(7);
    else
        return "must be an http:// or https:// URL";
    for (const char ch : url) {
        const auto u = static_cast<unsigned char>(ch);
        if (u <= 0x20 || u == 0x7f) return "must not hold spaces or control characters";
    }
    if (url.find_first_of("?#") != std::string_view::npos)
        return "must not hold a query or a fragment";
    const auto host = rest.substr(0, rest.find('/'));
    if (host.find('@') != std::string_view::npos) return "must not hold credentials";
    if (host.empty() || host.front() == ':') return "has no host";
    return std::nullopt;
}

}  // namespace

Result<ServiceConfig> parse_service_config(const json::value& section, std::string_view source) {
    const std::string src(source);
    ServiceConfig c;
    if (section.is_null())
        return Error(errc::invalid_argument,
                     src + ": service: section missing (service.token_file is required, or "
                           "service.clients)");
    if (!section.is_object())
        return Error(errc::invalid_argument, src + ": service: must be an object");
    Section s(section.get_object(), src, "service");
    if (auto r =
            s.only({"listen_address", "port", "token_file", "tls", "state_dir", "max_body_bytes",
                    "max_artifact_bytes", "max_header_bytes", "max_json_depth", "max_connections",
                    "request_timeout_s", "forbid_self_approval", "shutdown_grace_s", "clients",
                    "allow_plaintext", "idle_timeout_s", "max_connections_per_address",
                    "four_eyes", "drop_dir", "public_url"});
        !r)
        return r.error();
    Result<void> r;
    if (!(r = s.string("listen_address", c.listen_address))) return r.error();
    if (c.listen_address.empty()) return s.error("listen_address", "must not be empty");
    if (!(r = s.integer("port", c.port, 0, 65535))) return r.error();
    if (!(r = s.path("token_file", c.token_file))) return r.error();
    if (const auto* cl = s.find("clients")) {
        auto clients = parse_clients(*cl, src);
        if (!clients) return clients.error();
        c.clients = std::move(*clients);
    }
    if (c.token_file.empty() && c.clients.empty())
        return s.error("token_file", "is required (an absolute path), unless service.clients "
                                     "names the API's clients");
    if (!(r = s.path("state_dir", c.state_dir))) return r.error();
    if (!(r = s.integer("max_body_bytes", c.max_body_bytes, 1024, 1ll << 30))) return r.error();
    if (!(r = s.integer("max_artifact_bytes", c.max_artifact_bytes, 1024, 1ll << 40)))
        return r.error();
    if (!(r = s.integer("max_header_bytes", c.max_header_bytes, 1024, 1 << 20))) return r.error();
    if (!(r = s.integer("max_json_depth", c.max_json_depth, 2, 1000))) return r.error();
    if (!(r = s.integer("max_connections", c.max_connections, 1, 100000))) return r.error();
    if (!(r = s.seconds("request_timeout_s", c.request_timeout, 3600))) return r.error();
    if (!(r = s.boolean("forbid_self_approval", c.forbid_self_approval))) return r.error();
    if (!(r = s.seconds("shutdown_grace_s", c.shutdown_grace, 24 * 3600))) return r.error();
    if (!(r = s.boolean("allow_plaintext", c.allow_plaintext))) return r.error();
    if (!(r = s.seconds("idle_timeout_s", c.idle_timeout, 3600))) return r.error();
    if (!(r = s.integer("max_connections_per_address", c.max_connections_per_address, 1, 100000)))
        return r.error();
    if (!(r = s.boolean("four_eyes", c.four_eyes))) return r.error();
    if (!(r = s.path("drop_dir", c.drop_dir))) return r.error();
    if (!(r = s.string("public_url", c.public_url))) return r.error();
    if (s.find("public_url")) {
        if (auto bad = public_url_problem(c.public_url)) return s.error("public_url", *bad);
        while (c.public_url.back() == '/') c.public_url.pop_back();
    }
    if (const auto* tls = s.find("tls")) {
        if (!tls->is_object()) return s.error("tls", "must be an object");
        Section t(tls->get_object(), src, "service.tls");
        if (auto ok = t.only({"cert_file", "key_file"}); !ok) return ok.error();
        if (!(r = t.path("cert_file", c.tls_cert_file))) return r.error();
        if (!(r = t.path("key_file", c.tls_key_file))) return r.error();
        if (c.tls_cert_file.empty() || c.tls_key_file.empty())
            return s.error("tls", "needs both cert_file and key_file");
    }
    c.source = src;
    if (auto ok = check_transport(c); !ok) return ok.error();
    return c;
}

std::string console_base_url(const ServiceConfig& c, std::uint16_t port) {
    if (!c.public_url.empty()) return c.public_url;
    std::string host = c.listen_address;
    if (host.find(':') != std::string::npos) host = "[" + host + "]";  // IPv6
    return std::string(c.tls_cert_file.empty() ? "http" : "https") + "://" + host + ":" +
           std::to_string(port);
}

bool is_loopback_address(std::string_view address) {
    boost::system::error_code ec;
    auto a = boost::asio::ip::make_address(std::string(address), ec);
    if (ec) return false;
    if (a.is_v6() && a.to_v6().is_v4_mapped())
        a = boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6());
    return a.is_loopback();  // v4: 127.0.0.0/8; v6: ::1
}

Result<void> check_transport(const ServiceConfig& c) {
    const std::string where =
        (c.source.empty() ? std::string() : c.source + ": ") + "service.listen_address: ";
    boost::system::error_code ec;
    (void)boost::asio::ip::make_address(c.listen_address, ec);
    if (ec)
        return Error(errc::invalid_argument, where + "'" + printable(c.listen_address) +
                                                 "' is not a numeric IPv4 or IPv6 address");
    const bool tls = !c.tls_cert_file.empty() && !c.tls_key_file.empty();
    if (tls || c.allow_plaintext || is_loopback_address(c.listen_address)) return {};
    return Error(errc::invalid_argument,
                 where + "plain HTTP on '" + c.listen_address +
                     "' (not 127.0.0.0/8 or ::1) would send the API tokens in clear: configure "
                     "service.tls, or set service.allow_plaintext to true (behind a TLS proxy "
                     "on a trusted network only)");
}

std::size_t request_body_limit(const http::Request& head, const ClientRegistry& clients,
                               std::size_t artifact_limit) {
    {  // the console's session: admitted without credentials, so a small body whatever the
       // method (a sign-in carries a token; the other methods need none)
        auto seg = http::path_segments(head.target());
        if (seg && seg->size() == 2 && (*seg)[0] == "ui" && (*seg)[1] == "session")
            return ui_session_body_limit;
    }
    if (head.method() != http::beast_http::verb::put) return 0;
    const Principal* p = clients.authenticate(head);
    if (!p || !p->roles.has(Role::submit)) return 0;
    auto seg = http::path_segments(head.target());
    if (seg && seg->size() == 5 && (*seg)[0] == "api" && (*seg)[1] == "tasks" &&
        (*seg)[3] == "artifacts")
        return artifact_limit;
    return 0;
}

Result<std::string> load_api_token(const std::string& token_file) {
    struct stat st {};
    if (::stat(token_file.c_str(), &st) != 0)
        return Error(errc::local_io_failed, "token file " + token_file + ": cannot read it");
    if ((st.st_mode & 077) != 0)
        return Error(errc::invalid_argument,
                     "token file " + token_file +
                         ": readable by group or others; chmod 600 it (it grants deployments)");
    std::ifstream in(token_file);
    std::string token;
    if (!in || !std::getline(in, token))
        return Error(errc::local_io_failed, "token file " + token_file + ": cannot read it");
    while (!token.empty() && (token.back() == '\r' || token.back() == ' ' || token.back() == '\t'))
        token.pop_back();
    if (token.size() < 16)
        return Error(errc::invalid_argument,
                     "token file " + token_file + ": the token must have at least 16 characters");
    return token;
}

}  // namespace guardia::service
