// Inputs an API caller controls (docs/SECURITY.md, "Inputs from API callers"): key files only
// inside ssh.key_dirs, passwords only for the hosts they are bound to, the path form of staging
// only inside service.drop_dir and without revealing digests, and the import's change summary.
#include "guardia/deploy/credential_store.hpp"
#include "guardia/deploy/engine_config.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/deploy/key_policy.hpp"
#include "guardia/service/inventory_policy.hpp"
#include "guardia/service/service_config.hpp"
#include "guardia/service/staging_policy.hpp"
#include "guardia/service/deploy_service.hpp"

#include "../support/fleet.hpp"
#include "guardia/core/digest.hpp"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>

using namespace guardia;
using namespace guardia::deploy;
using guardia::test::TempDir;

namespace {

void write(const std::string& path, const std::string& data, mode_t mode = 0600) {
    { std::ofstream(path, std::ios::binary) << data; }
    ::chmod(path.c_str(), mode);
}

std::string sha_of(const std::string& data) {
    StreamDigests d;
    d.update(data.data(), data.size());
    std::string sha, md5;
    d.finish(sha, md5);
    return sha;
}

Node node(const std::string& name, const std::string& host) {
    Node n;
    n.name = name;
    n.host = host;
    n.user = "deploy";
    return n;
}

bool has_digest_other_than(const std::string& msg, const std::string& allowed) {
    static const std::regex hex("[0-9a-f]{64}");
    for (auto it = std::sregex_iterator(msg.begin(), msg.end(), hex); it != std::sregex_iterator(); ++it)
        if (it->str() != allowed) return true;
    return false;
}

}  // namespace

TEST_SUITE("key_dirs") {
    TEST_CASE("defaults: the CLI accepts any key, the service only /etc/guardia/keys") {
        CHECK_FALSE(key_dirs_for_cli(std::nullopt).restricted);
        auto s = key_dirs_for_service(std::nullopt);
        CHECK(s.restricted);
        CHECK(s.defaulted);
        CHECK(s.dirs == std::vector<std::string>{"/etc/guardia/keys"});
        auto cfg = key_dirs_for_cli(std::vector<std::string>{"/srv/keys"});
        CHECK(cfg.restricted);
        CHECK_FALSE(cfg.defaulted);
        CHECK(resolve_key_file("/anywhere/key", KeyDirs()).value() == "/anywhere/key");
    }

    TEST_CASE("a key resolves inside a key dir; outside, through a link, or a sibling prefix is refused") {
        TempDir t;
        std::filesystem::create_directories(t.file("keys/sub"));
        std::filesystem::create_directories(t.file("keys-other"));
        std::filesystem::create_directories(t.file("outside"));
        write(t.file("keys/id"), "k");
        write(t.file("keys/sub/id"), "k");
        write(t.file("outside/id"), "k");
        write(t.file("keys-other/id"), "k");
        std::filesystem::create_symlink(t.file("outside/id"), t.file("keys/link"));
        std::filesystem::create_symlink(t.file("outside"), t.file("keys/dirlink"));
        std::filesystem::create_symlink(t.file("keys/id"), t.file("outside/back"));
        KeyDirs d = key_dirs_for_cli(std::vector<std::string>{t.file("keys")});
        CHECK(resolve_key_file(t.file("keys/id"), d).value() == t.file("keys/id"));
        CHECK(resolve_key_file(t.file("keys/sub/id"), d).value() == t.file("keys/sub/id"));
        // a link from outside into the key dir: refused on its text, before the file system is
        // looked at (the key must be named inside a key dir and resolve inside one)
        CHECK_FALSE(resolve_key_file(t.file("outside/back"), d).has_value());
        CHECK(resolve_key_file(t.file("outside/back"), d).error().message.find("resolves") == std::string::npos);
        // not there yet: judged by its directory
        CHECK(resolve_key_file(t.file("keys/new"), d).value() == t.file("keys/new"));
        for (const auto& bad : {t.file("outside/id"), t.file("keys/link"), t.file("keys/dirlink/id"),
                                t.file("keys-other/id"), std::string("/etc/shadow"),
                                t.file("outside/new"), t.file("nowhere/at/all")}) {
            CAPTURE(bad);
            auto r = resolve_key_file(bad, d);
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().code == errc::invalid_argument);
            CHECK(r.error().message.find("'" + bad + "'") != std::string::npos);
            CHECK(r.error().message.find("ssh.key_dirs") != std::string::npos);
            CHECK(r.error().message.find(t.file("keys")) != std::string::npos);
        }
        auto via_link = resolve_key_file(t.file("keys/link"), d);
        CHECK(via_link.error().message.find("resolves to '" + t.file("outside/id") + "'") !=
              std::string::npos);
        // the service's default is named as such, with how to configure it
        auto def = resolve_key_file(t.file("keys/id"), key_dirs_for_service(std::nullopt));
        REQUIRE_FALSE(def.has_value());
        CHECK(def.error().message.find("[/etc/guardia/keys] (the service's default") != std::string::npos);
        CHECK(def.error().message.find("set ssh.key_dirs") != std::string::npos);
        // an empty list admits nothing
        CHECK_FALSE(resolve_key_file(t.file("keys/id"), key_dirs_for_cli(std::vector<std::string>{})).has_value());
    }

    TEST_CASE("ssh.key_dirs in the engine configuration") {
        auto c = parse_engine_config(R"({"ssh": {"key_dirs": ["/etc/guardia/keys/", "/srv/k"]}})", "g.json");
        REQUIRE(c.has_value());
        REQUIRE(c->key_dirs.has_value());
        CHECK(*c->key_dirs == std::vector<std::string>{"/etc/guardia/keys", "/srv/k"});
        CHECK_FALSE(parse_engine_config("{}", "g.json")->key_dirs.has_value());
        auto rel = parse_engine_config(R"({"ssh": {"key_dirs": ["keys"]}})", "g.json");
        REQUIRE_FALSE(rel.has_value());
        CHECK(rel.error().message == "g.json: ssh.key_dirs[0]: must be an absolute path");
        auto notarr = parse_engine_config(R"({"ssh": {"key_dirs": "/k"}})", "g.json");
        REQUIRE_FALSE(notarr.has_value());
        CHECK(notarr.error().message.find("ssh.key_dirs: must be an array") != std::string::npos);
    }
}

TEST_SUITE("credentials bound to hosts") {
    TEST_CASE("host patterns") {
        CHECK(host_matches("10.1.2.3", "10.1.2.3"));
        CHECK_FALSE(host_matches("10.1.2.3", "10.1.2.30"));
        CHECK(host_matches("10.1.2.*", "10.1.2.30"));
        CHECK_FALSE(host_matches("10.1.*", "10.1.2.30"));  // '*' stays within one label
        // a numeric pattern names addresses, never DNS names (found by a review: whoever owns
        // "2.com" would have received the password)
        CHECK_FALSE(host_matches("10.1.2.*", "10.1.2.com"));
        CHECK_FALSE(host_matches("10.1.2.*", "10.1.2.attacker-example"));
        CHECK_FALSE(host_matches("10.1.2.?", "10.1.2.a"));
        CHECK(host_matches("10.1.2.?", "10.1.2.7"));
        CHECK(host_matches("*.web.example.com", "a1.web.example.com"));
        CHECK(host_matches("*.WEB.example.com", "A1.web.EXAMPLE.com"));
        CHECK_FALSE(host_matches("*.web.example.com", "web.example.com"));
        CHECK_FALSE(host_matches("*.web.example.com", "a.b.web.example.com"));
        CHECK_FALSE(host_matches("*.web.example.com", "evil.web.example.com.attacker.net"));
        CHECK(host_matches("web-??.example.com", "web-01.example.com"));
        CHECK_FALSE(host_matches("web-??.example.com", "web-1.example.com"));
        CHECK(host_matches("web-*", "web-01"));
        CHECK_FALSE(host_matches("", "x"));
        CHECK(host_pattern_problem(""));
        CHECK(host_pattern_problem("a b"));
        CHECK_FALSE(host_pattern_problem("*.example.com"));
    }

    TEST_CASE("object form: a password only for its hosts; plain form per policy; never the password in a message") {
        TempDir t;
        const std::string file = t.file("pw.json");
        write(file, R"({"bound": {"password": "s3cret-bound", "hosts": ["10.0.0.*", "db.example.com"]},
                        "plain": "s3cret-plain"})");
        auto store = CredentialStore::open(file);
        REQUIRE(store.has_value());
        auto cli = cli_credential_policy(std::nullopt);
        auto svc = service_credential_policy(std::nullopt);
        Node ok = node("n1", "10.0.0.7");
        ok.auth.password_ref = "bound";
        Node other = node("n2", "127.0.0.2");
        other.auth.password_ref = "bound";
        Node plain = node("n3", "10.0.0.7");
        plain.auth.password_ref = "plain";
        Node missing = node("n4", "10.0.0.7");
        missing.auth.password_ref = "nope";

        CHECK(store.value()->admit(ok, svc).has_value());
        CHECK(store.value()->admit(ok, cli).has_value());
        CHECK(store.value()->admit(plain, cli).has_value());  // the CLI keeps the plain form
        for (const auto& policy : {cli, svc}) {
            auto r = store.value()->admit(other, policy);
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().message.find("node 'n2'") == 0);
            CHECK(r.error().message.find("auth.password_ref") != std::string::npos);
            CHECK(r.error().message.find("'bound'") != std::string::npos);
            CHECK(r.error().message.find("'127.0.0.2'") != std::string::npos);
            CHECK(r.error().message.find("s3cret") == std::string::npos);
        }
        auto unbound = store.value()->admit(plain, svc);
        REQUIRE_FALSE(unbound.has_value());
        CHECK(unbound.error().message.find("'plain' is not bound to any host") != std::string::npos);
        CHECK(unbound.error().message.find("s3cret") == std::string::npos);
        CHECK_FALSE(store.value()->admit(missing, cli).has_value());

        // for_node applies the store's policy: nothing is handed out for a refused node
        store.value()->set_policy(svc);
        CHECK_FALSE(store.value()->for_node(other).has_value());
        CHECK_FALSE(store.value()->for_node(plain).has_value());
        auto c = store.value()->for_node(ok);
        REQUIRE(c.has_value());
        CHECK(c->password->reveal() == "s3cret-bound");
        store.value()->set_policy(cli);
        CHECK(store.value()->for_node(plain).value().password->reveal() == "s3cret-plain");
        CHECK_FALSE(store.value()->for_node(other).has_value());
        // both passwords are redacted from the audit log
        auto secrets = store.value()->secrets();
        CHECK(std::count(secrets.begin(), secrets.end(), "s3cret-bound") == 1);
        CHECK(std::count(secrets.begin(), secrets.end(), "s3cret-plain") == 1);
    }

    TEST_CASE("malformed object entries are refused naming the entry, not the password") {
        TempDir t;
        for (const auto& [text, want] : std::vector<std::pair<std::string, std::string>>{
                 {R"({"x": {"password": "pw-AAA"}})", "\"hosts\" must be a non-empty array"},
                 {R"({"x": {"password": "pw-AAA", "hosts": []}})", "\"hosts\" must be a non-empty array"},
                 {R"({"x": {"password": "pw-AAA", "hosts": [1]}})", "hosts[0] must be a string"},
                 {R"({"x": {"password": "pw-AAA", "hosts": [""]}})", "hosts[0] must not be empty"},
                 {R"({"x": {"hosts": ["h"]}})", "\"password\" must be a string"},
                 {R"({"x": {"password": "pw-AAA", "hosts": ["h"], "note": 1}})", "unknown field 'note'"},
                 {R"({"x": 5})", "must be a string (the password) or"}}) {
            CAPTURE(text);
            write(t.file("pw.json"), text);
            auto r = CredentialStore::open(t.file("pw.json"));
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().message.find("entry 'x'") != std::string::npos);
            CHECK(r.error().message.find(want) != std::string::npos);
            CHECK(r.error().message.find("pw-AAA") == std::string::npos);
        }
    }

    TEST_CASE("a key file outside the policy's key dirs gets no credentials") {
        TempDir t;
        std::filesystem::create_directories(t.file("keys"));
        write(t.file("outside_key"), "not a key");
        auto store = CredentialStore::open("");
        REQUIRE(store.has_value());
        Node n = node("web-01", "10.0.0.1");
        n.auth.key_file = t.file("outside_key");
        store.value()->set_policy(cli_credential_policy(std::vector<std::string>{t.file("keys")}));
        auto r = store.value()->for_node(n);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message.find("node 'web-01': field 'auth.key_file': '" + t.file("outside_key") +
                                     "' outside ssh.key_dirs") == 0);
    }
}

TEST_SUITE("service inventory policy") {
    TEST_CASE("admit_inventory names the source, node and field; key_dirs default fails closed") {
        TempDir t;
        std::filesystem::create_directories(t.file("keys"));
        write(t.file("keys/id"), "k");
        Inventory inv;
        Node a = node("a", "10.0.0.1");
        a.auth.key_file = t.file("keys/id");
        inv.nodes.push_back(a);
        EngineConfig e;
        auto r = service::admit_inventory(inv, e, nullptr, "request body");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message.find("request body: node 'a': field 'auth.key_file'") == 0);
        CHECK(r.error().message.find("/etc/guardia/keys") != std::string::npos);
        e.key_dirs = std::vector<std::string>{t.file("keys")};
        CHECK(service::admit_inventory(inv, e, nullptr, "request body").has_value());
        Node b = node("b", "10.0.0.2");
        b.auth.password_ref = "pw";
        inv.nodes.push_back(b);
        auto nopw = service::admit_inventory(inv, e, nullptr, "request body");
        REQUIRE_FALSE(nopw.has_value());
        CHECK(nopw.error().message.find("request body: node 'b': field 'auth.password_ref': 'pw'") == 0);
    }

    TEST_CASE("admit_inventory takes only the tiers the rollout configuration runs") {
        TempDir t;
        std::filesystem::create_directories(t.file("keys"));
        write(t.file("keys/id"), "k");
        Inventory inv;
        Node a = node("a", "10.0.0.1");
        a.auth.key_file = t.file("keys/id");
        a.tier = 7;
        inv.nodes.push_back(a);
        EngineConfig e;  // tiers 1, 2, 3
        e.key_dirs = std::vector<std::string>{t.file("keys")};
        auto r = service::admit_inventory(inv, e, nullptr, "request body");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message ==
              "request body: node 'a': field 'tier': tier 7 is not in the service's rollout "
              "configuration (rollout.tiers)");
        e.rollout.tiers.push_back(deploy::TierPolicy(7, 10, deploy::WindowMode::sliding, false));
        CHECK(service::admit_inventory(inv, e, nullptr, "request body").has_value());
    }

    TEST_CASE("the import's change summary") {
        namespace json = boost::json;
        std::vector<store::InventoryNodeRecord> stored(3);
        stored[0].name = "same";
        stored[0].payload = R"({"name":"same","host":"h1","tier":2,"auth":{"key_file":"/k"}})";
        stored[1].name = "moved";
        stored[1].payload = R"({"name":"moved","host":"h2","tier":2,"auth":{"key_file":"/k"},"ssh_port":22})";
        stored[2].name = "untouched";
        stored[2].payload = R"({"name":"untouched"})";
        auto imported = json::parse(R"([
            {"name":"same","host":"h1","tier":2,"auth":{"key_file":"/k"}},
            {"name":"moved","host":"evil","tier":2,"auth":{"password_ref":"pw"}},
            {"name":"new","host":"h3"}])").as_array();
        auto c = service::diff_inventory(stored, imported);
        CHECK(c.added == std::vector<std::string>{"new"});
        CHECK(c.unchanged == std::vector<std::string>{"same"});
        REQUIRE(c.changed.size() == 1);
        CHECK(c.changed[0].first == "moved");
        CHECK(c.changed[0].second ==
              std::vector<std::string>{"auth.key_file", "auth.password_ref", "host", "ssh_port"});
        CHECK(json::serialize(service::changes_json(c)) ==
              R"({"added":["new"],"changed":[{"name":"moved","fields":["auth.key_file","auth.password_ref","host","ssh_port"]}],"unchanged":["same"]})");
        CHECK(service::changes_summary(c) ==
              "added 1 (new); changed 1 (moved: auth.key_file, auth.password_ref, host, ssh_port); "
              "unchanged 1 (same)");
        service::InventoryChanges many;
        for (int i = 0; i < 5; ++i) {  // appended: "n" + std::to_string is GCC bug 105329 at -O3
            many.added.emplace_back("n");
            many.added.back() += std::to_string(i);
        }
        CHECK(service::changes_summary(many, 2) == "added 5 (n0, n1, and 3 more); changed 0; unchanged 0");
    }
}

TEST_SUITE("path form: drop_dir") {
    struct Drop {
        TempDir t;
        std::string drop = t.file("drop");
        std::string out = t.file("staged");
        Drop() {
            std::filesystem::create_directories(drop + "/sub");
            write(t.file("secret"), "the service's secret\n");
        }
        Result<std::int64_t> copy(const std::string& path, const std::string& sha,
                                  std::uint64_t max = 1 << 20) {
            std::filesystem::remove(out);
            return service::copy_from_drop_dir(drop, path, max, sha, out);
        }
    };

    TEST_CASE("a regular file inside drop_dir is copied with its mode, after its sha256 is checked") {
        Drop d;
        write(d.drop + "/sub/app.jar", "build 1\n", 0640);
        auto r = d.copy(d.drop + "/sub/app.jar", sha_of("build 1\n"));
        REQUIRE(r.has_value());
        CHECK(*r == 8);
        std::ifstream in(d.out);
        CHECK(std::string(std::istreambuf_iterator<char>(in), {}) == "build 1\n");
        struct stat st {};
        REQUIRE(::stat(d.out.c_str(), &st) == 0);
        CHECK((st.st_mode & 0777) == 0640);
        // drop_dir given with a trailing slash
        std::filesystem::remove(d.out);
        CHECK(service::copy_from_drop_dir(d.drop + "/", d.drop + "/sub/app.jar", 100, sha_of("build 1\n"), d.out).has_value());
    }

    TEST_CASE("refusals: disabled, outside, traversal, links, special files, hard links, size; no digest told") {
        Drop d;
        const std::string secret_sha = sha_of("the service's secret\n");
        std::filesystem::create_symlink(d.t.file("secret"), d.drop + "/link");
        std::filesystem::create_symlink("../secret", d.drop + "/rel-link");
        std::filesystem::create_symlink(d.t.path(), d.drop + "/dir-link");
        std::filesystem::create_hard_link(d.t.file("secret"), d.drop + "/hard");
        REQUIRE(::mkfifo((d.drop + "/fifo").c_str(), 0600) == 0);
        write(d.drop + "/big", std::string(2000, 'x'));
        using service::staging_errc;
        struct Case {
            std::string path;
            staging_errc want;
        };
        const std::vector<Case> cases{
            {d.t.file("secret"), staging_errc::refused},
            {"/etc/shadow", staging_errc::refused},
            {d.drop, staging_errc::refused},
            {d.drop + "/", staging_errc::refused},
            {d.drop + "/../secret", staging_errc::refused},
            {d.drop + "/sub/../../secret", staging_errc::refused},
            {d.drop + "//sub", staging_errc::refused},
            {d.drop + "-sibling/x", staging_errc::refused},
            {d.drop + "/link", staging_errc::refused},
            {d.drop + "/rel-link", staging_errc::refused},
            {d.drop + "/dir-link/secret", staging_errc::refused},
            {d.drop + "/hard", staging_errc::refused},
            {d.drop + "/fifo", staging_errc::refused},
            {d.drop + "/sub", staging_errc::refused},
            {d.drop + "/missing", staging_errc::not_found},
            {d.drop + "/big", staging_errc::too_large},
        };
        for (const auto& c : cases) {
            CAPTURE(c.path);
            auto r = d.copy(c.path, secret_sha, 1000);
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().code == boost::system::error_code(static_cast<int>(c.want), service::staging_category()));
            CHECK(r.error().message.rfind("path: ", 0) == 0);
            CHECK_FALSE(has_digest_other_than(r.error().message, secret_sha));
        }
        auto off = service::copy_from_drop_dir("", d.t.file("secret"), 1000, secret_sha, d.out);
        REQUIRE_FALSE(off.has_value());
        CHECK(off.error().code == boost::system::error_code(static_cast<int>(staging_errc::disabled),
                                                            service::staging_category()));
        CHECK(off.error().message.find("set service.drop_dir") != std::string::npos);
        CHECK_FALSE(std::filesystem::exists(d.out));
    }

    TEST_CASE("a mismatch says so without the digest; the answers") {
        Drop d;
        write(d.drop + "/app.jar", "build 2\n");
        const std::string claimed(64, 'a');
        auto r = d.copy(d.drop + "/app.jar", claimed);
        REQUIRE_FALSE(r.has_value());
        CHECK_FALSE(has_digest_other_than(r.error().message, claimed));
        CHECK(r.error().message.find("does not match") != std::string::npos);
        // the HTTP answer a staging failure gets: its service error through the one mapping
        auto answer = [](const Error& e) {
            const auto se = service::staging_failure(e);
            struct {
                unsigned status;
                std::string code;
            } out{static_cast<unsigned>(service::http_status(se.code)),
                  std::string(service::to_string(se.code))};
            return out;
        };
        auto a = answer(r.error());
        CHECK(a.status == 422);
        CHECK(a.code == "checksum_mismatch");
        using service::staging_errc;
        CHECK(answer(service::staging_error(staging_errc::disabled, "x")).status == 403);
        CHECK(answer(service::staging_error(staging_errc::disabled, "x")).code ==
              "path_form_disabled");
        CHECK(answer(service::staging_error(staging_errc::refused, "x")).code ==
              "path_refused");
        CHECK(answer(service::staging_error(staging_errc::not_found, "x")).status == 400);
        CHECK(answer(service::staging_error(staging_errc::too_large, "x")).status == 413);
        CHECK(answer(Error(errc::local_io_failed, "disk full")).status == 500);
        CHECK(answer(Error(errc::local_io_failed, "path: x")).status == 400);
    }

    TEST_CASE("service.drop_dir in the configuration") {
        namespace json = boost::json;
        auto c = service::parse_service_config(json::parse(R"({"token_file": "/t", "drop_dir": "/srv/drop"})"), "g.json");
        REQUIRE(c.has_value());
        CHECK(c->drop_dir == "/srv/drop");
        CHECK(service::parse_service_config(json::parse(R"({"token_file": "/t"})"), "g.json")->drop_dir.empty());
        auto rel = service::parse_service_config(json::parse(R"({"token_file": "/t", "drop_dir": "drop"})"), "g.json");
        REQUIRE_FALSE(rel.has_value());
        CHECK(rel.error().message == "g.json: service.drop_dir: must be an absolute path");
    }
}
