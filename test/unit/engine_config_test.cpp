// The engine configuration file: defaults, every section, and errors that name the field.
#include "guardia/deploy/engine_config.hpp"
#include "guardia/deploy/rollout.hpp"

#include <doctest/doctest.h>

#include <filesystem>

using namespace guardia;
using namespace guardia::deploy;

namespace {

std::string error_of(const std::string& text) {
    auto r = parse_engine_config(text, "guardia.json");
    REQUIRE_FALSE(r.has_value());
    return r.error().message;
}

}  // namespace

TEST_SUITE("engine config") {
    TEST_CASE("an empty document gives the DESIGN defaults") {
        auto c = parse_engine_config("{}", "guardia.json");
        REQUIRE(c.has_value());
        REQUIRE(c->rollout.tiers.size() == 3);
        CHECK(c->rollout.tiers[0].tier == 1);
        CHECK(c->rollout.tiers[0].batch_size == 1);
        CHECK(c->rollout.tiers[0].mode == WindowMode::lockstep);
        CHECK(c->rollout.tiers[0].strict_health);
        CHECK(c->rollout.tiers[1].batch_size == 50);
        CHECK(c->rollout.tiers[1].mode == WindowMode::sliding);
        CHECK(c->rollout.tiers[2].batch_size == 0);  // all at once
        CHECK(c->rollout.failure_threshold == doctest::Approx(0.10));
        CHECK(c->rollout.on_abort == AbortPolicy::keep_deployed);
        CHECK(c->pipeline.disk_threshold_percent == 90);
        CHECK(c->host_key_policy == ssh::HostKeyPolicy::strict);
    }

    TEST_CASE("every field is read") {
        auto c = parse_engine_config(R"({
          "rollout": {"tiers": [{"tier": 3, "batch_size": "all"}, {"tier": 1, "batch_size": 2, "mode": "sliding",
                                 "strict_health": false, "min_sample": 5}],
                      "failure_threshold_percent": 25, "max_failed_nodes": 7, "on_abort": "roll_back_all",
                      "max_sessions": 300, "max_connections_per_second": 0, "node_deadline_s": 90},
          "pipeline": {"disk_threshold_percent": 80, "keep_backups": 5, "strict_consecutive": 4,
                       "stale_lock_age_s": 60, "connect_timeout_s": 2.5, "command_timeout_s": 30,
                       "backup_timeout_s": 100, "transfer_timeout_s": 200, "shutdown_timeout_s": 20,
                       "startup_timeout_s": 40},
          "ssh": {"known_hosts": "/etc/guardia/known_hosts", "host_key_policy": "accept-new",
                  "credentials_file": "/etc/guardia/passwords.json"},
          "store": {"db": "/var/lib/guardia/guardia.db"},
          "service": {"listen": "127.0.0.1:8443"}
        })",
                                     "guardia.json");
        REQUIRE_MESSAGE(c.has_value(), (c ? "" : c.error().message));
        REQUIRE(c->rollout.tiers.size() == 2);
        CHECK(c->rollout.tiers[0].tier == 3);
        CHECK(c->rollout.tiers[0].batch_size == 0);
        CHECK(c->rollout.tiers[1].mode == WindowMode::sliding);
        CHECK_FALSE(c->rollout.tiers[1].strict_health);
        CHECK(c->rollout.tiers[1].min_sample == 5);
        CHECK(c->rollout.failure_threshold == doctest::Approx(0.25));
        CHECK(c->rollout.max_failed_nodes == 7);
        CHECK(c->rollout.on_abort == AbortPolicy::roll_back_all);
        CHECK(c->rollout.max_sessions == 300);
        CHECK(c->rollout.max_connections_per_second == 0);
        CHECK(c->rollout.node_deadline == std::chrono::seconds(90));
        CHECK(c->pipeline.keep_backups == 5);
        CHECK(c->pipeline.connect_timeout == std::chrono::milliseconds(2500));
        CHECK(c->pipeline.stale_lock_age == std::chrono::seconds(60));
        CHECK(c->host_key_policy == ssh::HostKeyPolicy::accept_new);
        CHECK(c->known_hosts == "/etc/guardia/known_hosts");
        CHECK(c->credentials_file == "/etc/guardia/passwords.json");
        CHECK(c->db == "/var/lib/guardia/guardia.db");
        CHECK(c->service.is_object());
    }

    TEST_CASE("errors name the file and the field") {
        CHECK(error_of(R"({"rollout": {"tiers": [{"tier": 1, "mode": "fast"}]}})") ==
              "guardia.json: rollout.tiers[0].mode: must be \"sliding\" or \"lockstep\"");
        CHECK(error_of(R"({"rollout": {"tiers": [{"tier": 1}, {"tier": 2, "batch_size": 0}]}})")
                  .find("rollout.tiers[1].batch_size: must be between 1 and 1000000") !=
              std::string::npos);
        CHECK(error_of(R"({"rollout": {"tiers": [{"batch_size": 3}]}})") ==
              "guardia.json: rollout.tiers[0].tier: is required");
        CHECK(error_of(R"({"rollout": {"failure_threshold_percent": 150}})")
                  .find("rollout.failure_threshold_percent") != std::string::npos);
        CHECK(error_of(R"({"rollout": {"on_abort": "panic"}})").find("rollout.on_abort") !=
              std::string::npos);
        CHECK(error_of(R"({"rollout": {"max_sessions": 0}})").find("rollout.max_sessions") !=
              std::string::npos);
        CHECK(error_of(R"({"pipeline": {"keep_backups": "3"}})")
                  .find("pipeline.keep_backups: must be an integer") != std::string::npos);
        CHECK(error_of(R"({"pipeline": {"connect_timeout_s": -1}})")
                  .find("pipeline.connect_timeout_s") != std::string::npos);
        CHECK(error_of(R"({"ssh": {"known_hosts": "relative/path"}})") ==
              "guardia.json: ssh.known_hosts: must be an absolute path");
        CHECK(error_of(R"({"ssh": {"host_key_policy": "yolo"}})").find("ssh.host_key_policy") !=
              std::string::npos);
        CHECK(error_of(R"({"rollout": {"tierz": []}})") ==
              "guardia.json: rollout.tierz: unknown field");
        CHECK(error_of(R"({"extra": 1})") == "guardia.json: extra: unknown field");
        CHECK(error_of(R"({"rollout": 5})") == "guardia.json: rollout: must be an object");
        CHECK(error_of("{\n  \"rollout\": {},\n  \"rollout\": {}\n}")
                  .find("guardia.json:3:3: duplicate key 'rollout'") != std::string::npos);
        CHECK(error_of("{\"rollout\": ").find("guardia.json:1:13: invalid JSON") !=
              std::string::npos);
    }

    TEST_CASE("exec.allow: the allow-list of commands") {
        auto c = parse_engine_config(R"({"exec": {"allow": ["uptime", "systemctl restart *"]}})", "guardia.json");
        REQUIRE(c.has_value());
        REQUIRE(c->command_policy.allow.size() == 2);
        CHECK(c->command_policy.allow[1] == std::vector<std::string>{"systemctl", "restart", "*"});
        CHECK(sanitize_command("systemctl restart app", c->command_policy).has_value());
        CHECK_FALSE(sanitize_command("systemctl stop app", c->command_policy).has_value());
        CHECK_FALSE(parse_engine_config("{}", "guardia.json")->command_policy.restricts());
        CHECK(error_of(R"({"exec": {"allow": ["uptime", "rm $x"]}})") ==
              "guardia.json: exec.allow[1]: must be plain words: a command and its first arguments");
        CHECK(error_of(R"({"exec": {"allow": "uptime"}})") == "guardia.json: exec.allow: must be an array of strings");
        CHECK(error_of(R"({"exec": {"allow": [1]}})").find("exec.allow: element 0 must be a string") !=
              std::string::npos);
        CHECK(error_of(R"({"exec": {"deny": []}})") == "guardia.json: exec.deny: unknown field");
    }

    TEST_CASE("conf/guardia.json, the documented example, parses and holds the defaults") {
        const auto root = std::filesystem::path(GUARDIA_SOURCE_ROOT);
        auto c = load_engine_config((root / "conf" / "guardia.json").string());
        REQUIRE_MESSAGE(c.has_value(), (c ? "" : c.error().message));
        const RolloutConfig defaults;
        REQUIRE(c->rollout.tiers.size() == defaults.tiers.size());
        for (std::size_t i = 0; i < defaults.tiers.size(); ++i) {
            CHECK(c->rollout.tiers[i].tier == defaults.tiers[i].tier);
            CHECK(c->rollout.tiers[i].batch_size == defaults.tiers[i].batch_size);
            CHECK(c->rollout.tiers[i].mode == defaults.tiers[i].mode);
            CHECK(c->rollout.tiers[i].strict_health == defaults.tiers[i].strict_health);
        }
        CHECK(c->rollout.max_sessions == defaults.max_sessions);
        CHECK(c->rollout.node_deadline == defaults.node_deadline);
        CHECK(c->known_hosts == "/etc/guardia/known_hosts");
    }

    TEST_CASE("a missing file is named") {
        auto r = load_engine_config("/nonexistent/guardia.json");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message.find("cannot read configuration '/nonexistent/guardia.json'") !=
              std::string::npos);
    }

    TEST_CASE("validate_rollout checks the policy against the inventory") {
        RolloutConfig c;
        Inventory inv;
        Node n;
        n.name = "web-07";
        n.tier = 4;
        inv.nodes.push_back(n);
        auto v = validate_rollout(c, inv);
        REQUIRE_FALSE(v.has_value());
        CHECK(v.error().message ==
              "node 'web-07': field 'tier': tier 4 is not in the rollout configuration "
              "(rollout.tiers)");
        c.tiers.push_back(TierPolicy(4, 10, WindowMode::sliding, false));
        CHECK(validate_rollout(c, inv).has_value());
        c.tiers.push_back(TierPolicy(4, 10, WindowMode::sliding, false));
        auto dup = validate_rollout(c, inv);
        REQUIRE_FALSE(dup.has_value());
        CHECK(dup.error().message == "rollout.tiers[4].tier: tier 4 is listed twice");
    }
}
