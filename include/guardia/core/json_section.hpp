// Strict reading of one JSON object of a configuration file: every error names
// "<source>: <path>.<field>", unknown fields are refused, absent fields keep their defaults.
// Shared by the engine configuration and the service's sections.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/core/json_input.hpp"

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace guardia {

// Reads the fields of one JSON object, naming "<source>: <path>.<field>" in every error.
class Section {
  public:
    Section(const boost::json::object& obj, std::string source, std::string path)
        : obj_(obj), source_(std::move(source)), path_(std::move(path)) {}

    Error error(std::string_view field, const std::string& what) const {
        return Error(errc::invalid_argument, source_ + ": " + name(field) + ": " + what);
    }
    std::string name(std::string_view field) const {
        return path_.empty() ? std::string(field) : path_ + "." + std::string(field);
    }

    Result<void> only(std::initializer_list<std::string_view> known) const {
        for (const auto& kv : obj_) {
            bool ok = false;
            for (auto k : known) ok = ok || kv.key() == k;
            if (!ok)
                return Error(errc::invalid_argument,
                             source_ + ": " + name(printable(kv.key())) + ": unknown field");
        }
        return {};
    }

    const boost::json::value* find(std::string_view field) const { return obj_.if_contains(field); }

    // An integer in [lo, hi]; absent: `into` keeps its default.
    template <typename T>
    Result<void> integer(std::string_view field, T& into, std::int64_t lo, std::int64_t hi) const {
        const auto* v = find(field);
        if (!v) return {};
        std::int64_t x = 0;
        if (v->is_int64())
            x = v->get_int64();
        else if (v->is_uint64() && v->get_uint64() <= static_cast<std::uint64_t>(hi))
            x = static_cast<std::int64_t>(v->get_uint64());
        else
            return error(field, "must be an integer between " + std::to_string(lo) + " and " +
                                    std::to_string(hi));
        if (x < lo || x > hi)
            return error(field, "must be between " + std::to_string(lo) + " and " +
                                    std::to_string(hi) + " (got " + std::to_string(x) + ")");
        into = static_cast<T>(x);
        return {};
    }

    Result<void> number(std::string_view field, double& into, double lo, double hi) const {
        const auto* v = find(field);
        if (!v) return {};
        double x = 0;
        if (v->is_double())
            x = v->get_double();
        else if (v->is_int64())
            x = static_cast<double>(v->get_int64());
        else if (v->is_uint64())
            x = static_cast<double>(v->get_uint64());
        else
            return error(field, "must be a number");
        if (!(x >= lo && x <= hi))
            return error(field,
                         "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
        into = x;
        return {};
    }

    Result<void> seconds(std::string_view field, std::chrono::milliseconds& into,
                         std::int64_t max_s) const {
        const auto* v = find(field);
        if (!v) return {};
        double s = 0;
        if (auto r = number(field, s, 0.001, static_cast<double>(max_s)); !r) return r;
        into = std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(s * 1000.0)));
        return {};
    }

    Result<void> boolean(std::string_view field, bool& into) const {
        const auto* v = find(field);
        if (!v) return {};
        if (!v->is_bool()) return error(field, "must be true or false");
        into = v->get_bool();
        return {};
    }

    Result<void> string(std::string_view field, std::string& into) const {
        const auto* v = find(field);
        if (!v) return {};
        if (!v->is_string()) return error(field, "must be a string");
        into = std::string(v->get_string());
        return {};
    }

    Result<void> path(std::string_view field, std::string& into) const {
        if (auto r = string(field, into); !r) return r;
        if (find(field) && (into.empty() || into[0] != '/'))
            return error(field, "must be an absolute path");
        // A control character (DEL included) in a path is never meant, and would reach logs
        // and error messages raw (found by test/fuzz/fuzz_config.cpp: "/etc/guardia/known\x7fhosts").
        for (char c : into)
            if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) == 0x7f)
                return error(field, "must not hold control characters");
        return {};
    }

  private:
    const boost::json::object& obj_;
    std::string source_;
    std::string path_;
};

}  // namespace guardia
