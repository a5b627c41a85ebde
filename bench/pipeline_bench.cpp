// guardia-bench-pipeline: the full node pipeline (pre-check, lock, backup, verified transfer,
// restart, health) on every node of an inventory at once, for docs/PERFORMANCE.md.
//
//   guardia-bench-pipeline --inventory FILE --artifact FILE [--concurrency C] [--rounds R]
//                          [--db FILE]
//
// --rounds R deploys the whole inventory R times in a row in one process (a rollout of
// R x nodes deployments, e.g. 1,000 on a 200-node fleet), to show that memory stays flat.
// Prints one JSON object: wall seconds, CPU seconds of this process, CPU ms and wall ms per
// deployment, peak RSS, outcome counts.
#include "guardia/core/local_io.hpp"
#include "guardia/deploy/credential_store.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/deploy/node_pipeline.hpp"
#include "guardia/store/audit_writer.hpp"

#include "bench_util.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>

namespace asio = boost::asio;
namespace json = boost::json;
using namespace guardia;
using namespace guardia::deploy;
using Clock = std::chrono::steady_clock;

namespace {
}  // namespace

int main(int argc, char** argv) try {
    std::string inventory_path, artifact_path, db_path;
    int concurrency = 100;
    int rounds = 1;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
            return argv[++i];
        };
        if (a == "--inventory") inventory_path = next();
        else if (a == "--artifact") artifact_path = next();
        else if (a == "--concurrency") concurrency = std::stoi(next());
        else if (a == "--rounds") rounds = std::max(1, std::stoi(next()));
        else if (a == "--db") db_path = next();
        else throw std::runtime_error("unknown option " + a);
    }
    if (inventory_path.empty() || artifact_path.empty())
        throw std::runtime_error("usage: guardia-bench-pipeline --inventory FILE --artifact FILE");
    auto inventory = load_inventory(inventory_path);
    if (!inventory) throw std::runtime_error(inventory.error().message);
    auto artifact = describe_artifact(artifact_path);
    if (!artifact) throw std::runtime_error(artifact.error().message);
    auto known = ssh::KnownHosts::load(
        (std::filesystem::path(inventory_path).parent_path() / "known_hosts").string());
    if (!known) throw std::runtime_error(known.error().message);
    if (db_path.empty()) db_path = "/tmp/guardia-bench-pipeline-" + std::to_string(::getpid()) + ".db";
    store::AuditWriter audit(db_path);
    audit.start();

    PipelineSettings settings;
    settings.sr_id = "BENCH";
    settings.rollout_id = "bench-" + std::to_string(::getpid());
    settings.owner = "guardia-bench";
    settings.known_hosts = *known;
    settings.credentials = *CredentialStore::open("");
    settings.audit = &audit;
    const std::vector<ArtifactSpec> artifacts{*artifact};

    asio::io_context ioc(1);
    std::map<std::string, int> outcomes;
    std::vector<std::string> failures;
    const std::size_t deployments = inventory->nodes.size() * static_cast<std::size_t>(rounds);
    std::size_t next_deployment = 0;
    std::vector<PipelineSettings> round_settings(static_cast<std::size_t>(rounds), settings);
    for (int r = 1; r < rounds; ++r)
        round_settings[static_cast<std::size_t>(r)].rollout_id += "-r" + std::to_string(r + 1);
    const double cpu0 = guardia::bench::cpu_seconds();
    const auto t0 = Clock::now();
    auto worker = [&]() -> asio::awaitable<void> {
        while (next_deployment < deployments) {
            const std::size_t k = next_deployment++;
            const Node& n = inventory->nodes[k % inventory->nodes.size()];
            auto report = co_await deploy_node(n, artifacts, round_settings[k / inventory->nodes.size()]);
            ++outcomes[std::string(to_string(report.outcome))];
            if (report.outcome != NodeOutcome::deployed && failures.size() < 5)
                failures.push_back(report.error.message + " [" + std::to_string(report.duration.count()) + " ms]");
        }
    };
    for (int w = 0; w < concurrency; ++w) asio::co_spawn(ioc, worker(), asio::detached);
    ioc.run();
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    const double cpu = guardia::bench::cpu_seconds() - cpu0;
    asio::io_context flush;
    asio::co_spawn(flush, audit.durable(), asio::detached);
    flush.run();
    audit.stop();
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    const auto n = static_cast<double>(deployments);
    json::object report{{"nodes", inventory->nodes.size()},
                        {"rounds", rounds},
                        {"deployments", deployments},
                        {"artifact_bytes", artifact->size},
                        {"concurrency", concurrency},
                        {"wall_s", wall},
                        {"cpu_s", cpu},
                        {"cpu_ms_per_node", 1000.0 * cpu / n},  // per deployment
                        {"wall_ms_per_node_amortised", 1000.0 * wall / n},
                        {"peak_rss_kib", ru.ru_maxrss}};
    json::object counts;
    for (const auto& [k, v] : outcomes) counts[k] = v;
    report["outcomes"] = counts;
    json::array failed;
    for (const auto& f : failures) failed.emplace_back(f);
    if (!failed.empty()) report["failures"] = failed;
    std::cout << json::serialize(report) << std::endl;
    if (failures.empty())
        for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(db_path + suffix);
    else std::cerr << "guardia-bench-pipeline: audit log kept in " << db_path << std::endl;
    return outcomes["DEPLOYED"] == static_cast<int>(deployments) ? 0 : 1;
} catch (const std::exception& e) {
    std::cerr << "guardia-bench-pipeline: " << e.what() << std::endl;
    return 2;
}
