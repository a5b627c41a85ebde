#include "cli.hpp"

#include "guardia/deploy/owner.hpp"

#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string_view>

namespace guardia::cli {

Args::Args(int argc, char** argv, int first) {
    for (int k = first; k < argc; ++k) args_.emplace_back(argv[k]);
}

std::string Args::flag() {
    const std::string& a = args_[i_++];
    inline_value_.reset();
    if (a == "-h") {
        flag_ = "--help";
        return flag_;
    }
    if (a.rfind("--", 0) != 0 || a.size() < 3) throw UsageError("unexpected argument '" + a + "'");
    auto eq = a.find('=');
    if (eq != std::string::npos) {
        flag_ = a.substr(0, eq);
        inline_value_ = a.substr(eq + 1);
    } else {
        flag_ = a;
    }
    return flag_;
}

std::string Args::value() {
    if (inline_value_) {
        std::string v = *inline_value_;
        inline_value_.reset();
        return v;
    }
    // "--artifact --db x" is a forgotten value, not an artifact named "--db".
    if (done() || args_[i_].rfind("--", 0) == 0) throw UsageError(flag_ + " needs a value");
    return args_[i_++];
}

std::vector<std::string> Args::rest() {
    std::vector<std::string> out(args_.begin() + static_cast<std::ptrdiff_t>(i_), args_.end());
    i_ = args_.size();
    return out;
}

bool common_flag(const std::string& flag, Args& args, Common& c) {
    if (flag == "--inventory")
        c.inventory_path = args.value();
    else if (flag == "--config")
        c.config_path = args.value();
    else if (flag == "--known-hosts")
        c.known_hosts_path = args.value();
    else if (flag == "--db")
        c.db_path = args.value();
    else if (flag == "--host-key-policy") {
        c.host_key_policy = args.value();
        if (c.host_key_policy != "strict" && c.host_key_policy != "accept-new")
            throw UsageError("--host-key-policy must be strict or accept-new, not '" +
                             c.host_key_policy + "'");
    } else if (flag == "--json")
        c.json = true;
    else
        return false;
    return true;
}

namespace {

struct ConfigChoice {
    std::string path;  // "": built-in defaults
    const char* rule;  // which rule chose it
};

ConfigChoice choose_config(const Common& c) {
    if (!c.config_path.empty()) return {c.config_path, "--config"};
    if (const char* env = std::getenv("GUARDIA_CONFIG"); env != nullptr && *env != '\0')
        return {env, "GUARDIA_CONFIG"};
    struct stat st {};
    if (::stat(system_config_path, &st) == 0) return {system_config_path, "it exists"};
    return {"", "no --config, GUARDIA_CONFIG or /etc/guardia/guardia.json"};
}

}  // namespace

std::string resolve_config_path(const Common& c) {
    return choose_config(c).path;
}

std::string describe_config(const Common& c) {
    const ConfigChoice choice = choose_config(c);
    return (choice.path.empty() ? std::string("built-in defaults") : choice.path) + " (" +
           choice.rule + ")";
}

std::string resolve_db_path(const Common& c, const deploy::EngineConfig& config) {
    if (!c.db_path.empty()) return c.db_path;
    if (!config.db.empty()) return config.db;
    return "guardia.db";
}

int print_help(const char* usage, const Common& c, bool reads_config) {
    std::fputs(usage, stdout);
    if (reads_config) std::printf("\nconfiguration now: %s\n", describe_config(c).c_str());
    return 0;
}

void harden_process() {
    (void)::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    const struct rlimit none {0, 0};
    (void)::setrlimit(RLIMIT_CORE, &none);
}

Engine load_engine(const Common& c, bool with_inventory) {
    harden_process();
    Engine e;
    if (const ConfigChoice choice = choose_config(c); !choice.path.empty()) {
        auto cfg = deploy::load_engine_config(choice.path);
        if (!cfg)
            throw UsageError(
                (std::string_view(choice.rule) == "GUARDIA_CONFIG" ? "GUARDIA_CONFIG: " : "") +
                cfg.error().message);
        e.config = std::move(*cfg);
        e.config_path = choice.path;
    }
    if (with_inventory) {
        if (c.inventory_path.empty()) throw UsageError("--inventory FILE is required");
        auto inv = deploy::load_inventory(c.inventory_path, e.config.command_policy);
        if (!inv) throw UsageError(inv.error().message);
        e.inventory = std::move(*inv);
    }

    std::string kh = c.known_hosts_path;
    if (kh.empty()) kh = e.config.known_hosts;
    if (kh.empty()) {
        const char* home = std::getenv("HOME");
        kh = std::string(home ? home : "/root") + "/.ssh/known_hosts";
    }
    auto known = ssh::KnownHosts::load(kh);
    if (!known) throw UsageError("known_hosts: " + known.error().message);
    e.known_hosts = *known;
    e.host_key_policy = e.config.host_key_policy;
    if (c.host_key_policy == "strict")
        e.host_key_policy = ssh::HostKeyPolicy::strict;
    else if (c.host_key_policy == "accept-new")
        e.host_key_policy = ssh::HostKeyPolicy::accept_new;

    auto creds = deploy::CredentialStore::open(e.config.credentials_file);
    if (!creds) throw UsageError(creds.error().message);
    e.credentials = *creds;
    // ssh.key_dirs when set; bound passwords only to their hosts. Checked up front for the
    // command line's inventory (nothing starts), and again whenever credentials are handed out.
    // `guardia serve` replaces this with the service's policy.
    e.credentials->set_policy(deploy::cli_credential_policy(e.config.key_dirs));
    for (const auto& node : e.inventory.nodes)
        if (auto ok = e.credentials->admit(node, e.credentials->policy()); !ok)
            throw UsageError(c.inventory_path + ": " + ok.error().message);
    return e;
}

std::string utc_stamp_compact() {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
    return buf;
}

std::string owner_id() {
    return deploy::local_owner_id();
}

}  // namespace guardia::cli
