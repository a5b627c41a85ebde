// Resolves an inventory node's `auth` into SSH credentials. Keys are loaded (and parsed) once
// per store and shared by every node that names them; passwords come from a credentials file
// by reference, so the inventory never holds a secret.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/core/secret.hpp"
#include "guardia/ssh/credentials.hpp"

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
    // Every secret the store handed out, for the audit writer's redaction list.
    std::vector<std::string> secrets() const;

private:
    std::map<std::string, std::shared_ptr<const ssh::PrivateKey>> keys_;
    std::map<std::string, Secret> passwords_;
    std::string passwords_file_;
};

}  // namespace guardia::deploy
