// guardia-bench-ssh: measures the SSH layer on its own, for bench/run-ssh-bench.
//
//   guardia-bench-ssh fanout --inventory FILE --sessions N [--concurrency C] [--command CMD]
//       N sessions (round-robin over the inventory's nodes), each: connect, auth, exec, close.
//   guardia-bench-ssh hold --inventory FILE --sessions N
//       opens N sessions at once and keeps them open to measure resident memory per session.
//   guardia-bench-ssh upload --inventory FILE --file LOCAL --remote PATH
//       one SFTP upload (hashing + remote verification included).
//
// Prints one JSON object: wall seconds, CPU seconds of this process, peak and per-session RSS.
#include "guardia/ssh/session.hpp"

#include "bench_util.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace json = boost::json;
using namespace guardia;
using namespace guardia::ssh;
using Clock = std::chrono::steady_clock;

namespace {

struct Target {
    std::string host;
    std::uint16_t port;
    std::string user;
    std::string key_file;
};

std::vector<Target> read_inventory(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    std::vector<Target> out;
    const json::value doc = json::parse(ss.str());
    for (const auto& n : doc.at("nodes").as_array())
        out.push_back({json::value_to<std::string>(n.at("host")),
                       static_cast<std::uint16_t>(n.at("ssh_port").to_number<int>()),
                       json::value_to<std::string>(n.at("user")),
                       json::value_to<std::string>(n.at("auth").at("key_file"))});
    return out;
}


long peak_rss_kib() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

long current_rss_kib() {
    std::ifstream statm("/proc/self/statm");
    long size = 0, resident = 0;
    statm >> size >> resident;
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

struct Options {
    std::string mode, inventory, command = "true", file, remote;
    int sessions = 200, concurrency = 64;
};

Options parse(int argc, char** argv) {
    if (argc < 2) throw std::runtime_error("usage: guardia-bench-ssh fanout|hold|upload ...");
    Options o;
    o.mode = argv[1];
    for (int i = 2; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
            return argv[++i];
        };
        if (a == "--inventory") o.inventory = next();
        else if (a == "--sessions") o.sessions = std::stoi(next());
        else if (a == "--concurrency") o.concurrency = std::stoi(next());
        else if (a == "--command") o.command = next();
        else if (a == "--file") o.file = next();
        else if (a == "--remote") o.remote = next();
        else throw std::runtime_error("unknown option " + a);
    }
    if (o.inventory.empty()) throw std::runtime_error("--inventory is required");
    return o;
}

struct Shared {
    std::vector<ConnectOptions> targets;
    int next = 0, ok = 0, failed = 0;
    std::string first_error;
};

asio::awaitable<void> fanout_worker(Shared& sh, int total, std::string command) {
    auto ex = co_await asio::this_coro::executor;
    while (sh.next < total) {
        const int i = sh.next++;
        auto s = co_await Session::connect(ex, sh.targets[static_cast<std::size_t>(i) % sh.targets.size()]);
        if (!s) {
            ++sh.failed;
            if (sh.first_error.empty()) sh.first_error = s.error().describe();
            continue;
        }
        auto r = co_await (*s)->exec(command);
        if (r && r->succeeded()) {
            ++sh.ok;
        } else {
            ++sh.failed;
            if (sh.first_error.empty())
                sh.first_error = r ? "exit " + std::to_string(r->exit_code) : r.error().describe();
        }
        co_await (*s)->disconnect();
    }
}

}  // namespace

int main(int argc, char** argv) try {
    const Options o = parse(argc, argv);
    const auto inventory = read_inventory(o.inventory);
    if (inventory.empty()) throw std::runtime_error("inventory has no nodes");
    auto known = KnownHosts::load(std::filesystem::path(o.inventory).parent_path() / "known_hosts");
    if (!known) throw std::runtime_error(known.error().describe());
    auto key = PrivateKey::load(inventory.front().key_file);
    if (!key) throw std::runtime_error(key.error().describe());

    Shared sh;
    for (const auto& t : inventory) {
        ConnectOptions c;
        c.host = t.host;
        c.port = t.port;
        c.credentials.user = t.user;
        c.credentials.key = *key;
        c.known_hosts = *known;
        c.timeout = std::chrono::seconds(60);
        sh.targets.push_back(std::move(c));
    }

    asio::io_context ioc(1);
    const long rss_before = current_rss_kib();
    const double cpu_before = guardia::bench::cpu_seconds();
    const auto t0 = Clock::now();
    json::object report;
    report["mode"] = o.mode;

    if (o.mode == "fanout") {
        const int workers = std::min(o.concurrency, o.sessions);
        for (int w = 0; w < workers; ++w)
            asio::co_spawn(ioc, fanout_worker(sh, o.sessions, o.command), asio::detached);
        ioc.run();
        report["sessions"] = o.sessions;
        report["concurrency"] = workers;
    } else if (o.mode == "hold") {
        std::vector<std::unique_ptr<Session>> open;
        long rss_open = 0;
        asio::co_spawn(
            ioc,
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                int pending = o.sessions;
                asio::steady_timer all_open(ex, Clock::time_point::max());
                for (int i = 0; i < o.sessions; ++i)
                    asio::co_spawn(
                        ex,
                        [&, i]() -> asio::awaitable<void> {
                            auto s = co_await Session::connect(
                                ex, sh.targets[static_cast<std::size_t>(i) % sh.targets.size()]);
                            if (s) {
                                auto r = co_await (*s)->exec(o.command);
                                if (r && r->succeeded()) ++sh.ok; else ++sh.failed;
                                open.push_back(std::move(*s));
                            } else {
                                ++sh.failed;
                                if (sh.first_error.empty()) sh.first_error = s.error().describe();
                            }
                            if (--pending == 0) all_open.cancel();
                        },
                        asio::detached);
                boost::system::error_code ignored;
                co_await all_open.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
                rss_open = current_rss_kib();
                for (auto& s : open) co_await s->disconnect();
                open.clear();
            },
            asio::detached);
        ioc.run();
        report["sessions"] = o.sessions;
        report["rss_before_kib"] = rss_before;
        report["rss_all_open_kib"] = rss_open;
        report["rss_per_open_session_kib"] =
            static_cast<double>(rss_open - rss_before) / std::max(1, sh.ok);
    } else if (o.mode == "upload") {
        if (o.file.empty() || o.remote.empty()) throw std::runtime_error("upload needs --file and --remote");
        asio::co_spawn(
            ioc,
            [&]() -> asio::awaitable<void> {
                auto ex = co_await asio::this_coro::executor;
                auto s = co_await Session::connect(ex, sh.targets.front());
                if (!s) {
                    sh.first_error = s.error().describe();
                    ++sh.failed;
                    co_return;
                }
                auto up = co_await (*s)->upload(o.file, o.remote);
                if (up) {
                    ++sh.ok;
                    report["bytes"] = up->bytes;
                    report["sha256"] = up->sha256;
                    report["transfer_s"] = std::chrono::duration<double>(up->transfer_duration).count();
                    report["verify_s"] = std::chrono::duration<double>(up->verify_duration).count();
                } else {
                    ++sh.failed;
                    sh.first_error = up.error().describe();
                }
                co_await (*s)->disconnect();
            },
            asio::detached);
        ioc.run();
    } else {
        throw std::runtime_error("unknown mode " + o.mode);
    }

    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    const double cpu = guardia::bench::cpu_seconds() - cpu_before;
    report["ok"] = sh.ok;
    report["failed"] = sh.failed;
    if (!sh.first_error.empty()) report["first_error"] = sh.first_error;
    report["wall_s"] = wall;
    report["cpu_s"] = cpu;
    report["cpu_ms_per_session"] = sh.ok + sh.failed > 0 ? 1000.0 * cpu / (sh.ok + sh.failed) : 0.0;
    report["peak_rss_kib"] = peak_rss_kib();
    if (o.mode == "upload" && report.contains("bytes"))
        report["mb_per_s"] = static_cast<double>(report["bytes"].to_number<std::uint64_t>()) / 1e6 / wall;
    std::cout << json::serialize(report) << std::endl;
    return sh.failed == 0 ? 0 : 1;
} catch (const std::exception& e) {
    std::cerr << "guardia-bench-ssh: " << e.what() << std::endl;
    return 2;
}
