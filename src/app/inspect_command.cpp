// `guardia inspect --inventory FILE`: what runs where. Read-only: on every node (over the same
// sessions, limits and host key checks as `guardia exec`) one script reads the release marker
// and hashes the regular files directly in the deploy path. Reported per node: the marker
// (rollout, SR, activated_at, artifacts), whether the live files match it, and which nodes
// differ from the majority by the set of live sha256s.
//
// Exit codes: 0 every node answered and all agree (same files, none drifted from its marker);
// 1 some node differs, drifted or could not be read; 2 bad usage or input.
#include "cli.hpp"
#include "commands.hpp"

#include "guardia/deploy/fanout.hpp"
#include "guardia/deploy/release_marker.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>

namespace guardia::cli {

namespace asio = boost::asio;
namespace json = boost::json;
using namespace guardia::deploy;

namespace {

const char* inspect_usage =
    "usage: guardia inspect --inventory FILE [--config FILE] [--known-hosts FILE]\n"
    "                       [--host-key-policy strict|accept-new] [--json]\n"
    "\n"
    "Reads, on every node, its release marker (<deploy_path>.guardia-release) and the sha256\n"
    "of the files in its deploy path. Changes nothing.\n"
    "\n"
    "  --inventory FILE   the nodes to read (required)\n"
    "  --config FILE      engine configuration (credentials, max_sessions, timeouts)\n"
    "  --known-hosts FILE known_hosts to verify host keys with\n"
    "  --host-key-policy P  strict (default) or accept-new\n"
    "  --json             one JSON object on stdout (see docs/OPERATIONS.md)\n"
    "  -h, --help         this text\n"
    "\n"
    "Exit 0 every node answered and all agree, 1 some node differs from the majority, drifted\n"
    "from its marker or could not be read, 2 bad input.\n";

struct NodeView {
    std::string name;
    bool answered = false;
    std::string error;
    NodeListing listing;
    std::optional<ReleaseMarker> marker;
    std::string marker_error;
    std::vector<std::string> drift;
    bool differs = false;
    std::string status() const {
        if (!answered) return "unreachable";
        if (!listing.deploy_path_exists) return "no_deploy_path";
        if (!marker) return marker_error.empty() ? "no_marker" : "bad_marker";
        return drift.empty() ? "ok" : "drifted";
    }
};

json::object files_json(const LiveSums& live) {
    json::object o;
    for (const auto& [name, sha] : live) o[name] = sha;
    return o;
}

}  // namespace

int inspect_command(int argc, char** argv) {
    Common common;
    Args args(argc, argv, 2);
    while (!args.done()) {
        const std::string f = args.flag();
        if (f == "--db") throw UsageError("unknown option --db (inspect reads only the nodes)\n" +
                                          std::string(inspect_usage));
        if (common_flag(f, args, common)) continue;
        if (f == "--help" || f == "-h") {
            std::fputs(inspect_usage, stdout);
            return 0;
        }
        throw UsageError("unknown option " + f + "\n" + inspect_usage);
    }
    if (common.inventory_path.empty())
        throw UsageError(std::string("--inventory FILE is required\n") + inspect_usage);
    Engine engine = load_engine(common);
    FanoutOptions o;
    o.max_sessions = engine.config.rollout.max_sessions;
    o.max_connections_per_second = engine.config.rollout.max_connections_per_second;
    o.connect_timeout = engine.config.pipeline.connect_timeout;
    o.command_timeout = engine.config.pipeline.command_timeout;
    o.known_hosts = engine.known_hosts;
    o.host_key_policy = engine.host_key_policy;
    o.credentials = engine.credentials;
    std::vector<std::string> names;
    for (const auto& n : engine.inventory.nodes) names.push_back(n.name);

    asio::io_context ioc(1);  // before the Fanout: its timer dies first
    auto fan = Fanout::create_script(
        std::move(engine.inventory), [](const Node& n) { return inspect_script(n.deploy_path); },
        std::move(o));
    if (!fan) throw UsageError(fan.error().message);
    std::vector<FanoutResult> results;
    asio::co_spawn(
        ioc, [&]() -> asio::awaitable<void> { results = co_await (*fan)->run(); },
        asio::detached);
    ioc.run();

    std::vector<NodeView> views;
    std::map<std::string, LiveSums> sums;
    for (const auto& r : results) {
        NodeView v;
        v.name = r.node;
        v.answered = r.succeeded();
        if (!v.answered) {
            v.error = r.ran ? "the inspection script exited " + std::to_string(r.exit_code) +
                                  (r.err.empty() ? std::string() : ": " + r.err)
                            : r.error.message;
            while (!v.error.empty() && v.error.back() == '\n') v.error.pop_back();
        } else {
            v.listing = parse_listing(r.out);
            if (v.listing.marker_text) {
                auto m = parse_marker(*v.listing.marker_text);
                if (m) {
                    v.marker = std::move(*m);
                    v.drift = marker_drift(*v.marker, v.listing.live);
                } else {
                    v.marker_error = m.error().message;
                }
            }
            sums[v.name] = v.listing.live;
        }
        views.push_back(std::move(v));
    }
    const auto differing = differing_from_majority(names, sums);
    for (auto& v : views)
        v.differs = std::find(differing.begin(), differing.end(), v.name) != differing.end();
    std::vector<std::string> unreachable, drifted;
    for (const auto& v : views) {
        if (!v.answered) unreachable.push_back(v.name);
        if (!v.drift.empty()) drifted.push_back(v.name);
    }
    const bool agree = unreachable.empty() && differing.empty() && drifted.empty();

    if (common.json) {
        json::array nodes;
        for (const auto& v : views) {
            json::object j{{"name", v.name}, {"status", v.status()}, {"answered", v.answered}};
            if (!v.answered) {
                j["error"] = v.error;
            } else {
                if (v.marker) {
                    json::array arts;
                    for (const auto& a : v.marker->artifacts)
                        arts.push_back(json::object{{"name", a.name}, {"sha256", a.sha256}});
                    j["release"] = json::object{{"rollout_id", v.marker->rollout_id},
                                                {"sr_id", v.marker->sr_id},
                                                {"activated_at", v.marker->activated_at},
                                                {"owner", v.marker->owner},
                                                {"artifacts", std::move(arts)}};
                } else {
                    j["release"] = nullptr;
                }
                if (!v.marker_error.empty()) j["marker_error"] = v.marker_error;
                j["files"] = files_json(v.listing.live);
                json::array drift;
                for (const auto& d : v.drift) drift.push_back(json::string(d));
                j["drift"] = std::move(drift);
                j["differs_from_majority"] = v.differs;
            }
            nodes.push_back(std::move(j));
        }
        auto list = [](const std::vector<std::string>& l) {
            json::array a;
            for (const auto& s : l) a.push_back(json::string(s));
            return a;
        };
        std::cout << json::serialize(json::object{{"nodes_total", views.size()},
                                                  {"nodes_answered", views.size() - unreachable.size()},
                                                  {"agree", agree},
                                                  {"differing", list(differing)},
                                                  {"drifted", list(drifted)},
                                                  {"unreachable", list(unreachable)},
                                                  {"nodes", std::move(nodes)}})
                  << std::endl;
    } else {
        std::printf("%-24s %-12s %-32s %-14s %-21s %s\n", "NODE", "STATUS", "ROLLOUT", "SR",
                    "ACTIVATED", "MAJORITY");
        for (const auto& v : views) {
            const std::string majority =
                !v.answered ? "-" : (v.differs ? "DIFFERS" : "same");
            std::printf("%-24s %-12s %-32s %-14s %-21s %s\n", v.name.c_str(), v.status().c_str(),
                        v.marker ? v.marker->rollout_id.c_str() : "-",
                        v.marker ? v.marker->sr_id.c_str() : "-",
                        v.marker ? v.marker->activated_at.c_str() : "-", majority.c_str());
            if (!v.answered) std::printf("    %s\n", v.error.c_str());
            if (!v.marker_error.empty()) std::printf("    %s\n", v.marker_error.c_str());
            if (v.marker)
                for (const auto& a : v.marker->artifacts) {
                    auto it = v.listing.live.find(a.name);
                    const std::string live = it == v.listing.live.end() ? "missing" : it->second;
                    std::printf("    %-28s %s%s\n", a.name.c_str(), a.sha256.c_str(),
                                live == a.sha256 ? "" : ("  DRIFTED: live " + live).c_str());
                }
        }
        auto joined = [](const std::vector<std::string>& l) {
            std::string s;
            for (const auto& x : l) s += (s.empty() ? "" : ", ") + x;
            return s.empty() ? std::string("none") : s;
        };
        std::printf("\n%zu of %zu node(s) answered; differ from the majority: %s; drifted from "
                    "their marker: %s; unreachable: %s\n",
                    views.size() - unreachable.size(), views.size(), joined(differing).c_str(),
                    joined(drifted).c_str(), joined(unreachable).c_str());
    }
    return agree ? 0 : 1;
}

}  // namespace guardia::cli
