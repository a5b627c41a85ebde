// Access to a test fleet started by tools/fleet (see docs/TESTING.md), for integration tests.
// The fleet's directory comes from the environment (GUARDIA_TEST_FLEET); CTest fixtures start
// and stop it around the test binary so that a crashing test still gets it torn down.
#pragma once

#include "guardia/ssh/session.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace guardia::test {

struct FleetNode {
    std::string name;
    std::string host;
    std::uint16_t port = 0;
    std::string user;
    std::string key_file;
    std::string deploy_path;
};

struct Fleet {
    std::string dir;
    std::vector<FleetNode> nodes;
    std::string known_hosts() const { return dir + "/known_hosts"; }
    std::string key(const std::string& suffix = "") const { return dir + "/client_key" + suffix; }
    std::string password() const;  // the test user's password (DIR/password)

    const FleetNode& node(const std::string& name) const;
    // ConnectOptions for `name` with the ed25519 key and strict checking of DIR/known_hosts.
    ssh::ConnectOptions connect_options(const std::string& name) const;

    // Reads DIR/inventory.json of the fleet named by $GUARDIA_TEST_FLEET; throws if unset.
    static const Fleet& from_env(const char* variable = "GUARDIA_TEST_FLEET");
};

// Runs `task` on `ioc` to completion, failing (throwing) if it takes longer than `limit`.
template <class T>
T run(boost::asio::io_context& ioc, boost::asio::awaitable<T> task,
      std::chrono::milliseconds limit = std::chrono::seconds(60)) {
    std::optional<T> result;
    std::exception_ptr error;
    boost::asio::co_spawn(ioc, std::move(task), [&](std::exception_ptr e, T value) {
        error = e;
        if (!e) result.emplace(std::move(value));
    });
    ioc.restart();
    ioc.run_for(limit);
    if (error) std::rethrow_exception(error);
    if (!result) {
        ioc.stop();
        throw std::runtime_error("test task did not finish within its deadline");
    }
    return std::move(*result);
}

// Runs a local shell command and returns its stdout; throws on a non-zero exit.
std::string shell(const std::string& command);

// A fresh directory under /tmp, removed with its contents when this object dies.
class TempDir {
  public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const noexcept { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

  private:
    std::string path_;
};

}  // namespace guardia::test
