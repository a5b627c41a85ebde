#include "guardia/service/metrics.hpp"

#include "guardia/version.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>

using namespace guardia::service;

TEST_CASE("metrics: label values escape backslash, quote and newline, nothing else") {
    CHECK(escape_label_value("plain UPLOAD") == "plain UPLOAD");
    CHECK(escape_label_value("a\\b") == "a\\\\b");
    CHECK(escape_label_value("say \"hi\"") == "say \\\"hi\\\"");
    CHECK(escape_label_value("two\nlines") == "two\\nlines");
    CHECK(escape_label_value("tab\there") == "tab\there");
    CHECK(escape_help("a \"quote\" \\ and\nnewline") == "a \"quote\" \\\\ and\\nnewline");
}

TEST_CASE("metrics: values are shortest decimals, infinities and NaN spelled as Prometheus does") {
    CHECK(format_value(0.01) == "0.01");
    CHECK(format_value(1) == "1");
    CHECK(format_value(600) == "600");
    CHECK(format_value(2.5) == "2.5");
    CHECK(format_value(0) == "0");
    CHECK(format_value(std::numeric_limits<double>::infinity()) == "+Inf");
    CHECK(format_value(-std::numeric_limits<double>::infinity()) == "-Inf");
    CHECK(format_value(std::nan("")) == "NaN");
    CHECK(std::stod(format_value(0.1 + 0.2)) == 0.1 + 0.2);  // round-trips
}

TEST_CASE("metrics: a histogram counts by upper bound inclusive, cumulative, +Inf is the count") {
    Histogram h({0.1, 1, 10});
    for (double v : {0.05, 0.1, 0.5, 1.0, 9.0, 11.0, 1000.0}) h.observe(v);
    CHECK(h.count() == 7);
    CHECK(h.sum() == doctest::Approx(0.05 + 0.1 + 0.5 + 1.0 + 9.0 + 11.0 + 1000.0));
    const auto cum = h.cumulative();
    REQUIRE(cum.size() == 3);
    CHECK(cum[0] == 2);  // 0.05, 0.1 (le is inclusive)
    CHECK(cum[1] == 4);  // + 0.5, 1.0
    CHECK(cum[2] == 5);  // + 9.0; 11 and 1000 only in +Inf
}

TEST_CASE("metrics: bounds that are not finite and increasing are dropped") {
    Histogram h({1, 0.5, 1, std::numeric_limits<double>::infinity(), std::nan(""), 2});
    CHECK(h.bounds() == std::vector<double>{1, 2});
    h.observe(3);
    CHECK(h.cumulative() == std::vector<std::uint64_t>{0, 0});
    CHECK(h.count() == 1);
}

TEST_CASE("metrics: the step buckets span SSH steps, 10 ms to 10 min, increasing") {
    const auto& b = step_duration_buckets();
    REQUIRE(!b.empty());
    CHECK(b.front() == 0.01);
    CHECK(b.back() == 600);
    CHECK(Histogram(b).bounds() == b);
    CHECK(Histogram(rollout_duration_buckets()).bounds() == rollout_duration_buckets());
}

TEST_CASE("metrics: the exposition of a histogram, a labelled counter and a bare gauge") {
    Histogram h({0.5, 1});
    h.observe(0.25);
    h.observe(2);
    Exposition m;
    m.family("x_seconds", "histogram", "Time in x.");
    m.histogram("x_seconds", {{"step", "UP\"LOAD"}}, h);
    m.family("x_total", "counter", "Things.");
    m.sample("x_total", {{"status", "OK"}, {"code", "200"}}, std::uint64_t{3});
    m.family("x_open", "gauge", "Open now.");
    m.sample("x_open", {}, std::uint64_t{0});
    CHECK(m.str() ==
          "# HELP x_seconds Time in x.\n"
          "# TYPE x_seconds histogram\n"
          "x_seconds_bucket{step=\"UP\\\"LOAD\",le=\"0.5\"} 1\n"
          "x_seconds_bucket{step=\"UP\\\"LOAD\",le=\"1\"} 1\n"
          "x_seconds_bucket{step=\"UP\\\"LOAD\",le=\"+Inf\"} 2\n"
          "x_seconds_sum{step=\"UP\\\"LOAD\"} 2.25\n"
          "x_seconds_count{step=\"UP\\\"LOAD\"} 2\n"
          "# HELP x_total Things.\n"
          "# TYPE x_total counter\n"
          "x_total{status=\"OK\",code=\"200\"} 3\n"
          "# HELP x_open Open now.\n"
          "# TYPE x_open gauge\n"
          "x_open 0\n");
}

TEST_CASE("metrics: an empty histogram still has its +Inf bucket, sum and count") {
    Exposition m;
    m.histogram("y", {}, Histogram({1}));
    CHECK(m.str() == "y_bucket{le=\"1\"} 0\ny_bucket{le=\"+Inf\"} 0\ny_sum 0\ny_count 0\n");
}

TEST_CASE("metrics: build_info names the version, the commit and the libraries") {
    const auto labels = build_info_labels();
    REQUIRE(labels.size() == 5);
    CHECK(labels[0] == std::pair<std::string, std::string>{"version", guardia::version()});
    CHECK(labels[1].first == "commit");
    CHECK(!labels[1].second.empty());
    CHECK(labels[2].first == "libssh2");
    CHECK(labels[2].second.find('.') != std::string::npos);
    CHECK(labels[3].first == "openssl");
    CHECK(labels[3].second.find('.') != std::string::npos);
    CHECK(labels[4].first == "boost");
    CHECK(labels[4].second.rfind("1.", 0) == 0);
}
