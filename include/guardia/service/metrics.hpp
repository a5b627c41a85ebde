#pragma once
// Prometheus text exposition (format 0.0.4) for GET /metrics: a cumulative histogram and the
// formatting rules (HELP/TYPE lines, label-value escaping, float values, the `le` label and
// its +Inf bucket). Pure code: the service feeds it numbers, the unit tests check the text.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace guardia::service {

// Upper bounds in seconds of guardia_step_duration_seconds: an SSH step takes from a few
// milliseconds (a stat) to minutes (a large upload, a slow health check).
const std::vector<double>& step_duration_buckets();
// Upper bounds in seconds of guardia_rollout_duration_seconds: a rollout of one node to hours.
const std::vector<double>& rollout_duration_buckets();

// A Prometheus histogram: observations counted into buckets by upper bound (`le`), plus their
// sum and count. The +Inf bucket is implicit: it is count().
class Histogram {
  public:
    // upper_bounds: finite, strictly increasing (a bound that breaks this is dropped).
    explicit Histogram(const std::vector<double>& upper_bounds);
    void observe(double v);
    const std::vector<double>& bounds() const { return bounds_; }
    // Observations <= bounds()[i], one entry per bound (cumulative, as exposed).
    std::vector<std::uint64_t> cumulative() const;
    double sum() const { return sum_; }
    std::uint64_t count() const { return count_; }

  private:
    std::vector<double> bounds_;
    std::vector<std::uint64_t> per_bucket_;  // not cumulative; per_bucket_[i]: (b[i-1], b[i]]
    double sum_ = 0;
    std::uint64_t count_ = 0;
};

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// A label value in the text format: backslash, double quote and newline escaped.
std::string escape_label_value(std::string_view v);
// HELP text: backslash and newline escaped.
std::string escape_help(std::string_view v);
// A sample value or `le` bound: shortest round-trip decimal, "+Inf", "-Inf" or "NaN".
std::string format_value(double v);

// Builds one exposition document.
class Exposition {
  public:
    // # HELP and # TYPE lines of a metric family (type: counter, gauge, histogram, ...).
    void family(std::string_view name, std::string_view type, std::string_view help);
    void sample(std::string_view name, const MetricLabels& labels, std::uint64_t v);
    void sample(std::string_view name, const MetricLabels& labels, double v);
    // name_bucket{labels...,le="..."} for every bound and +Inf, then name_sum and name_count.
    void histogram(std::string_view name, const MetricLabels& labels, const Histogram& h);
    const std::string& str() const { return out_; }

  private:
    void series(std::string_view name, const MetricLabels& labels, std::string_view extra_name = {},
                std::string_view extra_value = {});
    std::string out_;
};

// guardia_build_info's labels: version, commit (git, at configure time; "unknown" outside a
// git checkout), and the libssh2, OpenSSL and Boost versions the binary was built with.
MetricLabels build_info_labels();

}  // namespace guardia::service
