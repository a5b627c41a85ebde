#include "guardia/deploy/inventory.hpp"

#include <doctest/doctest.h>
#include <boost/json.hpp>

#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <string>

using namespace guardia;
using namespace guardia::deploy;
namespace json = boost::json;

namespace {

// The example of the project's specification.
constexpr std::string_view design_example = R"({ "nodes": [ {
    "name": "web-01", "host": "10.1.2.3", "ssh_port": 22, "user": "deploy",
    "auth": { "key_file": "/etc/guardia/keys/id_ed25519" },
    "deploy_path": "/app/webapps", "tier": 1,
    "inst_id": "INST-001", "system_name": "billing",
    "requires_restart": true,
    "shutdown_cmd": "sh /app/scripts/shutdown.sh",
    "startup_cmd": "sh /app/scripts/startup.sh",
    "health": { "port": 8080, "path": "/", "timeout_s": 30, "interval_s": 2 }
} ] })";

json::object example_node() {
    return json::parse(design_example).as_object()["nodes"].as_array()[0].as_object();
}

std::string document(const json::array& nodes) {
    json::object root;
    root["nodes"] = nodes;
    return json::serialize(root);
}

Result<Inventory> parse_nodes(const json::array& nodes) {
    return parse_inventory(document(nodes), "nodes.json");
}

std::string error_of(const Result<Inventory>& r) {
    REQUIRE_FALSE(r.has_value());
    return r.error().message;
}

std::filesystem::path source_root() {
    return std::filesystem::path(GUARDIA_SOURCE_ROOT);
}

struct RuleCase {
    const char* what;
    void (*mutate)(json::object&);
    const char* expect;  // the message must contain this: node, field and problem
};

// One failing case per rule; each message must name the node and the field.
const RuleCase rule_cases[] = {
    {"name missing", [](json::object& n) { n.erase("name"); },
     "nodes.json: nodes[0]: field 'name': is required"},
    {"name with a space", [](json::object& n) { n["name"] = "web 01"; },
     "nodes.json: nodes[0]: field 'name': must be 1-64 characters"},
    {"name too long", [](json::object& n) { n["name"] = std::string(65, 'a'); },
     "nodes[0]: field 'name': must be 1-64"},
    {"name not a string", [](json::object& n) { n["name"] = 7; },
     "nodes[0]: field 'name': must be a string"},
    {"host missing", [](json::object& n) { n.erase("host"); },
     "node 'web-01': field 'host': is required"},
    {"host empty", [](json::object& n) { n["host"] = ""; },
     "node 'web-01': field 'host': must not be empty"},
    {"host option", [](json::object& n) { n["host"] = "-oProxyCommand=x"; },
     "node 'web-01': field 'host': must not start with '-'"},
    {"host whitespace", [](json::object& n) { n["host"] = "10.1.2.3 x"; },
     "node 'web-01': field 'host': must not contain whitespace"},
    {"host NUL", [](json::object& n) { n["host"] = std::string("a\0b", 3); },
     "node 'web-01': field 'host': must not contain whitespace or control"},
    {"ssh_port 0", [](json::object& n) { n["ssh_port"] = 0; },
     "node 'web-01': field 'ssh_port': must be an integer from 1 to 65535"},
    {"ssh_port 65536", [](json::object& n) { n["ssh_port"] = 65536; },
     "node 'web-01': field 'ssh_port': must be an integer from 1 to 65535"},
    {"ssh_port string", [](json::object& n) { n["ssh_port"] = "22"; },
     "node 'web-01': field 'ssh_port': must be an integer"},
    {"ssh_port fraction", [](json::object& n) { n["ssh_port"] = 22.5; },
     "node 'web-01': field 'ssh_port': must be an integer"},
    {"user missing", [](json::object& n) { n.erase("user"); },
     "node 'web-01': field 'user': is required"},
    {"user option", [](json::object& n) { n["user"] = "-root"; },
     "node 'web-01': field 'user': must not start with '-'"},
    {"user shell chars", [](json::object& n) { n["user"] = "de;ploy"; },
     "node 'web-01': field 'user': must be 1-32 characters"},
    {"auth missing", [](json::object& n) { n.erase("auth"); },
     "node 'web-01': field 'auth': is required"},
    {"auth empty", [](json::object& n) { n["auth"] = json::object(); },
     "node 'web-01': field 'auth': must hold exactly one of"},
    {"auth two methods",
     [](json::object& n) {
         n["auth"] = {{"key_file", "/k"}, {"agent", true}};
     },
     "node 'web-01': field 'auth': must hold exactly one of"},
    {"auth not an object", [](json::object& n) { n["auth"] = "agent"; },
     "node 'web-01': field 'auth': must be an object"},
    {"auth agent false",
     [](json::object& n) {
         n["auth"] = {{"agent", false}};
     },
     "node 'web-01': field 'auth.agent': must be true"},
    {"auth relative key",
     [](json::object& n) {
         n["auth"] = {{"key_file", "keys/id"}};
     },
     "node 'web-01': field 'auth.key_file': must be an absolute path"},
    {"auth empty password_ref",
     [](json::object& n) {
         n["auth"] = {{"password_ref", ""}};
     },
     "node 'web-01': field 'auth.password_ref': must not be empty"},
    {"auth unknown field",
     [](json::object& n) {
         n["auth"] = {{"key_file", "/k"}, {"passphrase", "x"}};
     },
     "node 'web-01': unknown field 'auth.passphrase'"},
    {"deploy_path missing", [](json::object& n) { n.erase("deploy_path"); },
     "node 'web-01': field 'deploy_path': is required"},
    {"deploy_path relative", [](json::object& n) { n["deploy_path"] = "app/webapps"; },
     "node 'web-01': field 'deploy_path': must be an absolute path"},
    {"deploy_path option", [](json::object& n) { n["deploy_path"] = "-rf"; },
     "node 'web-01': field 'deploy_path': must not start with '-'"},
    {"deploy_path dotdot", [](json::object& n) { n["deploy_path"] = "/app/../etc"; },
     "node 'web-01': field 'deploy_path': must be normalised (no '.' or '..' components)"},
    {"deploy_path dot", [](json::object& n) { n["deploy_path"] = "/app/./x"; },
     "field 'deploy_path': must be normalised"},
    {"deploy_path double slash", [](json::object& n) { n["deploy_path"] = "/app//x"; },
     "node 'web-01': field 'deploy_path': must be normalised (no '//')"},
    {"deploy_path trailing slash", [](json::object& n) { n["deploy_path"] = "/app/x/"; },
     "node 'web-01': field 'deploy_path': must be normalised (no trailing '/')"},
    {"deploy_path root", [](json::object& n) { n["deploy_path"] = "/"; },
     "node 'web-01': field 'deploy_path': must not be '/' or a top-level system directory"},
    {"deploy_path system dir", [](json::object& n) { n["deploy_path"] = "/etc"; },
     "node 'web-01': field 'deploy_path': must not be '/' or a top-level system directory "
     "('/etc')"},
    {"deploy_path newline", [](json::object& n) { n["deploy_path"] = "/app/x\ny"; },
     "node 'web-01': field 'deploy_path': must not contain control characters"},
    {"tier 0", [](json::object& n) { n["tier"] = 0; },
     "node 'web-01': field 'tier': must be an integer from 1 to 99"},
    {"tier 100", [](json::object& n) { n["tier"] = 100; },
     "node 'web-01': field 'tier': must be an integer from 1 to 99"},
    {"inst_id control", [](json::object& n) { n["inst_id"] = "INST\n1"; },
     "node 'web-01': field 'inst_id': must not contain control characters"},
    {"system_name too long", [](json::object& n) { n["system_name"] = std::string(129, 's'); },
     "node 'web-01': field 'system_name': must be at most 128 characters"},
    {"requires_restart string", [](json::object& n) { n["requires_restart"] = "yes"; },
     "node 'web-01': field 'requires_restart': must be true or false"},
    {"shutdown_cmd newline", [](json::object& n) { n["shutdown_cmd"] = "sh a.sh\nrm x"; },
     "node 'web-01': field 'shutdown_cmd': must not contain NUL or newline"},
    {"startup_cmd NUL", [](json::object& n) { n["startup_cmd"] = std::string("sh a\0b", 6); },
     "node 'web-01': field 'startup_cmd': must not contain NUL or newline"},
    {"shutdown_cmd missing", [](json::object& n) { n.erase("shutdown_cmd"); },
     "node 'web-01': field 'shutdown_cmd': must be a non-empty command when requires_restart"},
    {"startup_cmd empty", [](json::object& n) { n["startup_cmd"] = ""; },
     "node 'web-01': field 'startup_cmd': must be a non-empty command when requires_restart"},
    {"health missing", [](json::object& n) { n.erase("health"); },
     "node 'web-01': field 'health': is required"},
    {"health.port missing", [](json::object& n) { n["health"].as_object().erase("port"); },
     "node 'web-01': field 'health.port': is required"},
    {"health.port range", [](json::object& n) { n["health"].as_object()["port"] = 70000; },
     "node 'web-01': field 'health.port': must be an integer from 1 to 65535"},
    {"health.path relative", [](json::object& n) { n["health"].as_object()["path"] = "status"; },
     "node 'web-01': field 'health.path': must start with '/'"},
    {"health.path space", [](json::object& n) { n["health"].as_object()["path"] = "/a b"; },
     "node 'web-01': field 'health.path': must be printable ASCII without spaces"},
    {"health.timeout_s 0", [](json::object& n) { n["health"].as_object()["timeout_s"] = 0; },
     "node 'web-01': field 'health.timeout_s': must be an integer from 1 to 3600"},
    {"health.interval_s 0", [](json::object& n) { n["health"].as_object()["interval_s"] = 0; },
     "node 'web-01': field 'health.interval_s': must be an integer from 1 to 3600"},
    {"health.interval_s > timeout_s",
     [](json::object& n) { n["health"].as_object()["interval_s"] = 31; },
     "node 'web-01': field 'health.interval_s': must not exceed timeout_s (30)"},
    {"health unknown field", [](json::object& n) { n["health"].as_object()["expect"] = 200; },
     "node 'web-01': unknown field 'health.expect'"},
    {"health.type unknown", [](json::object& n) { n["health"].as_object()["type"] = "grpc"; },
     "node 'web-01': field 'health.type': must be one of \"http\", \"https\", \"tcp\", \"command\", "
     "not 'grpc'"},
    {"health.type not a string", [](json::object& n) { n["health"].as_object()["type"] = 1; },
     "node 'web-01': field 'health.type': must be a string"},
    {"health.expect_status not a list",
     [](json::object& n) { n["health"].as_object()["expect_status"] = 200; },
     "node 'web-01': field 'health.expect_status': must be a non-empty list"},
    {"health.expect_status empty",
     [](json::object& n) { n["health"].as_object()["expect_status"] = json::array(); },
     "node 'web-01': field 'health.expect_status': must be a non-empty list"},
    {"health.expect_status out of range",
     [](json::object& n) { n["health"].as_object()["expect_status"] = {200, 700}; },
     "node 'web-01': field 'health.expect_status[1]': must be a status from 100 to 599"},
    {"health.expect_status bad range",
     [](json::object& n) { n["health"].as_object()["expect_status"] = {"299-200"}; },
     "node 'web-01': field 'health.expect_status[0]': range must be 'LOW-HIGH' with LOW <= HIGH"},
    {"health.expect_status wrong type",
     [](json::object& n) { n["health"].as_object()["expect_status"] = {200, true}; },
     "node 'web-01': field 'health.expect_status[1]': must be a status (204) or a range"},
    {"health.body_contains empty",
     [](json::object& n) { n["health"].as_object()["body_contains"] = ""; },
     "node 'web-01': field 'health.body_contains': must not be empty"},
    {"health.ca_file for http",
     [](json::object& n) { n["health"].as_object()["ca_file"] = "/etc/ssl/ca.pem"; },
     "node 'web-01': field 'health.ca_file': does not apply to type 'http'"},
    {"health.ca_file missing",
     [](json::object& n) {
         n["health"].as_object()["type"] = "https";
         n["health"].as_object()["ca_file"] = "/nonexistent/ca.pem";
     },
     "node 'web-01': field 'health.ca_file': cannot be read: No such file or directory"},
    {"health.ca_file a directory",
     [](json::object& n) {
         n["health"].as_object()["type"] = "https";
         n["health"].as_object()["ca_file"] = "/tmp";
     },
     "node 'web-01': field 'health.ca_file': must be a regular file"},
    {"health.ca_file relative",
     [](json::object& n) {
         n["health"].as_object()["type"] = "https";
         n["health"].as_object()["ca_file"] = "ca.pem";
     },
     "node 'web-01': field 'health.ca_file': must be an absolute path"},
    {"health.insecure_skip_verify not a bool",
     [](json::object& n) {
         n["health"].as_object()["type"] = "https";
         n["health"].as_object()["insecure_skip_verify"] = "yes";
     },
     "node 'web-01': field 'health.insecure_skip_verify': must be true or false"},
    {"health.tls_server_name with a space",
     [](json::object& n) {
         n["health"].as_object()["type"] = "https";
         n["health"].as_object()["tls_server_name"] = "a b";
     },
     "node 'web-01': field 'health.tls_server_name': must not contain whitespace"},
    {"health.path for tcp",
     [](json::object& n) { n["health"].as_object()["type"] = "tcp"; },
     "node 'web-01': field 'health.path': does not apply to type 'tcp'"},
    {"health.command missing",
     [](json::object& n) { n["health"] = {{"type", "command"}}; },
     "node 'web-01': field 'health.command': is required for type 'command'"},
    {"health.port for command",
     [](json::object& n) { n["health"] = {{"type", "command"}, {"command", "true"}, {"port", 80}}; },
     "node 'web-01': field 'health.port': does not apply to type 'command'"},
    {"health.command for http",
     [](json::object& n) { n["health"].as_object()["command"] = "true"; },
     "node 'web-01': field 'health.command': does not apply to type 'http'"},
    {"health.command newline",
     [](json::object& n) { n["health"] = {{"type", "command"}, {"command", "true\nreboot"}}; },
     "node 'web-01': field 'health.command': must not contain NUL or newline"},
    {"health.attempt_timeout_s 0",
     [](json::object& n) { n["health"].as_object()["attempt_timeout_s"] = 0; },
     "node 'web-01': field 'health.attempt_timeout_s': must be an integer from 1 to 3600"},
    {"node unknown field", [](json::object& n) { n["deploy_pth"] = "/app"; },
     "nodes.json: node 'web-01': unknown field 'deploy_pth'"},
};

}  // namespace

TEST_CASE("inventory: the specification's example parses to its values") {
    auto inv = parse_inventory(design_example, "nodes.json");
    REQUIRE_MESSAGE(inv.has_value(), (inv ? "" : inv.error().message));
    REQUIRE(inv->nodes.size() == 1);
    const Node& n = inv->nodes[0];
    CHECK(n.name == "web-01");
    CHECK(n.host == "10.1.2.3");
    CHECK(n.ssh_port == 22);
    CHECK(n.user == "deploy");
    CHECK(n.auth.key_file == "/etc/guardia/keys/id_ed25519");
    CHECK(n.auth.password_ref.empty());
    CHECK_FALSE(n.auth.agent);
    CHECK(n.deploy_path == "/app/webapps");
    CHECK(n.tier == 1);
    CHECK(n.inst_id == "INST-001");
    CHECK(n.system_name == "billing");
    CHECK(n.requires_restart);
    CHECK(n.shutdown_cmd == "sh /app/scripts/shutdown.sh");
    CHECK(n.startup_cmd == "sh /app/scripts/startup.sh");
    CHECK(n.health.port == 8080);
    CHECK(n.health.path == "/");
    CHECK(n.health.timeout == std::chrono::seconds(30));
    CHECK(n.health.interval == std::chrono::seconds(2));
}

TEST_CASE("inventory: omitted fields take the documented defaults") {
    auto inv = parse_inventory(R"({"nodes": [{"name": "n1", "host": "h", "user": "u",
        "auth": {"agent": true}, "deploy_path": "/app/x", "requires_restart": false,
        "health": {"port": 80}}]})",
                               "nodes.json");
    REQUIRE_MESSAGE(inv.has_value(), (inv ? "" : inv.error().message));
    const Node& n = inv->nodes[0];
    CHECK(n.ssh_port == 22);
    CHECK(n.tier == 2);
    CHECK(n.auth.agent);
    CHECK(n.inst_id.empty());
    CHECK(n.system_name.empty());
    CHECK_FALSE(n.requires_restart);
    CHECK(n.shutdown_cmd.empty());
    CHECK(n.health.path == "/");
    CHECK(n.health.timeout == std::chrono::seconds(30));
    CHECK(n.health.interval == std::chrono::seconds(2));

    // Default-constructed structs hold the same defaults.
    Node d;
    CHECK(d.ssh_port == 22);
    CHECK(d.tier == 2);
    CHECK(d.requires_restart);
    CHECK(d.health.path == "/");
}

TEST_CASE("inventory: each rule fails with a message naming node and field") {
    for (const auto& c : rule_cases) {
        CAPTURE(c.what);
        json::object node = example_node();
        c.mutate(node);
        auto r = parse_nodes(json::array{node});
        REQUIRE_FALSE(r.has_value());
        CAPTURE(r.error().message);
        CHECK(r.error().message.find(c.expect) != std::string::npos);
        CHECK(r.error().code == errc::invalid_argument);
    }
}

TEST_CASE("inventory: health types and their fields") {
    const char* ca = "/tmp/guardia-inventory-test-ca.pem";
    std::ofstream(ca) << "not checked here: only readable\n";
    json::object node = example_node();
    node["health"] = {{"type", "https"},
                      {"port", 8443},
                      {"path", "/health"},
                      {"expect_status", {200, "300-399"}},
                      {"body_contains", "UP"},
                      {"ca_file", ca},
                      {"tls_server_name", "app.example"},
                      {"attempt_timeout_s", 9}};
    auto r = parse_nodes(json::array{node});
    REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().message));
    const HealthSpec& h = r->nodes[0].health;
    CHECK(h.type == http::ProbeKind::https);
    CHECK(h.port == 8443);
    CHECK(h.expect_status.describe() == "200, 300-399");
    CHECK(h.body_contains == "UP");
    CHECK(h.ca_file == ca);
    CHECK(h.tls_server_name == "app.example");
    CHECK_FALSE(h.insecure_skip_verify);
    CHECK(h.attempt_timeout == std::chrono::seconds(9));

    node["health"] = {{"type", "https"}, {"port", 8443}, {"insecure_skip_verify", true},
                      {"ca_file", ca}};
    CHECK(error_of(parse_nodes(json::array{node}))
              .find("field 'health.insecure_skip_verify': contradicts 'ca_file'") !=
          std::string::npos);
    node["health"] = {{"type", "https"}, {"port", 8443}, {"insecure_skip_verify", true}};
    r = parse_nodes(json::array{node});
    REQUIRE(r.has_value());
    CHECK(r->nodes[0].health.insecure_skip_verify);
    std::filesystem::remove(ca);

    node["health"] = {{"type", "tcp"}, {"port", 5432}};
    r = parse_nodes(json::array{node});
    REQUIRE(r.has_value());
    CHECK(r->nodes[0].health.type == http::ProbeKind::tcp);

    node["health"] = {{"type", "command"}, {"command", "test -f /app/webapps/app.bin"}};
    r = parse_nodes(json::array{node});
    REQUIRE(r.has_value());
    CHECK(r->nodes[0].health.type == http::ProbeKind::command);
    CHECK(r->nodes[0].health.command == "test -f /app/webapps/app.bin");
    CHECK(r->nodes[0].health.port == 0);

    // Today's inventories: type http, [200], no body check.
    r = parse_nodes(json::array{example_node()});
    REQUIRE(r.has_value());
    CHECK(r->nodes[0].health.type == http::ProbeKind::http);
    CHECK(r->nodes[0].health.expect_status.is_default());
    CHECK(r->nodes[0].health.body_contains.empty());
    CHECK(r->nodes[0].health.attempt_timeout == std::chrono::seconds(5));
}

TEST_CASE("inventory: a health command passes the sanitizer and exec.allow") {
    json::object node = example_node();
    node["health"] = {{"type", "command"}, {"command", "sh -c 'rm -rf /'"}};
    auto r = parse_nodes(json::array{node});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::security_violation);
    CHECK(r.error().message.find("nodes.json: node 'web-01': field 'health.command': ") == 0);

    auto policy = make_command_policy({"sh *", "test -f *"});
    REQUIRE(policy.has_value());
    node["health"] = {{"type", "command"}, {"command", "curl -fs http://127.0.0.1/"}};
    r = parse_inventory(document(json::array{node}), "nodes.json", *policy);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::security_violation);
    CHECK(r.error().message.find("field 'health.command': ") != std::string::npos);
    node["health"] = {{"type", "command"}, {"command", "test -f /app/webapps/app.bin"}};
    r = parse_inventory(document(json::array{node}), "nodes.json", *policy);
    REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().message));
}

TEST_CASE("inventory: shutdown/startup commands must pass the sanitizer") {
    json::object node = example_node();
    node["startup_cmd"] = "sh -c 'rm -rf /'";
    auto r = parse_nodes(json::array{node});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::security_violation);
    CHECK(r.error().message.find("nodes.json: node 'web-01': field 'startup_cmd': ") == 0);
    CHECK(r.error().message.find("recursive rm of a system path") != std::string::npos);

    node = example_node();
    node["shutdown_cmd"] = "mkfs.ext4 /dev/sdb1";
    r = parse_nodes(json::array{node});
    REQUIRE_FALSE(r.has_value());
    CHECK(error_of(r).find("field 'shutdown_cmd': ") != std::string::npos);
    CHECK(error_of(r).find("mkfs") != std::string::npos);

    // Commands are optional when the node is not restarted, but still checked when given.
    node = example_node();
    node["requires_restart"] = false;
    node.erase("shutdown_cmd");
    node.erase("startup_cmd");
    CHECK(parse_nodes(json::array{node}).has_value());
    node["startup_cmd"] = "dd if=/dev/zero of=/dev/sda";
    CHECK(error_of(parse_nodes(json::array{node})).find("field 'startup_cmd'") !=
          std::string::npos);
}

TEST_CASE("inventory: names are unique, targets are not shared") {
    json::object a = example_node();
    json::object b = example_node();
    b["deploy_path"] = "/app/other";
    CHECK(error_of(parse_nodes(json::array{a, b})) ==
          "nodes.json: node 'web-01': field 'name': duplicate of nodes[0]");

    // Same host (any case), port and directory: the two would race.
    b["name"] = "web-02";
    b["deploy_path"] = "/app/webapps";
    b["host"] = "10.1.2.3";
    auto msg = error_of(parse_nodes(json::array{a, b}));
    CHECK(msg.find("nodes.json: node 'web-02': field 'deploy_path': same target directory as "
                   "node 'web-01'") == 0);
    a["host"] = "Web.Example";
    b["host"] = "web.example";
    CHECK(error_of(parse_nodes(json::array{a, b})).find("same target directory") !=
          std::string::npos);

    // One directory inside the other races too, in either order.
    b["deploy_path"] = "/app/webapps/static";
    CHECK(error_of(parse_nodes(json::array{a, b}))
              .find("field 'deploy_path': inside the deploy_path of node 'web-01'") !=
          std::string::npos);
    CHECK(
        error_of(parse_nodes(json::array{b, a}))
            .find(
                "node 'web-01': field 'deploy_path': contains the deploy_path of node 'web-02'") !=
        std::string::npos);

    // Another port, another directory or another host is another target; inst_id and
    // system_name may repeat.
    b["deploy_path"] = "/app/webapps";
    b["ssh_port"] = 2222;
    CHECK(parse_nodes(json::array{a, b}).has_value());
    b["ssh_port"] = 22;
    b["deploy_path"] = "/app/webapps2";
    CHECK(parse_nodes(json::array{a, b}).has_value());
    b["deploy_path"] = "/app/webapps";
    b["host"] = "10.1.2.4";
    auto ok = parse_nodes(json::array{a, b});
    REQUIRE(ok.has_value());
    CHECK(ok->nodes[0].inst_id == ok->nodes[1].inst_id);
}

TEST_CASE("inventory: document shape") {
    CHECK(error_of(parse_inventory("[]", "nodes.json")).find("nodes.json: must be a JSON object") ==
          0);
    CHECK(error_of(parse_inventory("{}", "nodes.json")) == "nodes.json: field 'nodes' is required");
    CHECK(error_of(parse_inventory(R"({"nodes": []})", "nodes.json")) ==
          "nodes.json: field 'nodes' must be a non-empty array");
    CHECK(error_of(parse_inventory(R"({"nodes": {}})", "nodes.json")) ==
          "nodes.json: field 'nodes' must be a non-empty array");
    CHECK(error_of(parse_inventory(R"({"nodes": [1]})", "nodes.json")) ==
          "nodes.json: nodes[0]: must be an object");
    CHECK(error_of(parse_inventory(R"({"version": 1, "nodes": []})", "nodes.json")) ==
          "nodes.json: unknown field 'version'");
    // The second node is reported by name, the broken first one by position.
    json::object good = example_node();
    json::object bad = example_node();
    bad["name"] = "web-02";
    bad["deploy_path"] = "/app/b";
    bad["tier"] = 100;
    CHECK(error_of(parse_nodes(json::array{good, bad}))
              .find("nodes.json: node 'web-02': field 'tier'") == 0);
}

TEST_CASE("inventory: JSON errors name source, line and column") {
    // A doubled comma: the second one, line 3 column 18, is where a key was expected.
    auto r = parse_inventory("{\n  \"nodes\": [\n    {\"name\": \"a\",,}\n  ]\n}\n", "nodes.json");
    CHECK(error_of(r).find("nodes.json:3:18: invalid JSON: ") == 0);

    // Truncated: the error is at the end of the input.
    r = parse_inventory("{\n  \"nodes\": [\n", "inv.json");
    CHECK(error_of(r).find("inv.json:3:1: invalid JSON: ") == 0);

    // Something after the document.
    r = parse_inventory("{\"nodes\": []}\n x", "inv.json");
    CHECK(error_of(r).find("inv.json:2:2: invalid JSON: ") == 0);

    // Columns count characters, not bytes.
    r = parse_inventory("{\"n\u00e9\": x}", "inv.json");
    CHECK(error_of(r).find("inv.json:1:8: invalid JSON: ") == 0);

    // A duplicate key is refused, not silently overwritten.
    r = parse_inventory("{\"nodes\": [\n {\"tier\": 1,\n  \"tier\": 3}]}", "inv.json");
    CHECK(error_of(r).find("inv.json:3:3: duplicate key 'tier'") == 0);
    CHECK(error_of(r).find("duplicate key 'tier'") != std::string::npos);
}

TEST_CASE("inventory: load_inventory reads files and names the path on failure") {
    auto missing = load_inventory("/nonexistent/guardia/nodes.json");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code == errc::local_io_failed);
    CHECK(missing.error().message.find("'/nonexistent/guardia/nodes.json'") != std::string::npos);
    CHECK(missing.error().message.find("No such file") != std::string::npos);

    auto dir = load_inventory("/");
    REQUIRE_FALSE(dir.has_value());
    CHECK(dir.error().message.find("not a regular file") != std::string::npos);

    auto path = std::filesystem::temp_directory_path() /
                ("guardia-inventory-test-" + std::to_string(::getpid()) + ".json");
    { std::ofstream(path) << "{\"nodes\": [\n  {\"name\": \"x\"}\n]}\n"; }
    auto bad = load_inventory(path.string());
    std::filesystem::remove(path);
    CHECK(error_of(bad).find(path.string() + ": node 'x': field 'host': is required") == 0);
}

TEST_CASE("inventory: conf/inventory.example.json parses, one node per tier and auth kind") {
    auto inv = load_inventory((source_root() / "conf" / "inventory.example.json").string());
    REQUIRE_MESSAGE(inv.has_value(), (inv ? "" : inv.error().message));
    REQUIRE(inv->nodes.size() == 3);
    CHECK(inv->nodes[0].tier == 1);
    CHECK(inv->nodes[1].tier == 2);
    CHECK(inv->nodes[2].tier == 3);
    CHECK_FALSE(inv->nodes[0].auth.key_file.empty());
    CHECK_FALSE(inv->nodes[1].auth.password_ref.empty());
    CHECK(inv->nodes[2].auth.agent);
    CHECK(inv->nodes[1].ssh_port == 2222);
    CHECK(inv->nodes[2].ssh_port == 22);
    CHECK_FALSE(inv->nodes[2].requires_restart);
}

// ------------------------------------------------------------------ tiers and defaults

TEST_CASE("inventory: tiers 1 to 99, as the configuration's rollout.tiers") {
    for (int tier : {1, 3, 4, 7, 42, 99}) {
        json::object n = example_node();
        n["tier"] = tier;
        auto inv = parse_nodes(json::array{n});
        REQUIRE_MESSAGE(inv.has_value(), (inv ? "" : inv.error().message));
        CHECK(inv->nodes[0].tier == tier);
    }
}

namespace {

// Two nodes that take everything but name, host and deploy_path from the defaults.
json::object defaults_document() {
    json::object defaults = example_node();
    defaults.erase("name");
    defaults.erase("host");
    defaults.erase("deploy_path");
    json::object root;
    root["defaults"] = defaults;
    root["nodes"] = json::array{
        json::object{{"name", "web-01"}, {"host", "10.0.0.1"}, {"deploy_path", "/app/a"}},
        json::object{{"name", "web-02"}, {"host", "10.0.0.2"}, {"deploy_path", "/app/b"}}};
    return root;
}

Result<Inventory> parse_root(const json::object& root) {
    return parse_inventory(json::serialize(root), "inv.json");
}

}  // namespace

TEST_CASE("inventory: defaults fill every node's missing fields") {
    auto inv = parse_root(defaults_document());
    REQUIRE_MESSAGE(inv.has_value(), (inv ? "" : inv.error().message));
    REQUIRE(inv->nodes.size() == 2);
    for (const auto& n : inv->nodes) {
        CHECK(n.user == "deploy");
        CHECK(n.auth.key_file == "/etc/guardia/keys/id_ed25519");
        CHECK(n.tier == 1);
        CHECK(n.inst_id == "INST-001");
        CHECK(n.shutdown_cmd == "sh /app/scripts/shutdown.sh");
        CHECK(n.health.port == 8080);
        CHECK(n.health.timeout.count() == 30);
    }
    CHECK(inv->nodes[1].host == "10.0.0.2");
    CHECK(inv->nodes[1].deploy_path == "/app/b");
}

TEST_CASE("inventory: a node's own fields win; objects merge key by key, one level deep") {
    json::object root = defaults_document();
    auto& nodes = root["nodes"].as_array();
    auto& n1 = nodes[0].as_object();
    n1["user"] = "ops";
    n1["tier"] = 3;
    n1["health"] = json::object{{"port", 9090}};  // path, timeout_s, interval_s from defaults
    auto& n2 = nodes[1].as_object();
    n2["auth"] = json::object{{"agent", true}};  // replaces the defaults' key_file
    n2["requires_restart"] = false;
    auto inv = parse_root(root);
    REQUIRE_MESSAGE(inv.has_value(), (inv ? "" : inv.error().message));
    const auto& a = inv->nodes[0];
    CHECK(a.user == "ops");
    CHECK(a.tier == 3);
    CHECK(a.health.port == 9090);
    CHECK(a.health.path == "/");
    CHECK(a.health.timeout.count() == 30);
    CHECK(a.health.interval.count() == 2);
    CHECK(a.auth.key_file == "/etc/guardia/keys/id_ed25519");
    const auto& b = inv->nodes[1];
    CHECK(b.user == "deploy");
    CHECK(b.auth.agent);
    CHECK(b.auth.key_file.empty());
    CHECK_FALSE(b.requires_restart);
    CHECK(b.health.port == 8080);
}

TEST_CASE("inventory: an error in a value from the defaults names defaults.<field> and the node") {
    json::object root = defaults_document();
    root["defaults"].as_object()["user"] = "-root";
    CHECK(error_of(parse_root(root)) ==
          "inv.json: node 'web-01': field 'user' (from defaults.user): must not start with '-'");

    root = defaults_document();
    root["defaults"].as_object()["health"].as_object()["port"] = 0;
    root["nodes"].as_array()[0].as_object()["health"] = json::object{{"port", 8081}};
    // web-01 sets its own port; web-02 takes the bad one.
    CHECK(error_of(parse_root(root)) ==
          "inv.json: node 'web-02': field 'health.port' (from defaults.health.port): must be an "
          "integer from 1 to 65535");

    root = defaults_document();
    root["defaults"].as_object()["health"].as_object()["expect"] = 200;
    CHECK(error_of(parse_root(root)) ==
          "inv.json: node 'web-01': unknown field 'health.expect' (from defaults.health.expect)");

    // The node's own bad value is its own.
    root = defaults_document();
    root["nodes"].as_array()[1].as_object()["tier"] = 0;
    CHECK(error_of(parse_root(root)) ==
          "inv.json: node 'web-02': field 'tier': must be an integer from 1 to 99");

    // A default deploy_path for nodes on one host is the same directory twice.
    root = defaults_document();
    root["defaults"].as_object()["deploy_path"] = "/app/x";
    root["defaults"].as_object()["host"] = "10.0.0.9";
    for (auto& n : root["nodes"].as_array()) {
        n.as_object().erase("deploy_path");
        n.as_object().erase("host");
    }
    CHECK(error_of(parse_root(root)).find("inv.json: node 'web-02': field 'deploy_path' (from "
                                          "defaults.deploy_path): same target directory as node "
                                          "'web-01'") == 0);
}

TEST_CASE("inventory: the defaults object itself") {
    json::object root = defaults_document();
    root["defaults"] = json::array{};
    CHECK(error_of(parse_root(root)) == "inv.json: field 'defaults' must be an object");
    root = defaults_document();
    root["defaults"].as_object()["name"] = "x";
    CHECK(error_of(parse_root(root)) ==
          "inv.json: defaults: field 'name' cannot have a default (names are unique)");
    root = defaults_document();
    root["defaults"].as_object()["usr"] = "x";
    CHECK(error_of(parse_root(root)) == "inv.json: defaults: unknown field 'usr'");
    // An empty defaults object changes nothing.
    root = json::object{{"defaults", json::object{}}, {"nodes", json::array{example_node()}}};
    auto inv = parse_root(root);
    REQUIRE(inv.has_value());
    CHECK(inv->nodes[0].user == "deploy");
}

TEST_CASE("inventory: conf/inventory.defaults.example.json parses") {
    auto inv = load_inventory((source_root() / "conf" / "inventory.defaults.example.json").string());
    REQUIRE_MESSAGE(inv.has_value(), (inv ? "" : inv.error().message));
    REQUIRE(inv->nodes.size() == 4);
    for (const auto& n : inv->nodes) CHECK(n.user == "deploy");
    CHECK(inv->nodes[0].tier == 1);
    CHECK(inv->nodes[1].tier == 2);
    CHECK(inv->nodes[1].auth.key_file == "/etc/guardia/keys/id_ed25519");
    CHECK(inv->nodes[2].auth.password_ref == "portal-03-deploy");
    CHECK(inv->nodes[2].auth.key_file.empty());
    CHECK(inv->nodes[3].tier == 3);
    CHECK(inv->nodes[3].health.port == 9443);
    CHECK(inv->nodes[3].health.path == "/health");
    CHECK(inv->nodes[3].health.timeout.count() == 60);
}
