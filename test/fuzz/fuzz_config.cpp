// Fuzz target: the configuration file readers. The input is the text of a guardia.json:
// guardia::deploy::parse_engine_config (deploy/engine_config.hpp) reads it, and its "service"
// section then goes through guardia::service::parse_service_config
// (service/service_config.hpp), as `guardia serve` does.
//
// Properties: no crash, sanitizer report or leak; errors are invalid_argument, name the file
// and are one line of valid UTF-8
// without control characters (they are quoted in JSON API answers); accepted values lie in their documented ranges.
#include "guardia/deploy/engine_config.hpp"
#include "guardia/service/service_config.hpp"

#include "fuzz_common.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

using guardia::fuzz::has_control;

constexpr std::string_view source = "guardia.json";

void check_error(const guardia::Error& e) {
    GUARDIA_FUZZ_CHECK(e.code == guardia::errc::invalid_argument, e.describe());
    GUARDIA_FUZZ_CHECK(e.message.starts_with(source), e.message);
    GUARDIA_FUZZ_CHECK(!has_control(e.message), e.message);
    GUARDIA_FUZZ_CHECK(guardia::fuzz::is_utf8(e.message), e.message);
}

void check_engine(const guardia::deploy::EngineConfig& c) {
    const auto& r = c.rollout;
    GUARDIA_FUZZ_CHECK(r.failure_threshold >= 0.0 && r.failure_threshold <= 1.0,
                       std::to_string(r.failure_threshold));
    GUARDIA_FUZZ_CHECK(r.max_sessions >= 1, std::to_string(r.max_sessions));
    GUARDIA_FUZZ_CHECK(r.max_connections_per_second >= 0.0,
                       std::to_string(r.max_connections_per_second));
    for (const auto& t : r.tiers) GUARDIA_FUZZ_CHECK(t.tier >= 1 && t.tier <= 99, "tier");
    const auto& p = c.pipeline;
    GUARDIA_FUZZ_CHECK(p.disk_threshold_percent >= 1 && p.disk_threshold_percent <= 100,
                       "disk_threshold_percent");
    GUARDIA_FUZZ_CHECK(p.keep_backups >= 1, "keep_backups");
    for (const std::string* path : {&c.known_hosts, &c.credentials_file, &c.db})
        if (!path->empty()) GUARDIA_FUZZ_CHECK(path->front() == '/' && !has_control(*path), *path);
}

void check_service(const guardia::service::ServiceConfig& s) {
    GUARDIA_FUZZ_CHECK(!s.listen_address.empty(), "listen_address");
    GUARDIA_FUZZ_CHECK(!s.token_file.empty() && s.token_file.front() == '/', s.token_file);
    GUARDIA_FUZZ_CHECK(s.max_body_bytes >= 1024 && s.max_body_bytes <= (1u << 30),
                       "max_body_bytes");
    GUARDIA_FUZZ_CHECK(s.max_header_bytes >= 1024 && s.max_header_bytes <= (1u << 20),
                       "max_header_bytes");
    GUARDIA_FUZZ_CHECK(s.max_json_depth >= 2 && s.max_json_depth <= 1000, "max_json_depth");
    GUARDIA_FUZZ_CHECK(s.max_connections >= 1, "max_connections");
    GUARDIA_FUZZ_CHECK(s.request_timeout.count() >= 0 && s.shutdown_grace.count() >= 0,
                       "timeouts");
    GUARDIA_FUZZ_CHECK(s.tls_cert_file.empty() == s.tls_key_file.empty(), "tls");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto engine = guardia::deploy::parse_engine_config(text, source);
    if (!engine) {
        check_error(engine.error());
        return 0;
    }
    check_engine(*engine);
    auto service = guardia::service::parse_service_config(engine->service, source);
    if (!service)
        check_error(service.error());
    else
        check_service(*service);
    return 0;
}
