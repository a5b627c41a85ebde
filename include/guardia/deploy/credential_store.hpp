// Resolves an inventory node's `auth` into SSH credentials. Keys are loaded (and parsed) once
// per store and shared by every node that names them; passwords come from a credentials file
// by reference, so the inventory never holds a secret.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/core/secret.hpp"
#include "guardia/ssh/credentials.hpp"

#include "guardia/ssh/session.hpp"

#include <chrono>
#include <map>
#include <memory>
#include <string>

namespace guardia::deploy {

struct Node;

class CredentialStore {
  public:
    // `passwords_file`: JSON object {"NAME": "password", ...}, mode 0600 (checked); empty: none.
    static Result<std::shared_ptr<CredentialStore>> open(const std::string& passwords_file);

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
    std::map<std::string, std::shared_ptr<const ssh::PrivateKey>> keys_;
    std::map<std::string, Secret> passwords_;
    std::string passwords_file_;
};

}  // namespace guardia::deploy
