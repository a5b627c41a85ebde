#include "guardia/deploy/engine_config.hpp"

#include "guardia/core/json_input.hpp"
#include "guardia/core/json_section.hpp"

#include <cmath>
#include <initializer_list>
#include <limits>
#include <set>

namespace guardia::deploy {

namespace json = boost::json;

namespace {

constexpr std::uintmax_t max_config_bytes = 1u << 20;

#define GUARDIA_TRY(expr)                             \
    do {                                              \
        if (auto r_ = (expr); !r_) return r_.error(); \
    } while (false)

Result<const json::object*> object_of(const json::value* v, const std::string& source,
                                      const std::string& field) {
    if (!v) return static_cast<const json::object*>(nullptr);
    if (!v->is_object())
        return Error(errc::invalid_argument, source + ": " + field + ": must be an object");
    return &v->get_object();
}

Result<void> read_tiers(const json::value& v, const std::string& src, RolloutConfig& out) {
    if (!v.is_array() || v.get_array().empty())
        return Error(errc::invalid_argument, src + ": rollout.tiers: must be a non-empty array");
    out.tiers.clear();
    const auto& arr = v.get_array();
    for (std::size_t i = 0; i < arr.size(); ++i) {
        const std::string at = "rollout.tiers[" + std::to_string(i) + "]";
        if (!arr[i].is_object())
            return Error(errc::invalid_argument, src + ": " + at + ": must be an object");
        Section s(arr[i].get_object(), src, at);
        GUARDIA_TRY(s.only({"tier", "batch_size", "mode", "strict_health", "min_sample", "bake_s",
                            "approve"}));
        TierPolicy t;
        if (!s.find("tier")) return s.error("tier", "is required");
        GUARDIA_TRY(s.integer("tier", t.tier, 1, 99));
        // Defaults follow the tier's DESIGN role: 1 one at a time and strict, others by 50.
        t.batch_size = t.tier == 1 ? 1 : 50;
        t.mode = t.tier == 1 ? WindowMode::lockstep : WindowMode::sliding;
        t.strict_health = t.tier == 1;
        if (const auto* b = s.find("batch_size")) {
            if (b->is_string() && b->get_string() == "all")
                t.batch_size = 0;
            else
                GUARDIA_TRY(s.integer("batch_size", t.batch_size, 1, 1000000));
        }
        std::string mode;
        GUARDIA_TRY(s.string("mode", mode));
        if (mode == "sliding")
            t.mode = WindowMode::sliding;
        else if (mode == "lockstep")
            t.mode = WindowMode::lockstep;
        else if (!mode.empty() || s.find("mode"))
            return s.error("mode", "must be \"sliding\" or \"lockstep\"");
        GUARDIA_TRY(s.boolean("strict_health", t.strict_health));
        GUARDIA_TRY(s.integer("min_sample", t.min_sample, 0, 1000000));
        std::int64_t bake = 0;
        GUARDIA_TRY(s.integer("bake_s", bake, 0, 7 * 86400));
        t.bake = std::chrono::seconds(bake);
        GUARDIA_TRY(s.boolean("approve", t.approve));
        out.tiers.push_back(t);
    }
    return {};
}

}  // namespace

Result<EngineConfig> parse_engine_config(std::string_view text, std::string_view source) {
    const std::string src(source);
    auto parsed = parse_json_document(text, source);
    if (!parsed) return parsed.error();
    if (!parsed->is_object()) return Error(errc::invalid_argument, src + ": must be a JSON object");
    const auto& root = parsed->get_object();
    Section top(root, src, "");
    GUARDIA_TRY(top.only({"rollout", "pipeline", "ssh", "store", "exec", "service", "notifications"}));
    EngineConfig c;

    auto rollout = object_of(top.find("rollout"), src, "rollout");
    if (!rollout) return rollout.error();
    if (*rollout) {
        Section s(**rollout, src, "rollout");
        GUARDIA_TRY(s.only({"tiers", "failure_threshold_percent", "max_failed_nodes", "on_abort",
                            "max_sessions", "max_connections_per_second", "node_deadline_s"}));
        if (const auto* t = s.find("tiers")) GUARDIA_TRY(read_tiers(*t, src, c.rollout));
        double pct = c.rollout.failure_threshold * 100.0;
        GUARDIA_TRY(s.number("failure_threshold_percent", pct, 0, 100));
        c.rollout.failure_threshold = pct / 100.0;
        GUARDIA_TRY(s.integer("max_failed_nodes", c.rollout.max_failed_nodes, 0, 10000000));
        std::string policy;
        GUARDIA_TRY(s.string("on_abort", policy));
        if (policy == "keep_deployed")
            c.rollout.on_abort = AbortPolicy::keep_deployed;
        else if (policy == "roll_back_all")
            c.rollout.on_abort = AbortPolicy::roll_back_all;
        else if (s.find("on_abort"))
            return s.error("on_abort", "must be \"keep_deployed\" or \"roll_back_all\"");
        GUARDIA_TRY(s.integer("max_sessions", c.rollout.max_sessions, 1, 100000));
        GUARDIA_TRY(
            s.number("max_connections_per_second", c.rollout.max_connections_per_second, 0, 1e6));
        GUARDIA_TRY(s.seconds("node_deadline_s", c.rollout.node_deadline, 7 * 86400));
    }

    auto pipeline = object_of(top.find("pipeline"), src, "pipeline");
    if (!pipeline) return pipeline.error();
    if (*pipeline) {
        Section s(**pipeline, src, "pipeline");
        GUARDIA_TRY(s.only({"disk_threshold_percent", "keep_backups", "strict_consecutive",
                            "stale_lock_age_s", "connect_timeout_s", "command_timeout_s",
                            "backup_timeout_s", "transfer_timeout_s", "shutdown_timeout_s",
                            "startup_timeout_s"}));
        auto& p = c.pipeline;
        GUARDIA_TRY(s.integer("disk_threshold_percent", p.disk_threshold_percent, 1, 100));
        GUARDIA_TRY(s.integer("keep_backups", p.keep_backups, 1, 100));
        GUARDIA_TRY(s.integer("strict_consecutive", p.strict_consecutive, 1, 100));
        std::int64_t stale = p.stale_lock_age.count();
        GUARDIA_TRY(s.integer("stale_lock_age_s", stale, 1, 30LL * 86400));
        p.stale_lock_age = std::chrono::seconds(stale);
        GUARDIA_TRY(s.seconds("connect_timeout_s", p.connect_timeout, 3600));
        GUARDIA_TRY(s.seconds("command_timeout_s", p.command_timeout, 86400));
        GUARDIA_TRY(s.seconds("backup_timeout_s", p.backup_timeout, 86400));
        GUARDIA_TRY(s.seconds("transfer_timeout_s", p.transfer_timeout, 86400));
        GUARDIA_TRY(s.seconds("shutdown_timeout_s", p.shutdown_timeout, 86400));
        GUARDIA_TRY(s.seconds("startup_timeout_s", p.startup_timeout, 86400));
    }

    auto sshs = object_of(top.find("ssh"), src, "ssh");
    if (!sshs) return sshs.error();
    if (*sshs) {
        Section s(**sshs, src, "ssh");
        GUARDIA_TRY(s.only({"known_hosts", "host_key_policy", "credentials_file", "key_dirs"}));
        GUARDIA_TRY(s.path("known_hosts", c.known_hosts));
        GUARDIA_TRY(s.path("credentials_file", c.credentials_file));
        if (const auto* dirs = s.find("key_dirs")) {
            if (!dirs->is_array())
                return s.error("key_dirs", "must be an array of absolute directory paths");
            std::vector<std::string> out;
            for (std::size_t i = 0; i < dirs->get_array().size(); ++i) {
                const auto& d = dirs->get_array()[i];
                const std::string at = "key_dirs[" + std::to_string(i) + "]";
                if (!d.is_string()) return s.error(at, "must be a string");
                std::string dir(d.get_string());
                if (dir.empty() || dir[0] != '/') return s.error(at, "must be an absolute path");
                for (char ch : dir)
                    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f)
                        return s.error(at, "must not contain control characters");
                while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
                out.push_back(std::move(dir));
            }
            c.key_dirs = std::move(out);
        }
        std::string policy;
        GUARDIA_TRY(s.string("host_key_policy", policy));
        if (policy == "strict")
            c.host_key_policy = ssh::HostKeyPolicy::strict;
        else if (policy == "accept-new")
            c.host_key_policy = ssh::HostKeyPolicy::accept_new;
        else if (s.find("host_key_policy"))
            return s.error("host_key_policy", "must be \"strict\" or \"accept-new\"");
    }

    auto store = object_of(top.find("store"), src, "store");
    if (!store) return store.error();
    if (*store) {
        Section s(**store, src, "store");
        GUARDIA_TRY(s.only({"db"}));
        GUARDIA_TRY(s.path("db", c.db));
    }
    auto exec = object_of(top.find("exec"), src, "exec");
    if (!exec) return exec.error();
    if (*exec) {
        Section s(**exec, src, "exec");
        GUARDIA_TRY(s.only({"allow"}));
        if (const auto* allow = s.find("allow")) {
            if (!allow->is_array()) return s.error("allow", "must be an array of strings");
            std::vector<std::string> patterns;
            for (std::size_t i = 0; i < allow->as_array().size(); ++i) {
                const auto& v = allow->as_array()[i];
                if (!v.is_string())
                    return s.error("allow", "element " + std::to_string(i) + " must be a string");
                patterns.emplace_back(v.as_string());
            }
            for (std::size_t i = 0; i < patterns.size(); ++i)
                if (!make_command_policy({patterns[i]}))
                    return s.error("allow[" + std::to_string(i) + "]",
                                   "must be plain words: a command and its first arguments");
            auto policy = make_command_policy(patterns);
            if (!policy) return s.error("allow", policy.error().message);
            c.command_policy = std::move(*policy);
        }
    }
    if (const auto* v = top.find("service")) c.service = *v;
    if (const auto* v = top.find("notifications")) c.notifications = *v;
    return c;
}

Result<EngineConfig> load_engine_config(const std::string& path) {
    auto text = read_text_file(path, max_config_bytes, "configuration");
    if (!text) return text.error();
    return parse_engine_config(*text, path);
}

}  // namespace guardia::deploy
