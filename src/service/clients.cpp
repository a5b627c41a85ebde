// PLACEHOLDER (replaced by the trust-http branch at merge).
#include "guardia/service/clients.hpp"

#include "guardia/service/service_config.hpp"

namespace guardia::service {

std::string_view to_string(Role r) {
    switch (r) {
        case Role::submit: return "submit";
        case Role::validate: return "validate";
        case Role::operate: return "operate";
        case Role::admin: return "admin";
        case Role::read: return "read";
    }
    return "?";
}
std::optional<Role> parse_role(std::string_view) { return std::nullopt; }
Result<ClientRegistry> ClientRegistry::load(const ServiceConfig& config) {
    ClientRegistry r;
    auto t = load_api_token(config.token_file);
    if (!t) return t.error();
    r.by_token_[*t] = Principal{"default", RoleSet::all()};
    return r;
}
const Principal* ClientRegistry::authenticate(std::string_view token) const {
    auto it = by_token_.find(std::string(token));
    return it == by_token_.end() ? nullptr : &it->second;
}
const Principal* ClientRegistry::authenticate(const http::Request& head) const {
    for (const auto& [tok, p] : by_token_)
        if (http::bearer_token_matches(head, tok)) return &p;
    return nullptr;
}

}  // namespace guardia::service
