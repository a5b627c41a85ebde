// Resolves an inventory node's `auth` into SSH credentials. Keys are loaded (and parsed) once
// per store and shared by every node that names them; passwords come from a credentials file
// by reference, so the inventory never holds a secret.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/core/secret.hpp"
#include "guardia/deploy/key_policy.hpp"
#include "guardia/ssh/credentials.hpp"

#include "guardia/ssh/session.hpp"

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace guardia::deploy {

struct Node;

// What the store may hand out (key_policy.hpp).
struct CredentialPolicy {
    CredentialPolicy() {}
    KeyDirs key_dirs;                   // where auth.key_file may resolve
    bool require_host_binding = false;  // refuse plain-form (unbound) password refs
};
// guardia deploy/exec: ssh.key_dirs if set (else any key); plain refs allowed, bound refs held
// to their hosts. guardia serve: ssh.key_dirs or /etc/guardia/keys; only bound refs.
CredentialPolicy cli_credential_policy(const std::optional<std::vector<std::string>>& key_dirs);
CredentialPolicy service_credential_policy(const std::optional<std::vector<std::string>>& key_dirs);

class CredentialStore {
  public:
    // `passwords_file`: JSON object, mode 0600 (checked); empty: none. Each entry is either
    //   "NAME": "password"                                   (plain: bound to no host)
    //   "NAME": {"password": "...", "hosts": ["web-*.example.com", "10.1.2.3", ...]}
    // A bound password is handed out only for a node whose host matches one of its hosts.
    static Result<std::shared_ptr<CredentialStore>> open(const std::string& passwords_file);

    // The policy for_node() applies (default: the CLI's without key_dirs: any key, plain refs).
    void set_policy(CredentialPolicy policy) { policy_ = std::move(policy); }
    const CredentialPolicy& policy() const { return policy_; }

    // Would `policy` let `node` have credentials? Checks, loading nothing: the key file resolves
    // inside the key directories; a password ref exists, is bound if the policy requires it, and
    // its binding matches the node's host. Errors name the node, the field, the ref and the host:
    //   "node 'web-01': field 'auth.password_ref': 'db-pw' is bound to other hosts than
    //    '10.9.9.9' (10.1.2.*)"
    Result<void> admit(const Node& node, const CredentialPolicy& policy) const;

    // The node's credentials under the store's policy (admit() first: nothing is handed out for
    // a node it refuses; the key is loaded from its resolved path).
    Result<ssh::Credentials> for_node(const Node& node);
    // Everything needed to connect to `node`: its address and credentials, with the given
    // trust settings and deadline. The one place that turns an inventory node into a session.
    Result<ssh::ConnectOptions> connect_options(const Node& node,
                                                std::shared_ptr<ssh::KnownHosts> known_hosts,
                                                ssh::HostKeyPolicy policy,
                                                std::chrono::milliseconds timeout,
                                                std::shared_ptr<spdlog::logger> logger);
    // Every secret the store handed out, for the audit writer's redaction list.
    std::vector<std::string> secrets() const;

  private:
    struct Password {
        Secret secret;
        std::optional<std::vector<std::string>> hosts;  // nullopt: plain form, unbound
    };
    Result<std::string> admit_key(const Node& node, const CredentialPolicy& policy) const;
    Result<const Password*> admit_password(const Node& node, const CredentialPolicy& policy) const;

    std::map<std::string, std::shared_ptr<const ssh::PrivateKey>> keys_;
    std::map<std::string, Password> passwords_;
    std::string passwords_file_;
    CredentialPolicy policy_;
};

}  // namespace guardia::deploy
