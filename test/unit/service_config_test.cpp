#include "guardia/service/service_config.hpp"
#include "guardia/core/digest.hpp"
#include "guardia/deploy/engine_config.hpp"
#include "guardia/service/notifier.hpp"

#include <doctest/doctest.h>
#include <boost/json/parse.hpp>

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

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

TEST_CASE("config paths: a control character is refused, naming the field") {
    // found by test/fuzz/fuzz_config.cpp (a DEL inside ssh.known_hosts reached an error raw)
    CHECK(error_of(R"({"token_file": "/etc/guardia/api\u007ftoken"})") ==
          "guardia.json: service.token_file: must not hold control characters");
    CHECK(error_of(R"({"token_file": "/etc/guardia/t", "state_dir": "/var/lib/\u0001x"})")
              .find("service.state_dir: must not hold control characters") != std::string::npos);
}

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
    const auto root = std::filesystem::path(GUARDIA_SOURCE_ROOT);
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


TEST_CASE("service: the large artifact body limit only for an artifact PUT by a submitter") {
    namespace bh = boost::beast::http;
    using guardia::service::ClientRegistry;
    using guardia::service::ClientSpec;
    using guardia::service::Role;
    const std::string token = "0123456789abcdef-token";
    const std::string reader = "0123456789abcdef-reader";
    guardia::service::ServiceConfig sc;
    ClientSpec ci;
    ci.name = "ci";
    ci.token_sha256 = guardia::sha256_hex(token);
    ci.roles.add(Role::submit);
    ClientSpec ro;
    ro.name = "ro";
    ro.token_sha256 = guardia::sha256_hex(reader);
    ro.roles.add(Role::read);
    ro.roles.add(Role::operate);
    sc.clients = {ci, ro};
    auto reg = ClientRegistry::load(sc);
    REQUIRE(reg.has_value());
    auto head = [&](bh::verb method, const std::string& target, const std::string& auth) {
        guardia::http::Request req;
        req.method(method);
        req.target(target);
        if (!auth.empty()) req.set(bh::field::authorization, auth);
        return req;
    };
    using guardia::service::request_body_limit;
    const std::string artifact = "/api/tasks/SR-1/artifacts/app.war";
    CHECK(request_body_limit(head(bh::verb::put, artifact, "Bearer " + token), *reg, 1 << 30) ==
          1u << 30);
    CHECK(request_body_limit(head(bh::verb::put, artifact, "bearer  " + token), *reg, 100) == 100);
    CHECK(request_body_limit(head(bh::verb::put, artifact, "Bearer " + reader), *reg, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::put, artifact, ""), *reg, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::put, artifact, "Bearer x" + token), *reg, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::post, artifact, "Bearer " + token), *reg, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::put, "/api/tasks/SR-1/artifacts", "Bearer " + token),
                             *reg, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::put, "/api/tasks/%2e%2e/artifacts/x",
                                  "Bearer " + token),
                             *reg, 100) == 0);
    CHECK(request_body_limit(head(bh::verb::put, artifact, "Bearer "), *reg, 100) == 0);
    // The console's session path is admitted without credentials: a small body for every
    // method, so that an anonymous client never gets max_body_bytes buffered there.
    for (auto m : {bh::verb::post, bh::verb::delete_, bh::verb::get, bh::verb::put, bh::verb::patch})
        CHECK(request_body_limit(head(m, "/ui/session", ""), *reg, 1 << 30) ==
              guardia::service::ui_session_body_limit);
}

TEST_CASE("service config: clients, transport and connection settings") {
    auto c = parse(R"({"clients": [
        {"name": "ci", "token_sha256": "0000000000000000000000000000000000000000000000000000000000000000",
         "roles": ["submit", "read"]},
        {"name": "pm.portal_1", "token_file": "/etc/guardia/pm-token", "roles": ["validate"]}],
        "idle_timeout_s": 2.5, "max_connections_per_address": 8, "four_eyes": false,
        "drop_dir": "/srv/drop", "allow_plaintext": false})");
    REQUIRE_MESSAGE(c.has_value(), (c ? "" : c.error().message));
    CHECK(c->token_file.empty());
    REQUIRE(c->clients.size() == 2);
    CHECK(c->clients[0].name == "ci");
    CHECK(c->clients[0].roles.names() == std::vector<std::string_view>{"submit", "read"});
    CHECK(c->clients[1].token_file == "/etc/guardia/pm-token");
    CHECK(c->clients[1].roles.has(guardia::service::Role::validate));
    CHECK(c->idle_timeout.count() == 2500);
    CHECK(c->max_connections_per_address == 8);
    CHECK_FALSE(c->four_eyes);
    CHECK(c->drop_dir == "/srv/drop");

    auto d = parse(R"({"token_file": "/t"})");
    REQUIRE(d.has_value());
    CHECK(d->clients.empty());
    CHECK(d->four_eyes);
    CHECK_FALSE(d->allow_plaintext);
    CHECK(d->idle_timeout.count() == 5000);
    CHECK(d->max_connections_per_address == 32);
    CHECK(d->drop_dir.empty());

    const std::string h = R"("token_sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")";
    CHECK(error_of(R"({"clients": [{"name": "a", )" + h + R"(, "roles": ["read"]},
                                  {"name": "b", )" + h + R"(, "roles": ["read"]},
                                  {"name": "c", )" + h + R"(, "roles": ["deploy"]}]})") ==
          "guardia.json: service.clients[2].roles[0]: unknown role \"deploy\" (submit, validate, "
          "operate, admin, read)");
    CHECK(error_of(R"({"clients": [{"name": "a", )" + h + R"(, "roles": ["read"]},
                                  {"name": "a", )" + h + R"(, "roles": ["read"]}]})") ==
          "guardia.json: service.clients[1].name: duplicate client name \"a\"");
    CHECK(error_of(R"({"clients": [{"name": "a", )" + h + R"(, "token_file": "/t", "roles": ["read"]}]})") ==
          "guardia.json: service.clients[0]: needs exactly one of token_sha256 and token_file");
    CHECK(error_of(R"({"clients": [{"name": "a", "roles": ["read"]}]})") ==
          "guardia.json: service.clients[0]: needs exactly one of token_sha256 and token_file");
    CHECK(error_of(R"({"clients": [{"name": "a", "token_sha256": "ABC", "roles": ["read"]}]})")
              .find("service.clients[0].token_sha256: must be 64 lower-case hex") != std::string::npos);
    CHECK(error_of(R"({"clients": [{"name": "a/b", )" + h + R"(, "roles": ["read"]}]})")
              .find("service.clients[0].name: must be 1-64") != std::string::npos);
    CHECK(error_of(R"({"clients": [{"name": "a", )" + h + R"(, "roles": []}]})")
              .find("service.clients[0].roles: must be a non-empty") != std::string::npos);
    CHECK(error_of(R"({"clients": [{"name": "a", )" + h + R"(}]})")
              .find("service.clients[0].roles: is required") != std::string::npos);
    CHECK(error_of(R"({"clients": [{"name": "a", )" + h + R"(, "roles": ["read"], "x": 1}]})") ==
          "guardia.json: service.clients[0].x: unknown field");
    CHECK(error_of(R"({"clients": {}})").find("service.clients: must be an array") != std::string::npos);
    CHECK(error_of(R"({"clients": []})").find("service.token_file: is required") != std::string::npos);
    CHECK(error_of(R"({"token_file": "/t", "drop_dir": "srv"})") ==
          "guardia.json: service.drop_dir: must be an absolute path");

    // plain HTTP off loopback needs allow_plaintext (or TLS)
    for (const char* addr : {"0.0.0.0", "10.0.0.1", "::", "fe80::1", "192.168.1.1"}) {
        const std::string text = std::string(R"({"token_file": "/t", "listen_address": ")") + addr + "\"}";
        CAPTURE(addr);
        CHECK(error_of(text).find("guardia.json: service.listen_address: plain HTTP") == 0);
        CHECK(error_of(text).find("allow_plaintext") != std::string::npos);
        auto ok = parse(std::string(R"({"token_file": "/t", "allow_plaintext": true, "listen_address": ")") +
                        addr + "\"}");
        CHECK(ok.has_value());
        auto tls = parse(std::string(R"({"token_file": "/t", "tls": {"cert_file": "/c", "key_file": "/k"},
                                         "listen_address": ")") + addr + "\"}");
        CHECK(tls.has_value());
    }
    for (const char* addr : {"127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"}) {
        CAPTURE(addr);
        CHECK(parse(std::string(R"({"token_file": "/t", "listen_address": ")") + addr + "\"}").has_value());
    }
    CHECK_FALSE(guardia::service::is_loopback_address("localhost"));  // numeric only
}

TEST_CASE("service.public_url: the console links' base; validated; derived when absent") {
    using guardia::service::console_base_url;
    auto p = parse(R"({"token_file": "/t", "public_url": "https://guardia.example.com/ops/"})");
    REQUIRE(p.has_value());
    CHECK(p->public_url == "https://guardia.example.com/ops");  // trailing slash dropped
    CHECK(console_base_url(*p, 8080) == "https://guardia.example.com/ops");

    auto d = parse(R"({"token_file": "/t", "port": 0})");
    REQUIRE(d.has_value());
    CHECK(d->public_url.empty());
    CHECK(console_base_url(*d, 41234) == "http://127.0.0.1:41234");
    auto v6 = parse(R"({"token_file": "/t", "listen_address": "::1",
                        "tls": {"cert_file": "/c.pem", "key_file": "/k.pem"}})");
    REQUIRE(v6.has_value());
    CHECK(console_base_url(*v6, 8443) == "https://[::1]:8443");

    CHECK(error_of(R"({"token_file": "/t", "public_url": "ftp://h/"})") ==
          "guardia.json: service.public_url: must be an http:// or https:// URL");
    CHECK(error_of(R"({"token_file": "/t", "public_url": "https://u:pw@h/"})") ==
          "guardia.json: service.public_url: must not hold credentials");
    CHECK(error_of(R"({"token_file": "/t", "public_url": "https:///x"})") ==
          "guardia.json: service.public_url: has no host");
    CHECK(error_of(R"({"token_file": "/t", "public_url": "https://h/a b"})") ==
          "guardia.json: service.public_url: must not hold spaces or control characters");
    CHECK(error_of(R"({"token_file": "/t", "public_url": 8080})") ==
          "guardia.json: service.public_url: must be a string");
    CHECK(error_of(R"({"token_file": "/t", "public_url": "https://h/x?a=1"})") ==
          "guardia.json: service.public_url: must not hold a query or a fragment");
}

TEST_SUITE_END();
