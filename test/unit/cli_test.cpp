// The command-line layer's pure pieces: argument reading (-h), the configuration and database
// defaults, and the progress display's formatting.
#include "app/cli.hpp"
#include "app/progress.hpp"

#include <doctest/doctest.h>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

using namespace guardia::cli;

namespace {

// argv for Args from words (the first two are "guardia" and the command).
struct Argv {
    explicit Argv(std::vector<std::string> words) : words_(std::move(words)) {
        for (auto& w : words_) ptrs_.push_back(w.data());
    }
    int argc() const { return static_cast<int>(ptrs_.size()); }
    char** argv() { return ptrs_.data(); }

  private:
    std::vector<std::string> words_;
    std::vector<char*> ptrs_;
};

// Sets (or unsets, with nullptr) an environment variable for one scope.
class ScopedEnv {
  public:
    ScopedEnv(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        if (value)
            ::setenv(name, value, 1);
        else
            ::unsetenv(name);
    }
    ~ScopedEnv() {
        if (old_)
            ::setenv(name_, old_->c_str(), 1);
        else
            ::unsetenv(name_);
    }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

  private:
    const char* name_;
    std::optional<std::string> old_;
};

}  // namespace

TEST_CASE("cli: Args reads -h as --help, anything else single-dashed is refused") {
    Argv a({"guardia", "deploy", "-h"});
    Args args(a.argc(), a.argv(), 2);
    CHECK(args.flag() == "--help");
    CHECK(args.done());

    Argv b({"guardia", "deploy", "--inventory", "x.json", "--help"});
    Args args_b(b.argc(), b.argv(), 2);
    CHECK(args_b.flag() == "--inventory");
    CHECK(args_b.value() == "x.json");
    CHECK(args_b.flag() == "--help");

    Argv c({"guardia", "deploy", "-x"});
    Args args_c(c.argc(), c.argv(), 2);
    CHECK_THROWS_WITH_AS(args_c.flag(), "unexpected argument '-x'", UsageError);

    // "-h" as a flag's value is a value.
    Argv d({"guardia", "deploy", "--sr-id", "-h"});
    Args args_d(d.argc(), d.argv(), 2);
    CHECK(args_d.flag() == "--sr-id");
    CHECK(args_d.value() == "-h");
}

TEST_CASE("cli: the configuration is --config, else GUARDIA_CONFIG, else the system file") {
    Common c;
    {
        ScopedEnv env("GUARDIA_CONFIG", "/tmp/from-env.json");
        CHECK(resolve_config_path(c) == "/tmp/from-env.json");
        CHECK(describe_config(c) == "/tmp/from-env.json (GUARDIA_CONFIG)");
        c.config_path = "/tmp/flag.json";
        CHECK(resolve_config_path(c) == "/tmp/flag.json");
        CHECK(describe_config(c) == "/tmp/flag.json (--config)");
        c.config_path.clear();
    }
    {
        ScopedEnv env("GUARDIA_CONFIG", "");  // set but empty: as if unset
        const bool system = std::filesystem::exists(system_config_path);
        CHECK(resolve_config_path(c) == (system ? system_config_path : ""));
        CHECK(describe_config(c) ==
              (system ? std::string(system_config_path) + " (it exists)"
                      : "built-in defaults (no --config, GUARDIA_CONFIG or "
                        "/etc/guardia/guardia.json)"));
    }
}

TEST_CASE("cli: the database is --db, else the configuration's store.db, else ./guardia.db") {
    Common c;
    guardia::deploy::EngineConfig config;
    CHECK(resolve_db_path(c, config) == "guardia.db");
    config.db = "/var/lib/guardia/guardia.db";
    CHECK(resolve_db_path(c, config) == "/var/lib/guardia/guardia.db");
    c.db_path = "/tmp/x.db";
    CHECK(resolve_db_path(c, config) == "/tmp/x.db");
}

TEST_CASE("cli: a GUARDIA_CONFIG that cannot be read is named") {
    const std::string missing =
        "/tmp/guardia-cli-test-" + std::to_string(::getpid()) + "-missing.json";
    ScopedEnv env("GUARDIA_CONFIG", missing.c_str());
    Common c;
    try {
        (void)load_engine(c, false);
        FAIL("load_engine accepted a missing GUARDIA_CONFIG");
    } catch (const UsageError& e) {
        CHECK(std::string(e.what()).find("GUARDIA_CONFIG: cannot read configuration '" + missing +
                                         "'") == 0);
    }
}

// ------------------------------------------------------------------ progress formatting

TEST_CASE("progress: the width is the terminal's, else COLUMNS, else unlimited") {
    CHECK(choose_width(true, 120, "80") == 120);
    CHECK(choose_width(true, 0, "80") == 80);      // no winsize: COLUMNS
    CHECK(choose_width(false, 120, "70") == 70);   // not a terminal: only COLUMNS
    CHECK(choose_width(false, 120, nullptr) == 0);
    CHECK(choose_width(true, 0, nullptr) == 0);
    CHECK(choose_width(true, 0, "") == 0);
    CHECK(choose_width(true, 0, "wide") == 0);
    CHECK(choose_width(true, 0, "-5") == 0);
    CHECK(choose_width(true, 0, "0") == 0);
}

TEST_CASE("progress: lines are cut to the width with an ellipsis, never wrapped") {
    CHECK(fit_width("short", 10, false) == "short");
    CHECK(fit_width("exactly10!", 10, false) == "exactly10!");
    CHECK(fit_width("eleven char", 10, false) == "eleven ch\u2026");
    CHECK(fit_width("anything at all", 0, false) == "anything at all");
    CHECK(fit_width("ab", 1, false) == "\u2026");
    // UTF-8 counts one column per character and is never cut in the middle.
    CHECK(fit_width("h\u00e9llo w\u00f6rld", 8, false) == "h\u00e9llo w\u2026");
    // Escape sequences take no column; a cut one gets its reset when colour is on.
    CHECK(fit_width("\x1b[1mbold\x1b[0m text", 9, true) == "\x1b[1mbold\x1b[0m text");
    CHECK(fit_width("\x1b[1mbold and long\x1b[0m", 6, true) == "\x1b[1mbold \x1b[0m\u2026");
}

TEST_CASE("progress: NO_COLOR (any non-empty value) and non-terminals have no colour") {
    CHECK(use_colour(true, nullptr));
    CHECK(use_colour(true, ""));
    CHECK_FALSE(use_colour(true, "1"));
    CHECK_FALSE(use_colour(true, "no"));
    CHECK_FALSE(use_colour(false, nullptr));
}

TEST_CASE("progress: summaries from 1,000 nodes, or GUARDIA_PROGRESS_SUMMARY_NODES") {
    CHECK(summary_threshold(nullptr) == 1000);
    CHECK(summary_threshold("") == 1000);
    CHECK(summary_threshold("x") == 1000);
    CHECK(summary_threshold("0") == 1000);
    CHECK(summary_threshold("5") == 5);
}

TEST_CASE("progress: a summary line says done, failed, in flight, rate and ETA") {
    ProgressCounts c;
    c.total = 1000;
    c.finished = 400;
    c.failed = 3;
    c.in_flight = 50;
    CHECK(summary_line(c, 40.0) ==
          "summary: 400/1000 done, 3 failed, 50 in flight, 10.0 nodes/s, ETA 1:00");
    c.finished = 0;
    CHECK(summary_line(c, 0.0) ==
          "summary: 0/1000 done, 3 failed, 50 in flight, 0.0 nodes/s, ETA --:--");
    // Not started nodes (the gate stopped the rollout) are not waited for.
    c.finished = 600;
    c.not_started = 400;
    c.in_flight = 0;
    CHECK(summary_line(c, 60.0) ==
          "summary: 600/1000 done, 3 failed, 0 in flight, 10.0 nodes/s, ETA 0:00");
    CHECK(clock_text(3723) == "1:02:03");
    CHECK(clock_text(-1) == "--:--");
}

TEST_CASE("report: --report full|summary|auto, auto summarises from the threshold") {
    CHECK(parse_report_mode("full") == ReportMode::full);
    CHECK(parse_report_mode("summary") == ReportMode::summary);
    CHECK(parse_report_mode("auto") == ReportMode::automatic);
    CHECK_FALSE(parse_report_mode("").has_value());
    CHECK_FALSE(parse_report_mode("Full").has_value());
    CHECK_FALSE(parse_report_mode("summary ").has_value());
    CHECK_THROWS_WITH_AS(report_mode_flag("brief"),
                         "--report: expected full, summary or auto, got 'brief'", UsageError);
    // auto: a row per node below the threshold, a summary at and above it
    CHECK(report_every_node(ReportMode::automatic, 999, 1000));
    CHECK_FALSE(report_every_node(ReportMode::automatic, 1000, 1000));
    CHECK_FALSE(report_every_node(ReportMode::automatic, 10000, 1000));
    CHECK(report_every_node(ReportMode::automatic, 0, 1000));
    // explicit modes whatever the size
    CHECK(report_every_node(ReportMode::full, 10000, 1000));
    CHECK_FALSE(report_every_node(ReportMode::summary, 1, 1000));
    CHECK(kSummaryReportRows < 500);
}

TEST_CASE("report: a summary lists only what did not succeed, at most kSummaryReportRows") {
    ReportRows all(true);
    CHECK(all.show(true));
    CHECK(all.show(false));
    CHECK(all.more() == 0);
    ReportRows summary(false);
    CHECK_FALSE(summary.show(true));
    std::size_t shown = 0;
    for (std::size_t i = 0; i < kSummaryReportRows + 7; ++i) {
        shown += summary.show(false) ? 1 : 0;
        CHECK_FALSE(summary.show(true));
    }
    CHECK(shown == kSummaryReportRows);
    CHECK(summary.more() == 7);
}

TEST_CASE("progress: plain status lines every 5 s, then 15 s after 2 min, then every minute after 10") {
    using guardia::cli::plain_status_interval;
    CHECK(plain_status_interval(0) == 5);
    CHECK(plain_status_interval(119.9) == 5);
    CHECK(plain_status_interval(120) == 15);
    CHECK(plain_status_interval(599.9) == 15);
    CHECK(plain_status_interval(600) == 60);
    CHECK(plain_status_interval(36000) == 60);
    // An hour of a large rollout: ~110 summary lines (24 + 32 + 50), not 720; ten hours stay
    // under 700.
    auto lines = [](double seconds) {
        int n = 0;
        for (double t = 0, last = 0; t <= seconds; t += 1)
            if (t - last >= plain_status_interval(t)) {
                ++n;
                last = t;
            }
        return n;
    };
    CHECK(lines(3600) <= 110);
    CHECK(lines(36000) < 700);
}
