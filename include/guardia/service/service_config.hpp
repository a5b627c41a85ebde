// The "service" section of the configuration file: how `guardia serve` listens, authenticates
// and bounds what it accepts. Every field is optional except that at least one of token_file
// and clients is required; errors name the file and the field ("guardia.json: service.port: ...").
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/http/api_util.hpp"
#include "guardia/service/clients.hpp"

#include <boost/json/value.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::service {

struct ServiceConfig {
    ServiceConfig() {}
    std::string listen_address = "127.0.0.1";
    std::uint16_t port = 8080;  // 0: the kernel picks one (tests); see the readiness line
    // The legacy single token: its first line is the bearer token of client "default", which
    // holds every role (the small-install mode). Optional when `clients` is not empty.
    std::string token_file;
    std::vector<ClientSpec> clients;  // "clients": named tokens with roles (clients.hpp)
    std::string tls_cert_file;  // both set: HTTPS only
    std::string tls_key_file;
    std::string state_dir = "/var/lib/guardia";   // staged artifacts live below it
    std::size_t max_body_bytes = 4u << 20;        // JSON requests (an inventory of 1000s of nodes)
    std::size_t max_artifact_bytes = 1ull << 30;  // one staged artifact, uploaded in the body
    std::size_t max_header_bytes = 16u << 10;
    std::size_t max_json_depth = 32;
    std::size_t max_connections = 256;
    std::chrono::milliseconds request_timeout{30000};  // to receive one request
    bool forbid_self_approval = true;  // an approver who is also the requester is refused
    // On SIGTERM running rollouts start no new node and in-flight nodes finish; after this
    // long they are cancelled instead (rolled back). Keep it below systemd's TimeoutStopSec.
    std::chrono::milliseconds shutdown_grace{std::chrono::minutes(10)};
    // Plain HTTP on an address outside 127.0.0.0/8 and ::1 is refused unless this is true
    // (tokens would cross the network in clear).
    bool allow_plaintext = false;
    std::chrono::milliseconds idle_timeout{5000};  // "idle_timeout_s": kept-alive, between requests
    std::size_t max_connections_per_address = 32;  // beyond: 503 too_many_connections
    // Whether the PM verdict may not come from the task's requester or approver.
    bool four_eyes = true;
    // "drop_dir": the only directory the path form of staging (POST /api/tasks/{sr}/artifacts
    // with "path") reads from (absolute); empty: the path form is disabled (docs/SECURITY.md).
    std::string drop_dir;
    // "public_url": how operators reach the service (e.g. https://guardia.example.com, behind
    // a proxy); the messengers' links to the console start with it. Empty: derived from
    // listen_address and the port (console_base_url).
    std::string public_url;
    std::string source;  // the configuration file's name, for errors found after parsing
};

// The console's base URL: public_url, else "http(s)://<listen_address>:<port>" (IPv6 in
// brackets), `port` being the one the service listens on.
std::string console_base_url(const ServiceConfig& config, std::uint16_t port);

// `section` is the raw "service" value (null when absent: then token_file is missing).
Result<ServiceConfig> parse_service_config(const boost::json::value& section,
                                           std::string_view source);

// The body limit `guardia serve` gives a request, decided from its head (the server's
// body_limit_for): an artifact upload, PUT /api/tasks/{sr}/artifacts/{name}, by a principal
// holding Role::submit may be up to `artifact_limit` bytes; anything else gets 0 (the server's
// max_body_bytes). An anonymous client never gets a large body buffered. The console's sign-in,
// /ui/session, which anyone may send (any method), gets ui_session_body_limit.
inline constexpr std::size_t ui_session_body_limit = 4096;
std::size_t request_body_limit(const http::Request& head, const ClientRegistry& clients,
                               std::size_t artifact_limit);

// Whether plain HTTP may listen on `address` without service.allow_plaintext: a numeric
// address inside 127.0.0.0/8 or ::1 (also ::ffff:127.x.y.z).
bool is_loopback_address(std::string_view address);

// Checks done on the final listen address (after --listen): plain HTTP outside loopback needs
// allow_plaintext. The error names "<source>: service.listen_address".
Result<void> check_transport(const ServiceConfig& config);

// The bearer token: the first line of the token file, which must not be readable by group or
// others and must hold at least 16 characters. Start-up work (blocking is fine).
Result<std::string> load_api_token(const std::string& token_file);

}  // namespace guardia::service
