#include "guardia/deploy/credential_store.hpp"

#include "guardia/deploy/inventory.hpp"

#include <boost/json.hpp>

namespace guardia::deploy {

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
        if (!value.is_string())
            return Error(errc::invalid_argument, "credentials file " + passwords_file +
                                                     ": entry '" + std::string(name) +
                                                     "' is not a string");
        store->passwords_.emplace(std::string(name), Secret(std::string(value.as_string())));
    }
    return store;
}

Result<ssh::Credentials> CredentialStore::for_node(const Node& node) {
    ssh::Credentials c;
    c.user = node.user;
    if (!node.auth.key_file.empty()) {
        auto found = keys_.find(node.auth.key_file);
        if (found == keys_.end()) {
            auto key = ssh::PrivateKey::load(node.auth.key_file);
            if (!key)
                return Error(key.error().code,
                             "node '" + node.name + "': auth.key_file: " + key.error().message);
            found = keys_.emplace(node.auth.key_file, *key).first;
        }
        c.key = found->second;
    } else if (!node.auth.password_ref.empty()) {
        auto found = passwords_.find(node.auth.password_ref);
        if (found == passwords_.end())
            return Error(errc::invalid_argument,
                         "node '" + node.name + "': auth.password_ref '" + node.auth.password_ref +
                             "' is not in the credentials file" +
                             (passwords_file_.empty() ? std::string(" (none configured)")
                                                      : " " + passwords_file_));
        c.password = found->second;
    } else if (node.auth.agent) {
        c.use_agent = true;
    } else {
        return Error(errc::invalid_argument, "node '" + node.name + "': auth: no method");
    }
    return c;
}

std::vector<std::string> CredentialStore::secrets() const {
    std::vector<std::string> out;
    for (const auto& [name, pw] : passwords_) out.push_back(pw.reveal());
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
