#include "guardia/service/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

#include <openssl/crypto.h>
#include <boost/version.hpp>

#include "guardia/ssh/session.hpp"
#include "guardia/version.hpp"

namespace guardia::service {

const std::vector<double>& step_duration_buckets() {
    static const std::vector<double> b{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,  2.5,
                                       5,    10,    30,   60,  120,  300, 600};
    return b;
}

const std::vector<double>& rollout_duration_buckets() {
    static const std::vector<double> b{1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200};
    return b;
}

Histogram::Histogram(const std::vector<double>& upper_bounds) {
    for (double b : upper_bounds)
        if (std::isfinite(b) && (bounds_.empty() || b > bounds_.back())) bounds_.push_back(b);
    per_bucket_.assign(bounds_.size(), 0);
}

void Histogram::observe(double v) {
    // The first bucket whose upper bound is >= v; past the last bound only +Inf holds it.
    auto it = std::lower_bound(bounds_.begin(), bounds_.end(), v);
    if (it != bounds_.end()) ++per_bucket_[static_cast<std::size_t>(it - bounds_.begin())];
    sum_ += v;
    ++count_;
}

std::vector<std::uint64_t> Histogram::cumulative() const {
    std::vector<std::uint64_t> out(per_bucket_.size());
    std::uint64_t running = 0;
    for (std::size_t i = 0; i < per_bucket_.size(); ++i) out[i] = running += per_bucket_[i];
    return out;
}

namespace {

std::string escape(std::string_view v, bool quote) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '\n')
            out += "\\n";
        else if (quote && c == '"')
            out += "\\\"";
        else
            out += c;
    }
    return out;
}

}  // namespace

std::string escape_label_value(std::string_view v) {
    return escape(v, true);
}
std::string escape_help(std::string_view v) {
    return escape(v, false);
}

std::string format_value(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    if (ec != std::errc{}) return "NaN";
    return std::string(buf, end);
}

void Exposition::family(std::string_view name, std::string_view type, std::string_view help) {
    out_.append("# HELP ").append(name).append(" ").append(escape_help(help)).append("\n");
    out_.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void Exposition::series(std::string_view name, const MetricLabels& labels,
                        std::string_view extra_name, std::string_view extra_value) {
    out_.append(name);
    if (labels.empty() && extra_name.empty()) return;
    char sep = '{';
    for (const auto& [k, v] : labels) {
        out_.append(1, sep).append(k).append("=\"").append(escape_label_value(v)).append("\"");
        sep = ',';
    }
    if (!extra_name.empty())
        out_.append(1, sep).append(extra_name).append("=\"").append(extra_value).append("\"");
    out_.append("}");
}

void Exposition::sample(std::string_view name, const MetricLabels& labels, std::uint64_t v) {
    series(name, labels);
    out_.append(" ").append(std::to_string(v)).append("\n");
}

void Exposition::sample(std::string_view name, const MetricLabels& labels, double v) {
    series(name, labels);
    out_.append(" ").append(format_value(v)).append("\n");
}

void Exposition::histogram(std::string_view name, const MetricLabels& labels, const Histogram& h) {
    const std::string bucket = std::string(name) + "_bucket";
    const auto cum = h.cumulative();
    for (std::size_t i = 0; i < cum.size(); ++i) {
        series(bucket, labels, "le", format_value(h.bounds()[i]));
        out_.append(" ").append(std::to_string(cum[i])).append("\n");
    }
    series(bucket, labels, "le", "+Inf");
    out_.append(" ").append(std::to_string(h.count())).append("\n");
    sample(std::string(name) + "_sum", labels, h.sum());
    sample(std::string(name) + "_count", labels, h.count());
}

MetricLabels build_info_labels() {
    const std::string boost = std::to_string(BOOST_VERSION / 100000) + "." +
                              std::to_string(BOOST_VERSION / 100 % 1000) + "." +
                              std::to_string(BOOST_VERSION % 100);
    return {{"version", guardia::version()},
            {"commit", guardia::build_commit()},
            {"libssh2", ssh::library_version()},
            {"openssl", OpenSSL_version(OPENSSL_VERSION_STRING)},
            {"boost", boost}};
}

}  // namespace guardia::service
