// The "service" section of the configuration file: how `guardia serve` listens, authenticates
// and bounds what it accepts. Every field is optional except token_file; errors name the file
// and the field ("guardia.json: service.port: ...").
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/http/api_util.hpp"

#include <boost/json/value.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace guardia::service {

struct ServiceConfig {
    ServiceConfig() {}
    std::string listen_address = "127.0.0.1";
    std::uint16_t port = 8080;  // 0: the kernel picks one (tests); see the readiness line
    std::string token_file;     // required: its first line is the API's bearer token
    std::string tls_cert_file;  // both set: HTTPS only
    std::string tls_key_file;
    std::string state_dir = "/var/lib/guardia";   // staged artifacts live below it
    // The only directory the path form of staging (POST /api/tasks/{sr}/artifacts with "path")
    // reads from; empty: the path form is disabled (docs/SECURITY.md).
    std::string drop_dir;
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
};

// `section` is the raw "service" value (null when absent: then token_file is missing).
Result<ServiceConfig> parse_service_config(const boost::json::value& section,
                                           std::string_view source);

// The body limit `guardia serve` gives a request, decided from its head (the server's
// body_limit_for): an artifact upload, PUT /api/tasks/{sr}/artifacts/{name}, that carries the
// valid bearer token may be up to `artifact_limit` bytes; anything else gets 0 (the server's
// max_body_bytes). An anonymous client never gets a large body buffered.
std::size_t request_body_limit(const http::Request& head, std::string_view api_token,
                               std::size_t artifact_limit);

// The bearer token: the first line of the token file, which must not be readable by group or
// others and must hold at least 16 characters. Start-up work (blocking is fine).
Result<std::string> load_api_token(const std::string& token_file);

}  // namespace guardia::service
