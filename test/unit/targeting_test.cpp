#include "guardia/deploy/targeting.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using namespace guardia;
using namespace guardia::deploy;

namespace {

// node-0001..node-0008: tiers 1, 2, 2, 2, 3, 3, 2, 2.
Inventory fleet() {
    const int tiers[] = {1, 2, 2, 2, 3, 3, 2, 2};
    Inventory inv;
    for (int i = 0; i < 8; ++i) {
        Node n;
        n.name = "node-000" + std::to_string(i + 1);
        n.tier = tiers[i];
        inv.nodes.push_back(n);
    }
    return inv;
}

std::vector<std::string> names(const Inventory& inv) {
    std::vector<std::string> out;
    for (const auto& n : inv.nodes) out.push_back(n.name);
    return out;
}

using Names = std::vector<std::string>;

store::NodeResult result(std::string node, std::string status) {
    store::NodeResult r;
    r.rollout_id.push_back('R');  // not = "R": GCC 12 -O3 false -Werror=restrict (bug 105329)
    r.node = std::move(node);
    r.status = std::move(status);
    return r;
}

}  // namespace

TEST_SUITE_BEGIN("targeting");

TEST_CASE("targeting: shell-style globs on whole names") {
    CHECK(glob_match("node-0001", "node-0001"));
    CHECK_FALSE(glob_match("node-0001", "node-00011"));
    CHECK_FALSE(glob_match("node-000", "node-0001"));
    CHECK(glob_match("node-*", "node-0001"));
    CHECK(glob_match("*", "x"));
    CHECK(glob_match("*-0001", "node-0001"));
    CHECK(glob_match("n*e-*1", "node-0001"));
    CHECK_FALSE(glob_match("n*e-*2", "node-0001"));
    CHECK(glob_match("node-000?", "node-0007"));
    CHECK_FALSE(glob_match("node-000?", "node-00071"));
    CHECK(glob_match("node-000[1-3]", "node-0002"));
    CHECK_FALSE(glob_match("node-000[1-3]", "node-0004"));
    CHECK(glob_match("node-000[135]", "node-0005"));
    CHECK_FALSE(glob_match("node-000[135]", "node-0004"));
    CHECK(glob_match("node-000[!1-3]", "node-0004"));
    CHECK_FALSE(glob_match("node-000[!1-3]", "node-0001"));
    CHECK(glob_match("node-000[^1]", "node-0002"));
    CHECK(glob_match("a[]]b", "a]b"));
    CHECK(glob_match("a[b", "a[b"));  // no closing bracket: a literal '['
    CHECK_FALSE(glob_match("a[b", "ab"));
    CHECK_FALSE(glob_match("", "a"));
    CHECK(glob_match("", ""));
}

TEST_CASE("targeting: --limit and --tier values are parsed and checked") {
    CHECK(parse_limit("a,node-*,web-0[1-3]").value() == Names{"a", "node-*", "web-0[1-3]"});
    CHECK(parse_limit("one").value() == Names{"one"});
    auto empty_part = parse_limit("a,,b");
    REQUIRE_FALSE(empty_part.has_value());
    CHECK(empty_part.error().message.find("'a,,b'") != std::string::npos);
    CHECK_FALSE(parse_limit("").has_value());
    auto bad = parse_limit("web 01");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message.find("'web 01'") != std::string::npos);
    CHECK_FALSE(parse_limit("a;rm").has_value());

    CHECK(parse_tiers("2").value() == std::vector<int>{2});
    CHECK(parse_tiers("1,3,99").value() == std::vector<int>{1, 3, 99});
    for (const char* v : {"0", "100", "", "1,", "x", "-1", "2.5", "007"}) {
        INFO(v);
        auto r = parse_tiers(v);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message.find("--tier") != std::string::npos);
    }
}

TEST_CASE("targeting: no filter selects the whole inventory") {
    auto s = select_nodes(fleet(), TargetFilter());
    REQUIRE(s.has_value());
    CHECK(s->nodes.size() == 8);
}

TEST_CASE("targeting: --limit selects by names and globs, in inventory order") {
    TargetFilter f;
    f.limit = {"node-0007", "node-000[1-3]"};
    auto s = select_nodes(fleet(), f);
    REQUIRE(s.has_value());
    CHECK(names(*s) == Names{"node-0001", "node-0002", "node-0003", "node-0007"});
    CHECK(s->nodes[0].tier == 1);  // the node is copied whole
}

TEST_CASE("targeting: a --limit pattern matching no node is an error naming it") {
    TargetFilter f;
    f.limit = {"node-000[1-3]", "node-0099"};
    auto s = select_nodes(fleet(), f);
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().code == make_error_code(errc::invalid_argument));
    CHECK(s.error().message.find("'node-0099'") != std::string::npos);
    f.limit = {"web-*"};
    CHECK(select_nodes(fleet(), f).error().message.find("'web-*'") != std::string::npos);
}

TEST_CASE("targeting: --tier selects the nodes of those tiers; an unused tier is an error") {
    TargetFilter f;
    f.tiers = {3, 1};
    CHECK(names(select_nodes(fleet(), f).value()) == Names{"node-0001", "node-0005", "node-0006"});
    f.tiers = {4};
    auto s = select_nodes(fleet(), f);
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().message.find("--tier 4") != std::string::npos);
}

TEST_CASE("targeting: filters combine as an intersection; an empty one is an error") {
    TargetFilter f;
    f.limit = {"node-000[1-5]"};
    f.tiers = {2};
    CHECK(names(select_nodes(fleet(), f).value()) == Names{"node-0002", "node-0003", "node-0004"});
    f.limit = {"node-0001"};  // tier 1: nothing of tier 2
    auto s = select_nodes(fleet(), f);
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().message.find("matches no node") != std::string::npos);
    CHECK(s.error().message.find("limit=node-0001; tier=2") != std::string::npos);
}

TEST_CASE("targeting: --retry-failed selects what did not end DEPLOYED, nothing else") {
    const std::vector<store::NodeResult> results = {
        result("node-0001", "DEPLOYED"),    result("node-0002", "ROLLED_BACK"),
        result("node-0003", "SKIPPED"),     result("node-0004", "FAILED_UNCHANGED"),
        result("node-0005", "DEPLOYED"),    result("node-0006", "PENDING"),
        result("node-0042", "ROLLBACK_FAILED")};  // no longer in the inventory
    const auto retry = not_deployed(results);
    CHECK(retry == std::set<std::string>{"node-0002", "node-0003", "node-0004", "node-0006",
                                         "node-0042"});
    TargetFilter f;
    f.retry_rollout = "R";
    f.retry = retry;
    // node-0007/0008 were not part of that rollout: not selected.
    CHECK(names(select_nodes(fleet(), f).value()) ==
          Names{"node-0002", "node-0003", "node-0004", "node-0006"});

    f.tiers = {2};
    CHECK(names(select_nodes(fleet(), f).value()) == Names{"node-0002", "node-0003", "node-0004"});

    // Nothing left to retry: an empty selection, not an error.
    TargetFilter done;
    done.retry_rollout = "R";
    done.retry = not_deployed({result("node-0001", "DEPLOYED")});
    auto s = select_nodes(fleet(), done);
    REQUIRE(s.has_value());
    CHECK(s->nodes.empty());
    // ... but a typo in --limit is still one.
    done.limit = {"nope"};
    CHECK_FALSE(select_nodes(fleet(), done).has_value());
}

TEST_CASE("targeting: the description names the filters and the selection") {
    TargetFilter f;
    f.limit = {"node-000[1-2]"};
    f.tiers = {2};
    f.retry_rollout = "SR-1-x";
    f.retry = {"node-0002"};
    auto s = select_nodes(fleet(), f);
    REQUIRE(s.has_value());
    CHECK(describe_selection(f, *s, 8) ==
          "limit=node-000[1-2]; tier=2; retry_failed=SR-1-x; selected 1 of 8 node(s): node-0002");
}

TEST_SUITE_END();
