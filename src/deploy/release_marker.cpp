#include "guardia/deploy/release_marker.hpp"

#include "guardia/core/shell.hpp"

#include <boost/json.hpp>

namespace guardia::deploy {

namespace json = boost::json;

std::string render_marker(const ReleaseMarker& m) {
    json::array arts;
    for (const auto& a : m.artifacts) arts.push_back(json::object{{"name", a.name}, {"sha256", a.sha256}});
    json::object o;
    o["rollout_id"] = m.rollout_id;
    o["sr_id"] = m.sr_id;
    o["artifacts"] = std::move(arts);
    o["activated_at"] = m.activated_at;
    o["owner"] = m.owner;
    return json::serialize(o);
}

Result<ReleaseMarker> parse_marker(std::string_view text) {
    json::error_code ec;
    auto doc = json::parse(text, ec);
    if (ec) return Error(errc::invalid_argument, "release marker is not JSON: " + ec.message());
    if (!doc.is_object()) return Error(errc::invalid_argument, "release marker is not a JSON object");
    const auto& o = doc.as_object();
    ReleaseMarker m;
    auto text_field = [&](const char* key, std::string& out, bool required) -> Result<void> {
        const auto* v = o.if_contains(key);
        if (!v) {
            if (required) return Error(errc::invalid_argument, std::string("release marker: '") + key + "' is missing");
            return {};
        }
        if (!v->is_string())
            return Error(errc::invalid_argument, std::string("release marker: '") + key + "' is not a string");
        out = std::string(v->as_string());
        return {};
    };
    if (auto r = text_field("rollout_id", m.rollout_id, true); !r) return r.error();
    if (m.rollout_id.empty()) return Error(errc::invalid_argument, "release marker: 'rollout_id' is empty");
    if (auto r = text_field("sr_id", m.sr_id, false); !r) return r.error();
    if (auto r = text_field("activated_at", m.activated_at, false); !r) return r.error();
    if (auto r = text_field("owner", m.owner, false); !r) return r.error();
    const auto* arts = o.if_contains("artifacts");
    if (!arts || !arts->is_array())
        return Error(errc::invalid_argument, "release marker: 'artifacts' is missing or not an array");
    for (std::size_t i = 0; i < arts->as_array().size(); ++i) {
        const auto& a = arts->as_array()[i];
        const auto* name = a.is_object() ? a.as_object().if_contains("name") : nullptr;
        const auto* sha = a.is_object() ? a.as_object().if_contains("sha256") : nullptr;
        if (!name || !name->is_string() || !sha || !sha->is_string())
            return Error(errc::invalid_argument, "release marker: artifacts[" + std::to_string(i) +
                                                     "] needs string 'name' and 'sha256'");
        m.artifacts.emplace_back(std::string(name->as_string()), std::string(sha->as_string()));
    }
    return m;
}

std::string utc_iso8601(std::time_t t) {
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::vector<std::string> marker_drift(const ReleaseMarker& marker, const LiveSums& live) {
    std::vector<std::string> out;
    for (const auto& a : marker.artifacts) {
        auto it = live.find(a.name);
        if (it == live.end())
            out.push_back(a.name + ": missing, marker " + a.sha256);
        else if (it->second != a.sha256)
            out.push_back(a.name + ": live " + it->second + ", marker " + a.sha256);
    }
    return out;
}

std::string marker_line_script(const std::string& deploy_path) {
    return "m=" + shell_quote(deploy_path + std::string(kReleaseMarkerSuffix)) +
           "; if [ -f \"$m\" ] && IFS= read -r x < \"$m\"; then printf 'MARKER %s\\n' \"$x\"; "
           "else echo NOMARKER; fi";
}

std::string inspect_script(const std::string& deploy_path) {
    return "LC_ALL=C; d=" + shell_quote(deploy_path) + "; " + marker_line_script(deploy_path) +
           "; [ -d \"$d\" ] || { echo NODIR; exit 0; }"
           "; for f in \"$d\"/* \"$d\"/.[!.]* \"$d\"/..?*; do { [ -f \"$f\" ] && [ ! -h \"$f\" ]; } "
           "|| continue; n=${f##*/}; case $n in .guardia-stage.*) continue;; esac"
           "; h=$(sha256sum < \"$f\") || continue; printf 'SHA %s %s\\n' \"${h%% *}\" \"$n\"; done";
}

NodeListing parse_listing(std::string_view out) {
    NodeListing l;
    bool marker_seen = false;
    for (std::size_t pos = 0; pos < out.size();) {
        auto end = out.find('\n', pos);
        if (end == std::string_view::npos) end = out.size();
        const std::string_view line = out.substr(pos, end - pos);
        pos = end + 1;
        // The marker (or NOMARKER) comes first: a later "MARKER" line can only come from a
        // file name with a newline in it, and must not stand for the node's release.
        if (line.substr(0, 7) == "MARKER " || line == "NOMARKER") {
            if (!marker_seen && line != "NOMARKER") l.marker_text = std::string(line.substr(7));
            marker_seen = true;
        }
        else if (line == "NODIR")
            l.deploy_path_exists = false;
        else if (line.substr(0, 4) == "SHA " && line.size() > 4 + 64 + 1 && line[4 + 64] == ' ')
            l.live[std::string(line.substr(4 + 64 + 1))] = std::string(line.substr(4, 64));
    }
    return l;
}

std::vector<std::string> differing_from_majority(const std::vector<std::string>& nodes,
                                                 const std::map<std::string, LiveSums>& sums) {
    // Distinct sets in order of first appearance, with their counts.
    std::vector<std::pair<const LiveSums*, std::size_t>> seen;
    for (const auto& n : nodes) {
        auto it = sums.find(n);
        if (it == sums.end()) continue;
        bool found = false;
        for (auto& [set, count] : seen)
            if (*set == it->second) {
                ++count;
                found = true;
                break;
            }
        if (!found) seen.emplace_back(&it->second, 1);
    }
    if (seen.empty()) return {};
    const LiveSums* majority = seen.front().first;
    std::size_t best = seen.front().second;
    for (const auto& [set, count] : seen)
        if (count > best) {
            best = count;
            majority = set;
        }
    std::vector<std::string> out;
    for (const auto& n : nodes) {
        auto it = sums.find(n);
        if (it != sums.end() && it->second != *majority) out.push_back(n);
    }
    return out;
}

}  // namespace guardia::deploy
