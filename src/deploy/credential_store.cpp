#include "guardia/deploy/credential_store.hpp"

#include "guardia/deploy/inventory.hpp"

#include <boost/json.hpp>

namespace guardia::deploy {

CredentialPolicy cli_credential_policy(const std::optional<std::vector<std::string>>& key_dirs) {
    CredentialPolicy p;
    p.key_dirs = key_dirs_for_cli(key_dirs);
    return p;
}

CredentialPolicy service_credential_policy(const std::optional<std::vector<std::string>>& key_dirs) {
    CredentialPolicy p;
    p.key_dirs = key_dirs_for_service(key_dirs);
    p.require_host_binding = true;
    return p;
}

Result<std::shared_ptr<CredentialStore>> CredentialStore::open(const std::string& passwords_file) {
    auto store = std::make_shared<CredentialStore>();
    store->passwords_file_ = passwords_file;
    if (passwords_file.empty()) return store;
    Secret text;
    try {
        text = read_secret_file(passwords_file);
    } catch (const std::exception& e) {
        return Error(errc::invalid_argument, e.what());
    }
    boost::system::error_code ec;
    auto doc = boost::json::parse(text.reveal(), ec);
    if (ec || !doc.is_object())
        return Error(errc::invalid_argument,
                     "credentials file " + passwords_file +
                         ": must be a JSON object {\"name\": \"password\", ...}");
    for (const auto& [name, value] : doc.as_object()) {
        // Messages name the entry and the field, never the password.
        const std::string at = "credentials file " + passwords_file + ": entry '" + std::string(name) + "'";
        Password pw;
        if (value.is_string()) {
            pw.secret = Secret(std::string(value.as_string()));
        } else if (value.is_object()) {
            const auto& o = value.as_object();
            for (const auto& kv : o)
                if (kv.key() != "password" && kv.key() != "hosts")
                    return Error(errc::invalid_argument,
                                 at + ": unknown field '" + std::string(kv.key()) +
                                     "' (expected \"password\" and \"hosts\")");
            const auto* p = o.if_contains("password");
            if (!p || !p->is_string())
                return Error(errc::invalid_argument, at + ": \"password\" must be a string");
            const auto* h = o.if_contains("hosts");
            if (!h || !h->is_array() || h->as_array().empty())
                return Error(errc::invalid_argument,
                             at + ": \"hosts\" must be a non-empty array of host names or patterns");
            std::vector<std::string> hosts;
            for (std::size_t i = 0; i < h->as_array().size(); ++i) {
                const auto& e = h->as_array()[i];
                if (!e.is_string())
                    return Error(errc::invalid_argument,
                                 at + ": hosts[" + std::to_string(i) + "] must be a string");
                std::string host(e.as_string());
                if (auto problem = host_pattern_problem(host))
                    return Error(errc::invalid_argument,
                                 at + ": hosts[" + std::to_string(i) + "] " + *problem);
                hosts.push_back(std::move(host));
            }
            pw.secret = Secret(std::string(p->as_string()));
            pw.hosts = std::move(hosts);
        } else {
            return Error(errc::invalid_argument,
                         at + ": must be a string (the password) or {\"password\": \"...\", "
                              "\"hosts\": [...]}");
        }
        store->passwords_.emplace(std::string(name), std::move(pw));
    }
    return store;
}

Result<std::string> CredentialStore::admit_key(const Node& node,
                                               const CredentialPolicy& policy) const {
    auto resolved = resolve_key_file(node.auth.key_file, policy.key_dirs);
    if (!resolved)
        return Error(resolved.error().code, "node '" + node.name + "': field 'auth.key_file': " +
                                                resolved.error().message);
    return resolved;
}

Result<const CredentialStore::Password*> CredentialStore::admit_password(
    const Node& node, const CredentialPolicy& policy) const {
    const std::string at = "node '" + node.name + "': field 'auth.password_ref': '" +
                           node.auth.password_ref + "'";
    auto found = passwords_.find(node.auth.password_ref);
    if (found == passwords_.end())
        return Error(errc::invalid_argument,
                     at + " is not in the credentials file" +
                         (passwords_file_.empty() ? std::string(" (none configured: ssh.credentials_file)")
                                                  : " " + passwords_file_));
    const Password& pw = found->second;
    if (!pw.hosts) {
        if (policy.require_host_binding)
            return Error(errc::invalid_argument,
                         at + " is not bound to any host (host '" + node.host +
                             "'): the service hands a password only to the hosts it is bound to; "
                             "write it in the credentials file as {\"password\": \"...\", "
                             "\"hosts\": [\"" + node.host + "\", ...]}");
        return &pw;
    }
    if (!host_matches_any(*pw.hosts, node.host)) {
        std::string hosts;
        for (std::size_t i = 0; i < pw.hosts->size(); ++i) hosts += (i ? ", " : "") + (*pw.hosts)[i];
        return Error(errc::invalid_argument, at + " is bound to other hosts than '" + node.host +
                                                 "' (" + hosts + "): not sent");
    }
    return &pw;
}

Result<void> CredentialStore::admit(const Node& node, const CredentialPolicy& policy) const {
    if (!node.auth.key_file.empty()) {
        if (auto r = admit_key(node, policy); !r) return r.error();
    } else if (!node.auth.password_ref.empty()) {
        if (auto r = admit_password(node, policy); !r) return r.error();
    }
    return {};
}

Result<ssh::Credentials> CredentialStore::for_node(const Node& node) {
    ssh::Credentials c;
    c.user = node.user;
    if (!node.auth.key_file.empty()) {
        auto path = admit_key(node, policy_);
        if (!path) return path.error();
        auto found = keys_.find(*path);
        if (found == keys_.end()) {
            auto key = ssh::PrivateKey::load(*path);
            if (!key)
                return Error(key.error().code,
                             "node '" + node.name + "': auth.key_file: " + key.error().message);
            found = keys_.emplace(*path, *key).first;
        }
        c.key = found->second;
    } else if (!node.auth.password_ref.empty()) {
        auto pw = admit_password(node, policy_);
        if (!pw) return pw.error();
        c.password = (*pw)->secret;
    } else if (node.auth.agent) {
        c.use_agent = true;
    } else {
        return Error(errc::invalid_argument, "node '" + node.name + "': auth: no method");
    }
    return c;
}

std::vector<std::string> CredentialStore::secrets() const {
    std::vector<std::string> out;
    for (const auto& [name, pw] : passwords_) out.push_back(pw.secret.reveal());
    return out;
}

Result<ssh::ConnectOptions> CredentialStore::connect_options(
    const Node& node, std::shared_ptr<ssh::KnownHosts> known_hosts, ssh::HostKeyPolicy policy,
    std::chrono::milliseconds timeout, std::shared_ptr<spdlog::logger> logger) {
    auto cred = for_node(node);
    if (!cred) return cred.error();
    ssh::ConnectOptions o;
    o.host = node.host;
    o.port = node.ssh_port;
    o.credentials = std::move(*cred);
    o.known_hosts = std::move(known_hosts);
    o.host_key_policy = policy;
    o.timeout = timeout;
    o.logger = std::move(logger);
    return o;
}

}  // namespace guardia::deploy
