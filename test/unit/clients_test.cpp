// Principals of the service API: roles, the registry built from service.clients and the legacy
// token file, authentication by token digest.
#include "guardia/service/clients.hpp"

#include "guardia/core/digest.hpp"
#include "guardia/service/service_config.hpp"

#include <doctest/doctest.h>

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

using namespace guardia::service;
namespace bh = boost::beast::http;

namespace {

struct TokenDir {
    TokenDir() {
        char tmpl[] = "/tmp/guardia-clients-test-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        dir = tmpl;
    }
    ~TokenDir() { std::filesystem::remove_all(dir); }
    std::string file(const std::string& name, const std::string& text, mode_t mode = 0600) {
        const std::string path = dir + "/" + name;
        std::ofstream(path, std::ios::trunc) << text;
        ::chmod(path.c_str(), mode);
        return path;
    }
    std::string dir;
};

ClientSpec spec(const std::string& name, std::initializer_list<Role> roles,
                const std::string& digest = "", const std::string& file = "") {
    ClientSpec c;
    c.name = name;
    c.token_sha256 = digest;
    c.token_file = file;
    for (Role r : roles) c.roles.add(r);
    return c;
}

guardia::http::Request with_auth(const std::string& value) {
    guardia::http::Request req;
    req.method(bh::verb::get);
    req.target("/api/inventory");
    if (!value.empty()) req.set(bh::field::authorization, value);
    return req;
}

std::string load_error(const ServiceConfig& c) {
    auto r = ClientRegistry::load(c);
    REQUIRE_FALSE(r.has_value());
    return r.error().message;
}

}  // namespace

TEST_CASE("clients: role names round-trip, RoleSet is a small value") {
    for (Role r : {Role::submit, Role::validate, Role::operate, Role::admin, Role::read})
        CHECK(parse_role(to_string(r)) == r);
    CHECK(to_string(Role::admin) == "admin");
    CHECK_FALSE(parse_role("deploy").has_value());
    CHECK_FALSE(parse_role("Submit").has_value());
    CHECK_FALSE(parse_role("").has_value());
    RoleSet s;
    CHECK(s.names().empty());
    CHECK_FALSE(s.has(Role::read));
    s.add(Role::read);
    s.add(Role::submit);
    s.add(Role::read);
    CHECK(s.has(Role::read));
    CHECK(s.has(Role::submit));
    CHECK_FALSE(s.has(Role::admin));
    CHECK(s.names() == std::vector<std::string_view>{"submit", "read"});
    CHECK(RoleSet::all().names() ==
          std::vector<std::string_view>{"submit", "validate", "operate", "admin", "read"});
    RoleSet t;
    t.add(Role::submit);
    CHECK_FALSE(s == t);
    t.add(Role::read);
    CHECK(s == t);
}

TEST_CASE("clients: registry from digests, token files and the legacy token") {
    TokenDir d;
    const std::string ci = "ci-token-0123456789abcdef";
    const std::string pm = "pm-token-0123456789abcdef";
    const std::string legacy = "legacy-token-0123456789";
    ServiceConfig c;
    c.clients.push_back(spec("ci", {Role::submit}, guardia::sha256_hex(ci)));
    c.clients.push_back(spec("pm", {Role::validate, Role::read}, "", d.file("pm", pm + "\n")));
    c.token_file = d.file("legacy", legacy + "\nignored\n");
    auto reg = ClientRegistry::load(c);
    REQUIRE_MESSAGE(reg.has_value(), (reg ? "" : reg.error().message));
    CHECK(reg->size() == 3);

    const Principal* p = reg->authenticate(ci);
    REQUIRE(p != nullptr);
    CHECK(p->name == "ci");
    CHECK(p->roles.names() == std::vector<std::string_view>{"submit"});
    p = reg->authenticate(with_auth("Bearer " + pm));
    REQUIRE(p != nullptr);
    CHECK(p->name == "pm");
    CHECK(p->roles.has(Role::validate));
    p = reg->authenticate(with_auth("bearer   " + legacy + "  "));
    REQUIRE(p != nullptr);
    CHECK(p->name == "default");
    CHECK(p->roles == RoleSet::all());

    CHECK(reg->authenticate("") == nullptr);
    CHECK(reg->authenticate(ci + "x") == nullptr);
    CHECK(reg->authenticate(guardia::sha256_hex(ci)) == nullptr);  // the digest is no token
    CHECK(reg->authenticate(with_auth("")) == nullptr);
    CHECK(reg->authenticate(with_auth("Bearer ")) == nullptr);
    CHECK(reg->authenticate(with_auth("Basic " + ci)) == nullptr);
    CHECK(reg->authenticate(with_auth("Bearer" + ci)) == nullptr);
    CHECK(reg->authenticate(with_auth(ci)) == nullptr);

    // only the legacy token: one client, every role
    ServiceConfig only;
    only.token_file = c.token_file;
    auto one = ClientRegistry::load(only);
    REQUIRE(one.has_value());
    CHECK(one->size() == 1);
    CHECK(one->authenticate(legacy)->roles == RoleSet::all());
}

TEST_CASE("clients: load errors name the field") {
    TokenDir d;
    ServiceConfig none;
    none.source = "guardia.json";
    CHECK(load_error(none).find("guardia.json: service.clients: no client") == 0);

    const std::string t = "same-token-0123456789abcdef";
    ServiceConfig dup;
    dup.clients.push_back(spec("a", {Role::read}, guardia::sha256_hex(t)));
    dup.clients.push_back(spec("b", {Role::read}, "", d.file("b", t + "\n")));
    CHECK(load_error(dup).find("service.clients[1].token_file: the same token as "
                               "service.clients[0].token_sha256") == 0);

    ServiceConfig legacy_dup;
    legacy_dup.clients.push_back(spec("a", {Role::read}, guardia::sha256_hex(t)));
    legacy_dup.token_file = d.file("legacy", t + "\n");
    CHECK(load_error(legacy_dup).find("service.token_file: the same token as") == 0);

    ServiceConfig names;
    names.clients.push_back(spec("a", {Role::read}, guardia::sha256_hex("x-0123456789abcdef")));
    names.clients.push_back(spec("a", {Role::read}, guardia::sha256_hex("y-0123456789abcdef")));
    CHECK(load_error(names).find("service.clients[1].name: duplicate") == 0);

    ServiceConfig open_file;
    open_file.clients.push_back(spec("a", {Role::read}, "", d.file("open", t + "\n", 0644)));
    CHECK(load_error(open_file).find("service.clients[0].token_file:") == 0);
    CHECK(load_error(open_file).find("chmod 600") != std::string::npos);

    ServiceConfig short_file;
    short_file.clients.push_back(spec("a", {Role::read}, "", d.file("short", "short\n")));
    CHECK(load_error(short_file).find("at least 16") != std::string::npos);

    ServiceConfig no_roles;
    no_roles.clients.push_back(spec("a", {}, guardia::sha256_hex(t)));
    CHECK(load_error(no_roles).find("service.clients[0].roles") == 0);

    ServiceConfig taken;
    taken.clients.push_back(spec("default", {Role::read}, guardia::sha256_hex(t)));
    taken.token_file = d.file("legacy2", "another-token-0123456789\n");
    CHECK(load_error(taken).find("\"default\"") != std::string::npos);
}

TEST_CASE("clients: the 401 answer") {
    auto r = unauthorized_response(with_auth(""));
    CHECK(r.result() == bh::status::unauthorized);
    CHECK(std::string(r[bh::field::www_authenticate]).rfind("Bearer", 0) == 0);
    CHECK(r.body().find("\"unauthorized\"") != std::string::npos);
}
