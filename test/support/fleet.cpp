#include "fleet.hpp"

#include <boost/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace guardia::test {

namespace json = boost::json;

namespace {
std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}
}  // namespace

const Fleet& Fleet::from_env(const char* variable) {
    static std::map<std::string, Fleet> fleets;
    auto found = fleets.find(variable);
    if (found != fleets.end()) return found->second;
    Fleet loaded = [variable] {
        const char* dir = std::getenv(variable);
        if (dir == nullptr || *dir == '\0')
            throw std::runtime_error(std::string(variable) +
                                     " is not set: run these tests through ctest, which starts "
                                     "the fleet (or: tools/fleet up --dir DIR ...; export " +
                                     variable + "=DIR)");
        Fleet f;
        f.dir = dir;
        auto inventory = json::parse(slurp(f.dir + "/inventory.json"));
        for (const auto& n : inventory.at("nodes").as_array()) {
            FleetNode node;
            node.name = json::value_to<std::string>(n.at("name"));
            node.host = json::value_to<std::string>(n.at("host"));
            node.port = static_cast<std::uint16_t>(n.at("ssh_port").to_number<int>());
            node.user = json::value_to<std::string>(n.at("user"));
            node.key_file = json::value_to<std::string>(n.at("auth").at("key_file"));
            node.deploy_path = json::value_to<std::string>(n.at("deploy_path"));
            f.nodes.push_back(std::move(node));
        }
        return f;
    }();
    return fleets.emplace(variable, std::move(loaded)).first->second;
}

std::string Fleet::password() const {
    auto pw = slurp(dir + "/password");
    while (!pw.empty() && (pw.back() == '\n' || pw.back() == '\r')) pw.pop_back();
    return pw;
}

const FleetNode& Fleet::node(const std::string& name) const {
    for (const auto& n : nodes)
        if (n.name == name) return n;
    throw std::runtime_error("fleet has no node " + name);
}

ssh::ConnectOptions Fleet::connect_options(const std::string& name) const {
    const auto& n = node(name);
    ssh::ConnectOptions o;
    o.host = n.host;
    o.port = n.port;
    o.credentials.user = n.user;
    auto key = ssh::PrivateKey::load(n.key_file);
    if (!key) throw std::runtime_error(key.error().describe());
    o.credentials.key = *key;
    auto kh = ssh::KnownHosts::load(known_hosts());
    if (!kh) throw std::runtime_error(kh.error().describe());
    o.known_hosts = *kh;
    o.timeout = std::chrono::seconds(20);
    return o;
}

std::string shell(const std::string& command) {
    FILE* p = ::popen(command.c_str(), "r");
    if (p == nullptr) throw std::runtime_error("popen failed: " + command);
    std::string out;
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int status = ::pclose(p);
    if (status != 0)
        throw std::runtime_error("command failed (" + std::to_string(status) + "): " + command);
    return out;
}

TempDir::TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "guardia-test-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

}  // namespace guardia::test
