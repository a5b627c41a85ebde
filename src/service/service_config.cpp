#include "guardia/service/service_config.hpp"

#include "guardia/core/json_section.hpp"

#include <sys/stat.h>

#include <fstream>

namespace guardia::service {

namespace json = boost::json;

Result<ServiceConfig> parse_service_config(const json::value& section, std::string_view source) {
    const std::string src(source);
    ServiceConfig c;
    if (section.is_null())
        return Error(errc::invalid_argument,
                     src + ": service: section missing (service.token_file is required)");
    if (!section.is_object())
        return Error(errc::invalid_argument, src + ": service: must be an object");
    Section s(section.get_object(), src, "service");
    if (auto r =
            s.only({"listen_address", "port", "token_file", "tls", "state_dir", "max_body_bytes",
                    "max_artifact_bytes", "max_header_bytes", "max_json_depth", "max_connections",
                    "request_timeout_s", "forbid_self_approval", "shutdown_grace_s", "drop_dir"});
        !r)
        return r.error();
    Result<void> r;
    if (!(r = s.string("listen_address", c.listen_address))) return r.error();
    if (c.listen_address.empty()) return s.error("listen_address", "must not be empty");
    if (!(r = s.integer("port", c.port, 0, 65535))) return r.error();
    if (!(r = s.path("token_file", c.token_file))) return r.error();
    if (c.token_file.empty()) return s.error("token_file", "is required (an absolute path)");
    if (!(r = s.path("state_dir", c.state_dir))) return r.error();
    if (!(r = s.path("drop_dir", c.drop_dir))) return r.error();
    if (!(r = s.integer("max_body_bytes", c.max_body_bytes, 1024, 1ll << 30))) return r.error();
    if (!(r = s.integer("max_artifact_bytes", c.max_artifact_bytes, 1024, 1ll << 40)))
        return r.error();
    if (!(r = s.integer("max_header_bytes", c.max_header_bytes, 1024, 1 << 20))) return r.error();
    if (!(r = s.integer("max_json_depth", c.max_json_depth, 2, 1000))) return r.error();
    if (!(r = s.integer("max_connections", c.max_connections, 1, 100000))) return r.error();
    if (!(r = s.seconds("request_timeout_s", c.request_timeout, 3600))) return r.error();
    if (!(r = s.boolean("forbid_self_approval", c.forbid_self_approval))) return r.error();
    if (!(r = s.seconds("shutdown_grace_s", c.shutdown_grace, 24 * 3600))) return r.error();
    if (const auto* tls = s.find("tls")) {
        if (!tls->is_object()) return s.error("tls", "must be an object");
        Section t(tls->get_object(), src, "service.tls");
        if (auto ok = t.only({"cert_file", "key_file"}); !ok) return ok.error();
        if (!(r = t.path("cert_file", c.tls_cert_file))) return r.error();
        if (!(r = t.path("key_file", c.tls_key_file))) return r.error();
        if (c.tls_cert_file.empty() || c.tls_key_file.empty())
            return s.error("tls", "needs both cert_file and key_file");
    }
    return c;
}

std::size_t request_body_limit(const http::Request& head, std::string_view api_token,
                               std::size_t artifact_limit) {
    if (head.method() != http::beast_http::verb::put) return 0;
    if (!http::bearer_token_matches(head, api_token)) return 0;
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
