// PLACEHOLDER (replaced by the trust-http branch at merge): the interface only.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/http/api_util.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::service {

struct ServiceConfig;

enum class Role : std::uint8_t { submit, validate, operate, admin, read };
std::string_view to_string(Role);
std::optional<Role> parse_role(std::string_view);
class RoleSet {
  public:
    RoleSet() = default;
    static RoleSet all() {
        RoleSet r;
        r.bits_ = 31;
        return r;
    }
    bool has(Role r) const { return (bits_ >> static_cast<unsigned>(r)) & 1u; }
    void add(Role r) { bits_ = static_cast<std::uint8_t>(bits_ | (1u << static_cast<unsigned>(r))); }
    bool operator==(const RoleSet&) const = default;

  private:
    std::uint8_t bits_ = 0;
};
struct Principal {
    std::string name;
    RoleSet roles;
};
class ClientRegistry {
  public:
    static Result<ClientRegistry> load(const ServiceConfig& config);
    const Principal* authenticate(std::string_view bearer_token) const;
    const Principal* authenticate(const http::Request& head) const;
    std::size_t size() const { return by_token_.size(); }

    std::map<std::string, Principal> by_token_;
};

}  // namespace guardia::service
