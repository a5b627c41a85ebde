#include "guardia/deploy/inventory.hpp"

#include "guardia/core/sanitizer.hpp"

#include "guardia/core/json_input.hpp"

#include <boost/json/value.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <set>

namespace guardia::deploy {
namespace {

namespace json = boost::json;

// Bounds on input: an inventory of 10,000 nodes is a few MiB.
constexpr std::uintmax_t max_inventory_bytes = 64u << 20;
constexpr std::size_t max_path_length = 4096;
constexpr std::size_t max_command_length = 8192;
constexpr std::size_t max_label_length = 128;  // inst_id, system_name, password_ref
constexpr std::int64_t max_health_seconds = 3600;
// Tiers as the configuration's rollout.tiers accepts them; validate_rollout refuses a node
// whose tier the configuration does not list.
constexpr std::int64_t min_tier = 1, max_tier = 99;

// ------------------------------------------------------------------ value checks
//
// Each returns what is wrong with a value, or nothing.
using Problem = std::optional<std::string>;

bool has_control(std::string_view s) {
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) return true;
    }
    return false;
}

bool is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

bool is_name(std::string_view s, std::size_t max) {
    if (s.empty() || s.size() > max) return false;
    for (char c : s)
        if (!is_name_char(c)) return false;
    return true;
}

Problem name_problem(std::string_view s) {
    if (!is_name(s, 64)) return "must be 1-64 characters of A-Z a-z 0-9 . _ -";
    return std::nullopt;
}

Problem host_problem(std::string_view s) {
    if (s.empty()) return "must not be empty";
    if (s.size() > 255) return "must be at most 255 characters";
    for (char c : s)
        if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
            return "must not contain whitespace or control characters";
    if (s[0] == '-') return "must not start with '-'";
    return std::nullopt;
}

Problem user_problem(std::string_view s) {
    if (!is_name(s, 32)) return "must be 1-32 characters of A-Z a-z 0-9 . _ -";
    if (s[0] == '-') return "must not start with '-'";
    return std::nullopt;
}

// An absolute path in normal form: what the shell, SFTP and a human all read the same way.
Problem path_problem(std::string_view p) {
    if (p.empty()) return "must not be empty";
    if (has_control(p)) return "must not contain control characters (NUL, newline, ...)";
    if (p[0] == '-') return "must not start with '-'";
    if (p[0] != '/') return "must be an absolute path";
    if (p.size() > max_path_length) return "must be at most 4096 characters";
    if (p.find("//") != std::string_view::npos) return "must be normalised (no '//')";
    if (p.size() > 1 && p.back() == '/') return "must be normalised (no trailing '/')";
    for (std::size_t i = 1; i < p.size();) {
        auto slash = std::min(p.find('/', i), p.size());
        auto comp = p.substr(i, slash - i);
        if (comp == "." || comp == "..") return "must be normalised (no '.' or '..' components)";
        i = slash + 1;
    }
    return std::nullopt;
}

Problem deploy_path_problem(std::string_view p) {
    if (auto problem = path_problem(p)) return problem;
    if (is_system_path(p))
        return "must not be '/' or a top-level system directory ('" + std::string(p) + "')";
    return std::nullopt;
}

Problem label_problem(std::string_view s) {
    if (s.size() > max_label_length) return "must be at most 128 characters";
    if (has_control(s)) return "must not contain control characters";
    return std::nullopt;
}

Problem password_ref_problem(std::string_view s) {
    if (s.empty()) return "must not be empty";
    if (s.size() > max_label_length) return "must be at most 128 characters";
    for (char c : s)
        if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f)
            return "must be printable ASCII without spaces";
    return std::nullopt;
}

Problem command_chars_problem(std::string_view s) {
    if (s.size() > max_command_length) return "must be at most 8192 characters";
    if (s.find_first_of(std::string_view("\0\n\r", 3)) != std::string_view::npos)
        return "must not contain NUL or newline characters";
    return std::nullopt;
}

Problem health_path_problem(std::string_view s) {
    if (s.empty() || s[0] != '/') return "must start with '/'";
    if (s.size() > 2048) return "must be at most 2048 characters";
    for (char c : s)
        if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f)
            return "must be printable ASCII without spaces";
    return std::nullopt;
}

// ------------------------------------------------------------------ reading a node

// Where the node being read is, for messages: "nodes.json: node 'web-01'".
struct NodeContext {
    std::string_view source;
    std::string label;
    const CommandPolicy* policy = nullptr;  // exec.allow, when the caller has one
    // The node's fields (dotted: "user", "health.port") whose value came from the
    // inventory's "defaults" (merge_defaults).
    const std::set<std::string, std::less<>>* from_defaults = nullptr;

    // " (from defaults.user)" when `field` came from the defaults, else "".
    std::string origin(std::string_view field) const {
        std::string out;  // appended, not " (" + std::string: GCC bug 105329 at -O3
        if (from_defaults == nullptr || !from_defaults->contains(field)) return out;
        out += " (from defaults.";
        out += field;
        out += ')';
        return out;
    }
    Error field_error(std::string_view field, std::string_view problem,
                      errc code = errc::invalid_argument) const {
        return Error(code, std::string(source) + ": " + label + ": field '" + std::string(field) +
                               "'" + origin(field) + ": " + std::string(problem));
    }
    Error node_error(std::string_view problem) const {
        return Error(errc::invalid_argument,
                     std::string(source) + ": " + label + ": " + std::string(problem));
    }
};

// Refuses any field not in `known`, by its dotted name.
Result<void> check_fields(const json::object& obj, std::initializer_list<std::string_view> known,
                          std::string_view prefix, const NodeContext& ctx) {
    for (const auto& kv : obj) {
        bool ok = false;
        for (auto k : known) ok = ok || kv.key() == k;
        if (!ok) {
            const std::string field = std::string(prefix) + printable(kv.key());
            return ctx.node_error("unknown field '" + field + "'" + ctx.origin(field));
        }
    }
    return {};
}

class FieldReader {
  public:
    FieldReader(const json::object& obj, std::string prefix, const NodeContext& ctx)
        : obj_(obj), prefix_(std::move(prefix)), ctx_(ctx) {}

    std::string field(std::string_view key) const { return prefix_ + std::string(key); }
    Error fail(std::string_view key, std::string_view problem,
               errc code = errc::invalid_argument) const {
        return ctx_.field_error(field(key), problem, code);
    }
    bool has(std::string_view key) const { return obj_.contains(key); }

    // Absent: `out` keeps its default, or an error if required.
    Result<void> string(std::string_view key, bool required, std::string& out,
                        Problem (*check)(std::string_view) = nullptr) const {
        const json::value* v = obj_.if_contains(key);
        if (v == nullptr) return required ? Result<void>(fail(key, "is required")) : Result<void>();
        if (!v->is_string()) return fail(key, "must be a string");
        std::string_view s(v->get_string().data(), v->get_string().size());
        if (check != nullptr)
            if (auto problem = check(s)) return fail(key, *problem);
        out = std::string(s);
        return {};
    }

    Result<void> integer(std::string_view key, bool required, std::int64_t lo, std::int64_t hi,
                         std::int64_t& out) const {
        const json::value* v = obj_.if_contains(key);
        if (v == nullptr) return required ? Result<void>(fail(key, "is required")) : Result<void>();
        const std::string range =
            "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
        if (v->is_int64() && v->get_int64() >= lo && v->get_int64() <= hi) {
            out = v->get_int64();
            return {};
        }
        return fail(key, range);
    }

    Result<void> boolean(std::string_view key, bool& out) const {
        const json::value* v = obj_.if_contains(key);
        if (v == nullptr) return {};
        if (!v->is_bool()) return fail(key, "must be true or false");
        out = v->get_bool();
        return {};
    }

    // The sub-object `key`, or null when absent (an error if present but not an object).
    Result<const json::object*> object(std::string_view key, bool required) const {
        const json::value* v = obj_.if_contains(key);
        if (v == nullptr) {
            if (required) return fail(key, "is required");
            return static_cast<const json::object*>(nullptr);
        }
        if (!v->is_object()) return fail(key, "must be an object");
        return &v->get_object();
    }

  private:
    const json::object& obj_;
    std::string prefix_;
    const NodeContext& ctx_;
};

Result<NodeAuth> read_auth(const FieldReader& node, const NodeContext& ctx) {
    auto obj = node.object("auth", true);
    if (!obj) return obj.error();
    if (auto r = check_fields(**obj, {"key_file", "password_ref", "agent"}, "auth.", ctx); !r)
        return r.error();
    FieldReader f(**obj, "auth.", ctx);
    int methods = 0;
    for (auto key : {"key_file", "password_ref", "agent"}) methods += f.has(key) ? 1 : 0;
    if (methods != 1)
        return node.fail("auth", "must hold exactly one of 'key_file', 'password_ref', 'agent'");
    NodeAuth auth;
    if (auto r = f.string("key_file", false, auth.key_file, path_problem); !r) return r.error();
    if (auto r = f.string("password_ref", false, auth.password_ref, password_ref_problem); !r)
        return r.error();
    if (auto r = f.boolean("agent", auth.agent); !r) return r.error();
    if (f.has("agent") && !auth.agent)
        return f.fail("agent", "must be true (give 'key_file' or 'password_ref' instead)");
    return auth;
}

Result<void> read_command(const FieldReader& f, std::string_view key, std::string& out,
                          const CommandPolicy* policy) {
    if (auto r = f.string(key, false, out, command_chars_problem); !r) return r;
    static const CommandPolicy no_policy;
    if (out.empty()) return {};
    if (auto r = sanitize_command(out, policy ? *policy : no_policy); !r)
        return f.fail(key, r.error().message, errc::security_violation);
    return {};
}

// A readable regular file now (health.ca_file): the check runs much later, and a typo found
// then would fail every node's HEALTH after its new build went live.
Problem readable_file_problem(std::string_view p) {
    if (auto problem = path_problem(p)) return problem;
    const std::string path(p);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return "cannot be read: " + std::string(std::strerror(errno));
    struct stat st {};
    const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    ::close(fd);
    if (!regular) return "must be a regular file";
    return std::nullopt;
}

Problem tls_server_name_problem(std::string_view s) {
    if (auto problem = host_problem(s)) return problem;
    for (char c : s)
        if (!is_name_char(c) && c != ':') return "must be a DNS name or an IP address";
    return std::nullopt;
}

Problem body_contains_problem(std::string_view s) {
    if (s.empty()) return "must not be empty (leave the field out instead)";
    if (s.size() > 1024) return "must be at most 1024 characters";
    if (s.find('\0') != std::string_view::npos) return "must not contain NUL";
    return std::nullopt;
}

Result<void> read_expect_status(const FieldReader& f, const json::object& obj, HealthSpec& health) {
    const json::value* v = obj.if_contains("expect_status");
    if (v == nullptr) return {};
    if (!v->is_array() || v->get_array().empty())
        return f.fail("expect_status",
                      "must be a non-empty list of statuses (204) and ranges (\"200-299\")");
    const auto& list = v->get_array();
    for (std::size_t i = 0; i < list.size(); ++i) {
        const std::string key = "expect_status[" + std::to_string(i) + "]";
        Result<void> added;
        if (list[i].is_int64())
            added = http::add_status_entry(health.expect_status, list[i].get_int64());
        else if (list[i].is_string())
            added = http::add_status_entry(
                health.expect_status,
                std::string_view(list[i].get_string().data(), list[i].get_string().size()));
        else
            added = Error(errc::invalid_argument,
                          "must be a status (204) or a range as a string (\"200-299\")");
        if (!added) return f.fail(key, added.error().message);
    }
    return {};
}

// Which fields each type takes; any other given is refused (naming the type), so that a field
// which would be silently ignored never looks like it is in force.
bool health_field_applies(std::string_view key, http::ProbeKind type) {
    using http::ProbeKind;
    if (key == "type" || key == "timeout_s" || key == "interval_s" || key == "attempt_timeout_s")
        return true;
    if (key == "port") return type != ProbeKind::command;
    if (key == "path" || key == "expect_status" || key == "body_contains")
        return type == ProbeKind::http || type == ProbeKind::https;
    if (key == "ca_file" || key == "tls_server_name" || key == "insecure_skip_verify")
        return type == ProbeKind::https;
    if (key == "command") return type == ProbeKind::command;
    return false;
}

Result<HealthSpec> read_health(const FieldReader& node, const NodeContext& ctx) {
    auto obj = node.object("health", true);
    if (!obj) return obj.error();
    if (auto r = check_fields(**obj,
                              {"type", "port", "path", "timeout_s", "interval_s",
                               "attempt_timeout_s", "expect_status", "body_contains", "ca_file",
                               "tls_server_name", "insecure_skip_verify", "command"},
                              "health.", ctx);
        !r)
        return r.error();
    FieldReader f(**obj, "health.", ctx);
    HealthSpec health;
    std::string type = "http";
    if (auto r = f.string("type", false, type); !r) return r.error();
    if (!http::parse_probe_kind(type, health.type))
        return f.fail("type", "must be one of \"http\", \"https\", \"tcp\", \"command\", not '" +
                                  printable(type) + "'");
    for (const auto& kv : **obj)
        if (!health_field_applies(kv.key(), health.type))
            return f.fail(kv.key(), "does not apply to type '" + type + "'");

    std::int64_t port = 0, timeout = health.timeout.count(), interval = health.interval.count(),
                 attempt = health.attempt_timeout.count();
    if (auto r = f.integer("port", health.type != http::ProbeKind::command, 1, 65535, port); !r)
        return r.error();
    health.port = static_cast<std::uint16_t>(port);
    if (auto r = f.string("path", false, health.path, health_path_problem); !r) return r.error();
    if (auto r = f.integer("timeout_s", false, 1, max_health_seconds, timeout); !r)
        return r.error();
    if (auto r = f.integer("interval_s", false, 1, max_health_seconds, interval); !r)
        return r.error();
    if (auto r = f.integer("attempt_timeout_s", false, 1, max_health_seconds, attempt); !r)
        return r.error();
    if (interval > timeout)
        return f.fail("interval_s", "must not exceed timeout_s (" + std::to_string(timeout) + ")");
    health.timeout = std::chrono::seconds(timeout);
    health.interval = std::chrono::seconds(interval);
    health.attempt_timeout = std::chrono::seconds(attempt);
    if (auto r = read_expect_status(f, **obj, health); !r) return r.error();
    if (auto r = f.string("body_contains", false, health.body_contains, body_contains_problem); !r)
        return r.error();
    if (auto r = f.string("ca_file", false, health.ca_file, readable_file_problem); !r)
        return r.error();
    if (auto r = f.string("tls_server_name", false, health.tls_server_name,
                          tls_server_name_problem);
        !r)
        return r.error();
    if (auto r = f.boolean("insecure_skip_verify", health.insecure_skip_verify); !r)
        return r.error();
    if (health.insecure_skip_verify && !health.ca_file.empty())
        return f.fail("insecure_skip_verify",
                      "contradicts 'ca_file' (a CA file is only used to verify)");
    if (auto r = read_command(f, "command", health.command, ctx.policy); !r) return r.error();
    if (health.type == http::ProbeKind::command && health.command.empty())
        return f.fail("command", "is required for type 'command' (a non-empty command)");
    return health;
}

// A node's fields; "defaults" may hold any of them but "name".
const std::initializer_list<std::string_view> node_fields = {
    "name",        "host",        "ssh_port",         "user",         "auth",
    "deploy_path", "tier",        "inst_id",          "system_name",  "requires_restart",
    "shutdown_cmd", "startup_cmd", "health"};

Result<Node> read_node(const json::object& obj, const NodeContext& ctx) {
    if (auto r = check_fields(obj, node_fields, "", ctx); !r) return r.error();
    FieldReader f(obj, "", ctx);
    Node node;
    std::int64_t port = node.ssh_port, tier = node.tier;
    if (auto r = f.string("name", true, node.name, name_problem); !r) return r.error();
    if (auto r = f.string("host", true, node.host, host_problem); !r) return r.error();
    if (auto r = f.integer("ssh_port", false, 1, 65535, port); !r) return r.error();
    node.ssh_port = static_cast<std::uint16_t>(port);
    if (auto r = f.string("user", true, node.user, user_problem); !r) return r.error();
    auto auth = read_auth(f, ctx);
    if (!auth) return auth.error();
    node.auth = std::move(*auth);
    if (auto r = f.string("deploy_path", true, node.deploy_path, deploy_path_problem); !r)
        return r.error();
    if (auto r = f.integer("tier", false, min_tier, max_tier, tier); !r) return r.error();
    node.tier = static_cast<int>(tier);
    if (auto r = f.string("inst_id", false, node.inst_id, label_problem); !r) return r.error();
    if (auto r = f.string("system_name", false, node.system_name, label_problem); !r)
        return r.error();
    if (auto r = f.boolean("requires_restart", node.requires_restart); !r) return r.error();
    if (auto r = read_command(f, "shutdown_cmd", node.shutdown_cmd, ctx.policy); !r) return r.error();
    if (auto r = read_command(f, "startup_cmd", node.startup_cmd, ctx.policy); !r) return r.error();
    if (node.requires_restart) {
        if (node.shutdown_cmd.empty())
            return f.fail("shutdown_cmd",
                          "must be a non-empty command when requires_restart is true");
        if (node.startup_cmd.empty())
            return f.fail("startup_cmd",
                          "must be a non-empty command when requires_restart is true");
    }
    auto health = read_health(f, ctx);
    if (!health) return health.error();
    node.health = std::move(*health);
    return node;
}

// ------------------------------------------------------------------ defaults

// The top-level "defaults": an object of node fields ("name" excepted: names are unique).
// Its values are checked in each node that takes them, where a message names both.
Result<const json::object*> read_defaults(const json::object& root, const std::string& src) {
    const auto* v = root.if_contains("defaults");
    if (v == nullptr) return static_cast<const json::object*>(nullptr);
    if (!v->is_object()) return Error(errc::invalid_argument, src + ": field 'defaults' must be an object");
    for (const auto& kv : v->get_object()) {
        if (kv.key() == "name")
            return Error(errc::invalid_argument,
                         src + ": defaults: field 'name' cannot have a default (names are unique)");
        if (std::find(node_fields.begin(), node_fields.end(), kv.key()) == node_fields.end())
            return Error(errc::invalid_argument,
                         src + ": defaults: unknown field '" + printable(kv.key()) + "'");
    }
    return &v->get_object();
}

// The node with the defaults merged in (docs/OPERATIONS.md, "Defaults"): a field the node
// sets wins; an object field both set ("health", "auth", ...) is merged key by key, one
// level deep, the node's keys winning -- except "auth", whose keys are alternatives: a node's
// non-empty "auth" replaces the defaults' one. `from_defaults` receives the dotted names of
// the fields that came from the defaults.
json::object merge_defaults(const json::object& node, const json::object& defaults,
                            std::set<std::string, std::less<>>& from_defaults) {
    json::object out = node;
    for (const auto& kv : defaults) {
        const std::string key(kv.key());
        json::value* mine = out.if_contains(kv.key());
        if (mine == nullptr) {
            out.emplace(kv.key(), kv.value());
            from_defaults.insert(key);
            if (const auto* sub = kv.value().if_object())
                for (const auto& s : *sub) from_defaults.insert(key + "." + std::string(s.key()));
            continue;
        }
        auto* mine_obj = mine->if_object();
        const auto* theirs = kv.value().if_object();
        if (mine_obj == nullptr || theirs == nullptr) continue;  // the node's value wins
        if (key == "auth" && !mine_obj->empty()) continue;
        for (const auto& s : *theirs)
            if (!mine_obj->contains(s.key())) {
                mine_obj->emplace(s.key(), s.value());
                from_defaults.insert(key + "." + std::string(s.key()));
            }
    }
    return out;
}

// "node 'web-01'" when the node has a valid name, else its position "nodes[3]".
std::string node_label(const json::value& v, std::size_t index) {
    if (const auto* obj = v.if_object())
        if (const auto* name = obj->if_contains("name"); name != nullptr && name->is_string()) {
            std::string_view s(name->get_string().data(), name->get_string().size());
            if (!name_problem(s)) return "node '" + std::string(s) + "'";
        }
    return "nodes[" + std::to_string(index) + "]";
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

// Two nodes on one directory of one target (or one inside the other) would race: each
// backs up, replaces and restores files the other is changing.
class TargetIndex {
  public:
    Problem add(const Node& node, const std::string& label) {
        auto& paths = targets_[lower(node.host) + " " + std::to_string(node.ssh_port)];
        const std::string& p = node.deploy_path;
        const std::string target =
            " (host " + node.host + ", port " + std::to_string(node.ssh_port) + ")";
        if (auto it = paths.find(p); it != paths.end())
            return "same target directory as " + it->second + target +
                   ": two nodes on one directory would race";
        for (auto slash = p.find('/', 1); slash != std::string::npos;
             slash = p.find('/', slash + 1))
            if (auto it = paths.find(p.substr(0, slash)); it != paths.end())
                return "inside the deploy_path of " + it->second + " (" + it->first + ")" + target +
                       ": the two nodes would race";
        if (auto it = paths.lower_bound(p + "/");
            it != paths.end() && it->first.starts_with(p + "/"))
            return "contains the deploy_path of " + it->second + " (" + it->first + ")" + target +
                   ": the two nodes would race";
        paths.emplace(p, label);
        return std::nullopt;
    }

  private:
    std::map<std::string, std::map<std::string, std::string>>
        targets_;  // host port -> path -> node
};

}  // namespace

Result<Inventory> parse_inventory(std::string_view text, std::string_view source) {
    static const CommandPolicy no_policy;
    return parse_inventory(text, source, no_policy);
}

Result<Inventory> parse_inventory(std::string_view text, std::string_view source,
                                  const CommandPolicy& policy) {
    const std::string src(source);
    auto parsed = parse_json_document(text, source);
    if (!parsed) return parsed.error();
    const json::value& root = *parsed;

    const auto* obj = root.if_object();
    if (obj == nullptr)
        return Error(errc::invalid_argument, src + ": must be a JSON object {\"nodes\": [...]}");
    for (const auto& kv : *obj)
        if (kv.key() != "nodes" && kv.key() != "defaults")
            return Error(errc::invalid_argument,
                         src + ": unknown field '" + printable(kv.key()) + "'");
    auto defaults = read_defaults(*obj, src);
    if (!defaults) return defaults.error();
    const auto* nodes = obj->if_contains("nodes");
    if (nodes == nullptr) return Error(errc::invalid_argument, src + ": field 'nodes' is required");
    if (!nodes->is_array() || nodes->get_array().empty())
        return Error(errc::invalid_argument, src + ": field 'nodes' must be a non-empty array");

    Inventory inventory;
    std::map<std::string, std::size_t, std::less<>> names;
    TargetIndex targets;
    const auto& array = nodes->get_array();
    inventory.nodes.reserve(array.size());
    for (std::size_t i = 0; i < array.size(); ++i) {
        std::set<std::string, std::less<>> from_defaults;
        const NodeContext ctx{source, node_label(array[i], i), &policy, &from_defaults};
        if (!array[i].is_object()) return ctx.node_error("must be an object");
        auto node = *defaults == nullptr
                        ? read_node(array[i].get_object(), ctx)
                        : read_node(merge_defaults(array[i].get_object(), **defaults, from_defaults),
                                    ctx);
        if (!node) return node.error();
        if (auto [it, fresh] = names.emplace(node->name, i); !fresh)
            return ctx.field_error("name",
                                   "duplicate of nodes[" + std::to_string(it->second) + "]");
        if (auto problem = targets.add(*node, ctx.label))
            return ctx.field_error("deploy_path", *problem);
        inventory.nodes.push_back(std::move(*node));
    }
    return inventory;
}

Result<Inventory> load_inventory(const std::string& path) {
    static const CommandPolicy no_policy;
    return load_inventory(path, no_policy);
}

Result<Inventory> load_inventory(const std::string& path, const CommandPolicy& policy) {
    auto text = read_text_file(path, max_inventory_bytes, "inventory");
    if (!text) return text.error();
    return parse_inventory(*text, path, policy);
}

}  // namespace guardia::deploy
