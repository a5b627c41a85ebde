#include "guardia/service/service_config.hpp"
#include "guardia/service/clients.hpp"
#include "guardia/deploy/engine_config.hpp"
#include "guardia/service/notifier.hpp"

#include <doctest/doctest.h>
#include <boost/json/parse.hpp>

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

using guardia::service::load_api_token;
using guardia::service::parse_service_config;

namespace {

guardia::Result<guardia::service::ServiceConfig> parse(const std::string& text) {
    return parse_service_config(boost::json::parse(text), "guardia.json");
}

std::string error_of(const std::string& text) {
    auto r = parse(text);
    REQUIRE_FALSE(r.has_value());
    return r.error().message;
}

}  // namespace

TEST_SUITE_BEGIN("service config");

TEST_CASE("service config: defaults, overrides and errors naming the field") {
    auto d = parse(R"({"token_file": "/etc/guardia/api-token"})");
    REQUIRE(d.has_value());
    CHECK(d->listen_address == "127.0.0.1");
    CHECK(d->port == 8080);
    CHECK(d->forbid_self_approval);
    CHECK(d->tls_cert_file.empty());

    auto o = parse(R"({"token_file": "/t", "port": 0, "listen_address": "127.0.0.2",
                       "max_body_bytes": 2048, "shutdown_grace_s": 1.5,
                       "tls": {"cert_file": "/c.pem", "key_file": "/k.pem"},
                       "forbid_self_approval": false})");
    REQUIRE(o.has_value());
    CHECK(o->port == 0);
    CHECK(o->listen_address == "127.0.0.2");
    CHECK(o->max_body_bytes == 2048);
    CHECK(o->shutdown_grace.count() == 1500);
    CHECK(o->tls_key_file == "/k.pem");
    CHECK_FALSE(o->forbid_self_approval);

    CHECK(error_of("null").find("service.token_file is required") != std::string::npos);
    CHECK(error_of(R"({})").find("guardia.json: service.token_file: is required") == 0);
    CHECK(error_of(R"({"token_file": "rel"})") ==
          "guardia.json: service.token_file: must be an absolute path");
    CHECK(error_of(R"({"token_file": "/t", "port": 70000})").find("service.port: must be") !=
          std::string::npos);
    CHECK(error_of(R"({"token_file": "/t", "prot": 1})") ==
          "guardia.json: service.prot: unknown field");
    CHECK(error_of(R"({"token_file": "/t", "tls": {"cert_file": "/c"}})")
              .find("service.tls: needs both") != std::string::npos);
    CHECK(error_of(R"({"token_file": "/t", "tls": {"cert": "/c"}})") ==
          "guardia.json: service.tls.cert: unknown field");
}

TEST_CASE("service config: the API token file must be private and long enough") {
    char tmpl[] = "/tmp/guardia-token-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    const std::string dir = tmpl;
    const std::string file = dir + "/token";
    auto write = [&](const std::string& text, mode_t mode) {
        std::ofstream(file, std::ios::trunc) << text;
        ::chmod(file.c_str(), mode);
    };
    write("0123456789abcdef0123\nsecond line ignored\n", 0600);
    auto t = load_api_token(file);
    REQUIRE(t.has_value());
    CHECK(*t == "0123456789abcdef0123");
    write("0123456789abcdef0123\n", 0644);
    REQUIRE_FALSE(load_api_token(file).has_value());
    CHECK(load_api_token(file).error().message.find("chmod 600") != std::string::npos);
    write("short\n", 0600);
    CHECK(load_api_token(file).error().message.find("at least 16") != std::string::npos);
    CHECK_FALSE(load_api_token(dir + "/missing").has_value());
    std::filesystem::remove_all(dir);
}

TEST_CASE("service config: conf/guardia.json's service and notifications sections parse") {
    const auto root = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
    const std::string path = (root / "conf" / "guardia.json").string();
    auto engine = guardia::deploy::load_engine_config(path);
    REQUIRE_MESSAGE(engine.has_value(), (engine ? "" : engine.error().message));
    auto s = parse_service_config(engine->service, path);
    REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().message));
    CHECK(s->token_file == "/etc/guardia/api-token");
    CHECK(s->port == 8080);
    CHECK(s->shutdown_grace.count() == 600000);
    auto n = guardia::service::parse_notifier_config(engine->notifications, path);
    REQUIRE_MESSAGE(n.has_value(), (n ? "" : n.error().message));
    REQUIRE(n->webhooks.size() == 2);
    CHECK(n->webhooks[0].event == "pm_review_needed");
}

TEST_SUITE_END();

TEST_CASE("service: the large artifact body limit only for an authenticated artifact PUT") {
    namespace bh = boost::beast::http;
    const std::string token = "0123456789abcdef-token";
    auto head = [&](bh::verb method, const std::string& target, const std::string& auth) {
        guardia::http::Request req;
        req.method(method);
        req.target(target);
        if (!auth.empty()) req.set(bh::field::authorization, auth);
        return req;
    };
    guardia::service::ClientRegistry clients;
    clients.by_token_[token] = guardia::service::Principal{"default", guardia::service::RoleSet::all()};
    auto request_body_limit = [&](const guardia::http::Request& h, const std::string&, std::size_t limit) {
        return guardia::service::request_body_limit(h, clients, limit);
    };
    const std::string artifact = "/api/tasks/SR-1/artifacts/app.war";
    CHECK(request_body_limit(head(bh::verb::put, artifact, "Bearer " + token), token, 1 << 30) ==
          1u << 30);
    CHECK(request_body_limit(head(bh::verb::put, artifact, "bearer  " + token), token, 100) == 100);
    CHECK(request_body_limit(head(bh::verb::put, artifact, ""), token, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::put, artifact, "Bearer x" + token), token, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::post, artifact, "Bearer " + token), token, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::put, "/api/tasks/SR-1/artifacts", "Bearer " + token),
                             token, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::put, "/api/tasks/%2e%2e/artifacts/x",
                                  "Bearer " + token),
                             token, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::put, artifact, "Bearer "), "", 100) == 0);
}
