// Fuzz target: the inventory reader, guardia::deploy::parse_inventory (deploy/inventory.hpp).
// The input is the inventory's JSON text.
//
// Properties: no crash, sanitizer report or leak; an error is invalid_argument or
// security_violation, names the source and is one line of valid UTF-8 without control
// characters (it is printed, logged and quoted in JSON API answers); an accepted inventory holds only what the header promises, checked
// here independently of the parser: what reaches a remote command or a connection is valid.
#include "guardia/core/sanitizer.hpp"
#include "guardia/deploy/inventory.hpp"

#include "fuzz_common.hpp"

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

namespace {

using guardia::fuzz::fail;
using guardia::fuzz::has_control;

constexpr std::string_view source = "fuzz.json";

bool is_name(std::string_view s, std::size_t max) {
    if (s.empty() || s.size() > max) return false;
    for (char c : s)
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    return true;
}

bool is_normal_absolute_path(std::string_view p) {
    if (p.empty() || p[0] != '/' || has_control(p) || p.find("//") != std::string_view::npos)
        return false;
    if (p.size() > 1 && p.back() == '/') return false;
    return p.find("/./") == std::string_view::npos && p.find("/../") == std::string_view::npos &&
           !p.ends_with("/.") && !p.ends_with("/..");
}

void check_node(const guardia::deploy::Node& n, std::set<std::string>& names) {
    GUARDIA_FUZZ_CHECK(is_name(n.name, 64), n.name);
    GUARDIA_FUZZ_CHECK(names.insert(n.name).second, "duplicate name " + n.name);
    GUARDIA_FUZZ_CHECK(!n.host.empty() && n.host.size() <= 255 && n.host[0] != '-', n.host);
    for (char c : n.host)
        GUARDIA_FUZZ_CHECK(static_cast<unsigned char>(c) > 0x20 && c != 0x7f, n.host);
    GUARDIA_FUZZ_CHECK(n.ssh_port != 0, n.name);
    GUARDIA_FUZZ_CHECK(is_name(n.user, 32) && n.user[0] != '-', n.user);
    const int methods = (n.auth.key_file.empty() ? 0 : 1) +
                        (n.auth.password_ref.empty() ? 0 : 1) + (n.auth.agent ? 1 : 0);
    GUARDIA_FUZZ_CHECK(methods == 1, n.name);
    if (!n.auth.key_file.empty())
        GUARDIA_FUZZ_CHECK(is_normal_absolute_path(n.auth.key_file), n.auth.key_file);
    GUARDIA_FUZZ_CHECK(is_normal_absolute_path(n.deploy_path), n.deploy_path);
    GUARDIA_FUZZ_CHECK(!guardia::is_system_path(n.deploy_path), n.deploy_path);
    GUARDIA_FUZZ_CHECK(n.tier >= 1 && n.tier <= 99, n.name);
    GUARDIA_FUZZ_CHECK(!has_control(n.inst_id) && !has_control(n.system_name), n.name);
    for (const std::string* cmd : {&n.shutdown_cmd, &n.startup_cmd, &n.health.command}) {
        GUARDIA_FUZZ_CHECK(cmd->find_first_of(std::string_view("\0\n\r", 3)) == std::string::npos,
                           *cmd);
        if (!cmd->empty()) GUARDIA_FUZZ_CHECK(guardia::sanitize_command(*cmd).has_value(), *cmd);
    }
    if (n.requires_restart)
        GUARDIA_FUZZ_CHECK(!n.shutdown_cmd.empty() && !n.startup_cmd.empty(), n.name);
    // A command check has a command and no port; every other type a port and no command.
    const bool command_check = n.health.type == guardia::http::ProbeKind::command;
    GUARDIA_FUZZ_CHECK((n.health.port != 0) != command_check, n.name);
    GUARDIA_FUZZ_CHECK(n.health.command.empty() != command_check, n.name);
    GUARDIA_FUZZ_CHECK(!(n.health.insecure_skip_verify && !n.health.ca_file.empty()), n.name);
    if (!n.health.ca_file.empty())
        GUARDIA_FUZZ_CHECK(is_normal_absolute_path(n.health.ca_file), n.health.ca_file);
    GUARDIA_FUZZ_CHECK(!n.health.path.empty() && n.health.path[0] == '/', n.health.path);
    for (char c : n.health.path)
        GUARDIA_FUZZ_CHECK(static_cast<unsigned char>(c) > 0x20 && static_cast<unsigned char>(c) < 0x7f,
                           n.health.path);
    GUARDIA_FUZZ_CHECK(n.health.timeout.count() >= 1 && n.health.interval.count() >= 1 &&
                           n.health.interval <= n.health.timeout,
                       n.name);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto inventory = guardia::deploy::parse_inventory(text, source);
    if (!inventory) {
        const auto& e = inventory.error();
        GUARDIA_FUZZ_CHECK(e.code == guardia::errc::invalid_argument ||
                               e.code == guardia::errc::security_violation,
                           e.describe());
        GUARDIA_FUZZ_CHECK(e.message.starts_with(source), e.message);
        GUARDIA_FUZZ_CHECK(!has_control(e.message), e.message);
        // Valid UTF-8 also for the sanitizer's refusals: its fragment is cut on a character
        // boundary (the error becomes JSON in the API's answer).
        GUARDIA_FUZZ_CHECK(guardia::fuzz::is_utf8(e.message), e.message);
        return 0;
    }
    GUARDIA_FUZZ_CHECK(!inventory->nodes.empty(), "an accepted inventory has nodes");
    std::set<std::string> names;
    for (const auto& node : inventory->nodes) check_node(node, names);
    return 0;
}
