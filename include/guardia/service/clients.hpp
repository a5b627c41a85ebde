// The principals of the service API (issue 12): named clients, each with its own bearer token
// and a set of roles. `guardia serve` loads them once at start-up (ClientRegistry::load) from
// service.clients, plus the legacy service.token_file as client "default" holding every role
// (the small-install mode). A request is authenticated by the SHA-256 digest of its bearer
// token: tokens are kept only as digests, looked up in a map keyed by digest (no per-client
// comparison loop, no timing difference between clients).
//
// Which role an endpoint needs is the service's decision (deploy_service); the registry only
// says who is calling.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/http/api_util.hpp"

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::service {

struct ServiceConfig;

enum class Role : std::uint8_t { submit, validate, operate, admin, read };
inline constexpr std::size_t role_count = 5;

// "submit", "validate", "operate", "admin", "read"
std::string_view to_string(Role);
std::optional<Role> parse_role(std::string_view);

class RoleSet {  // small value type
  public:
    RoleSet() = default;
    static RoleSet all();
    bool has(Role) const;
    void add(Role);
    bool empty() const { return bits_ == 0; }
    std::vector<std::string_view> names() const;  // in enum order
    bool operator==(const RoleSet&) const = default;

  private:
    std::uint8_t bits_ = 0;
};

struct ClientSpec {  // one entry of service.clients (parsed by parse_service_config)
    ClientSpec() {}
    std::string name;          // [A-Za-z0-9._-]{1,64}, unique
    std::string token_sha256;  // lower-case hex SHA-256 of the token ("token_sha256" field), or
    std::string token_file;    // an absolute path of a 0600 file whose first line is the token
    RoleSet roles;             // non-empty
};

struct Principal {
    std::string name;
    RoleSet roles;
};

class ClientRegistry {
  public:
    // Start-up (blocking is fine): the clients of `config.clients`, plus, when config.token_file is
    // set, the legacy single token as client "default" with every role. Token files must be 0600
    // and hold >= 16 characters (load_api_token). Two clients with one token, duplicate names,
    // or no client at all are errors naming the field ("service.clients[1].token_file: ...").
    static Result<ClientRegistry> load(const ServiceConfig& config);
    // nullptr when the token is unknown. Compares SHA-256 digests (map keyed by digest).
    const Principal* authenticate(std::string_view bearer_token) const;
    // The "Authorization: Bearer <token>" header of a request head; nullptr if missing/unknown.
    const Principal* authenticate(const http::Request& head) const;
    std::size_t size() const;

  private:
    std::map<std::string, Principal, std::less<>> by_digest_;  // raw 32-byte digest -> client
};

// The API's answer to a missing or unknown token: 401 {"error": "unauthorized", ...} with
// WWW-Authenticate: Bearer (the server's admit hook and the service's router give the same).
http::Response unauthorized_response(const http::Request& req);

// The requests an anonymous client may make: GET or HEAD of /healthz or of a console file under
// /ui (decoded, no query needed) announcing no body (no Content-Length above 0, no Transfer-Encoding). Everything else
// needs a known token, checked from the head (server admit hook) and again by the router.
bool anonymous_request_allowed(const http::Request& head);

// The bearer token of an "Authorization: Bearer <token>" header (scheme case-insensitive,
// surrounding blanks trimmed); nullopt when there is none or it is empty.
std::optional<std::string_view> bearer_token(const http::Request& head);

}  // namespace guardia::service
