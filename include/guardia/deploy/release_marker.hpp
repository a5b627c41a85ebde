// The release marker: a small JSON file `<deploy_path>.guardia-release` beside each node's
// deploy path, written atomically at activation and restored by every rollback, saying which
// release runs there (rollout, SR, artifacts and their sha256, when, by whom). Rendering and
// parsing are pure; the node pipeline writes and restores the file, `guardia inspect` reads it.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/deploy/node_pipeline.hpp"

#include <boost/asio/awaitable.hpp>

#include <ctime>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::deploy {

// The file name suffix, appended to the deploy path (and to a backup's path for the marker
// saved with that backup).
inline constexpr std::string_view kReleaseMarkerSuffix = ".guardia-release";

struct MarkerArtifact {
    MarkerArtifact() {}
    MarkerArtifact(std::string n, std::string s) : name(std::move(n)), sha256(std::move(s)) {}
    std::string name;
    std::string sha256;
    bool operator==(const MarkerArtifact&) const = default;
};

struct ReleaseMarker {
    ReleaseMarker() {}
    std::string rollout_id;
    std::string sr_id;
    std::vector<MarkerArtifact> artifacts;
    std::string activated_at;  // UTC, ISO 8601 ("2026-12-05T00:31:02Z")
    std::string owner;         // the guardia process that activated it
    bool operator==(const ReleaseMarker&) const = default;
};

// One line of JSON (no newline). Pure.
std::string render_marker(const ReleaseMarker& marker);

// Parses a marker file's text. Errors name the field that is missing or malformed. Pure.
Result<ReleaseMarker> parse_marker(std::string_view text);

// `t` as ISO 8601 UTC with a Z. Pure.
std::string utc_iso8601(std::time_t t);

// What `guardia inspect` reports per node: the live files' sha256 by name.
using LiveSums = std::map<std::string, std::string>;

// The marker's artifacts whose live sha256 differs from (or is missing in) `live`, each as
// "<name>: live <x>, marker <y>" / "<name>: missing, marker <y>". Empty: the node runs what its
// marker says. Pure.
std::vector<std::string> marker_drift(const ReleaseMarker& marker, const LiveSums& live);

// What one node said to inspect_script(): its marker line, the deploy path's files.
struct NodeListing {
    NodeListing() {}
    bool deploy_path_exists = true;
    std::optional<std::string> marker_text;  // the marker's line; none: no marker file
    LiveSums live;                           // regular files directly in the deploy path
};

// Shell text printing "MARKER <the marker's line>" or "NOMARKER" for `deploy_path`'s marker
// (sets $m and $x). Pure.
std::string marker_line_script(const std::string& deploy_path);

// A read-only script (for `guardia inspect`) printing the marker of `deploy_path` and the
// sha256 of every regular file directly in it (staging files left out). Every value is
// shell-quoted. Pure.
std::string inspect_script(const std::string& deploy_path);

// Reads inspect_script()'s output. Pure.
NodeListing parse_listing(std::string_view out);

// The nodes whose set of live sha256s differs from the majority's (the most common set; ties go
// to the set seen first in `nodes` order). Nodes absent from `sums` (unreachable) take no part.
// Returns them in `nodes` order. Pure.
std::vector<std::string> differing_from_majority(const std::vector<std::string>& nodes,
                                                 const std::map<std::string, LiveSums>& sums);

// What the marker of a node must name for a rollback to undo its release (empty: not checked).
struct MarkerExpectation {
    MarkerExpectation() {}
    std::string rollout_id;
    std::string sr_id;
};

// rollback_node() with `expected_live` (node_pipeline.hpp), whose VERIFY_LIVE also reads the
// node's release marker: missing, unreadable, or naming another rollout / SR than `expect`
// says refuses the node (failed_unchanged at VERIFY_LIVE, errc::precheck_failed, nothing
// touched). Used by `guardia rollback` and the service's operator rollback.
boost::asio::awaitable<NodeReport> rollback_release(const Node& node,
                                                    const std::string& backup_path,
                                                    const PipelineSettings& settings,
                                                    const std::vector<ArtifactSpec>& expected_live,
                                                    MarkerExpectation expect);

}  // namespace guardia::deploy
