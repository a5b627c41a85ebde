// The release marker's text (render, parse), drift between a marker and the live files, and
// which nodes differ from the majority (guardia inspect).
#include "guardia/deploy/release_marker.hpp"

#include <doctest/doctest.h>

using namespace guardia;
using namespace guardia::deploy;

namespace {
ReleaseMarker sample() {
    ReleaseMarker m;
    m.rollout_id = "SR-1-20261205T003000Z-42";
    m.sr_id = "SR-1";
    m.artifacts.emplace_back("app.jar", std::string(64, 'a'));
    m.artifacts.emplace_back("name with 'quote' and \"dq\"", std::string(64, 'b'));
    m.activated_at = "2026-12-05T00:30:00Z";
    m.owner = "guardia@host:1";
    return m;
}
}  // namespace

TEST_CASE("release marker: render then parse gives the same marker, on one line") {
    const auto m = sample();
    const std::string text = render_marker(m);
    CHECK(text.find('\n') == std::string::npos);
    auto back = parse_marker(text);
    REQUIRE(back.has_value());
    CHECK(*back == m);
    // A trailing newline (the file as written) parses too.
    auto with_nl = parse_marker(text + "\n");
    REQUIRE(with_nl.has_value());
    CHECK(with_nl->rollout_id == m.rollout_id);
}

TEST_CASE("release marker: malformed text is refused naming the field") {
    CHECK_FALSE(parse_marker("").has_value());
    CHECK_FALSE(parse_marker("not json").has_value());
    CHECK_FALSE(parse_marker("[1]").has_value());
    auto no_rollout = parse_marker(R"({"sr_id":"S","artifacts":[]})");
    REQUIRE_FALSE(no_rollout.has_value());
    CHECK(no_rollout.error().message.find("rollout_id") != std::string::npos);
    auto bad_arts = parse_marker(R"({"rollout_id":"R","artifacts":[{"name":"a"}]})");
    REQUIRE_FALSE(bad_arts.has_value());
    CHECK(bad_arts.error().message.find("artifacts[0]") != std::string::npos);
    auto arts_missing = parse_marker(R"({"rollout_id":"R"})");
    REQUIRE_FALSE(arts_missing.has_value());
    CHECK(arts_missing.error().message.find("artifacts") != std::string::npos);
    auto wrong_type = parse_marker(R"({"rollout_id":"R","sr_id":5,"artifacts":[]})");
    REQUIRE_FALSE(wrong_type.has_value());
    CHECK(wrong_type.error().message.find("sr_id") != std::string::npos);
    CHECK(parse_marker(R"({"rollout_id":"R","artifacts":[]})").has_value());
}

TEST_CASE("release marker: UTC time stamp") {
    CHECK(utc_iso8601(0) == "1970-01-01T00:00:00Z");
    CHECK(utc_iso8601(1764894600) == "2025-12-05T00:30:00Z");
}

TEST_CASE("release marker: drift names each file whose live sha256 differs or is missing") {
    const auto m = sample();
    LiveSums live{{"app.jar", std::string(64, 'a')}, {m.artifacts[1].name, std::string(64, 'b')}};
    CHECK(marker_drift(m, live).empty());
    live["app.jar"] = std::string(64, 'c');
    live.erase(m.artifacts[1].name);
    const auto d = marker_drift(m, live);
    REQUIRE(d.size() == 2);
    CHECK(d[0] == "app.jar: live " + std::string(64, 'c') + ", marker " + std::string(64, 'a'));
    CHECK(d[1].find("missing") != std::string::npos);
    // A live file the marker does not name is not drift.
    live = {{"app.jar", std::string(64, 'a')}, {m.artifacts[1].name, std::string(64, 'b')}, {"x", "1"}};
    CHECK(marker_drift(m, live).empty());
}

TEST_CASE("majority: nodes whose set of live sha256s is not the most common one") {
    const LiveSums v2{{"app.jar", "2"}}, v1{{"app.jar", "1"}}, other{{"app.jar", "2"}, {"x", "9"}};
    std::vector<std::string> nodes{"n1", "n2", "n3", "n4", "n5"};
    std::map<std::string, LiveSums> sums{{"n1", v2}, {"n2", v1}, {"n3", v2}, {"n4", other}, {"n5", v2}};
    CHECK(differing_from_majority(nodes, sums) == std::vector<std::string>{"n2", "n4"});
    // Unreachable nodes (no sums) take no part.
    sums.erase("n2");
    CHECK(differing_from_majority(nodes, sums) == std::vector<std::string>{"n4"});
    // All agree.
    CHECK(differing_from_majority({"a", "b"}, {{"a", v1}, {"b", v1}}).empty());
    // A tie goes to the set seen first.
    CHECK(differing_from_majority({"a", "b"}, {{"a", v1}, {"b", v2}}) == std::vector<std::string>{"b"});
    CHECK(differing_from_majority({}, {}).empty());
}

TEST_CASE("inspect listing: a file name cannot forge the marker line or a file's sum") {
    // The script prints the marker first; a file named "x\nMARKER {...}" in the deploy path
    // comes out of printf as a second MARKER line. Only the first one is the marker.
    const std::string sha(64, 'a');
    std::string out = "MARKER {\"rollout_id\":\"R-real\"}\n";
    out += "SHA ";
    out += sha;
    out += " x\n";
    out += "MARKER {\"rollout_id\":\"R-forged\"}\n";
    const NodeListing l = parse_listing(out);
    REQUIRE(l.marker_text.has_value());
    CHECK(*l.marker_text == "{\"rollout_id\":\"R-real\"}");
}

TEST_CASE("inspect listing: no marker stays no marker whatever a file is named") {
    const std::string sha(64, 'b');
    std::string out = "NOMARKER\nSHA ";
    out += sha;
    out += " \nMARKER {\"rollout_id\":\"R-forged\"}\n";
    const NodeListing l = parse_listing(out);
    CHECK_FALSE(l.marker_text.has_value());
}
