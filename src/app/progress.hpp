// Live rollout progress on stderr: a redrawn block per tier on a terminal (done / failed /
// in flight, rate, ETA), plain timestamped lines otherwise (logs, CI, pipes).
//
// Every line fits the terminal's width (cut with an ellipsis, never wrapped: the redrawn block
// counts its lines); NO_COLOR turns colour off; output that is not a terminal never holds an
// escape sequence. Plain output of a large rollout (summary_threshold() nodes or more) prints a
// summary every 5 s and at each tier's end plus one line per failed node, not one per node.
#pragma once

#include "guardia/deploy/rollout.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdio>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

namespace guardia::cli {

// ---- pure formatting (unit-tested in test/unit/progress_format_test.cpp)

// The width progress lines are cut to: `winsize_cols` (TIOCGWINSZ) when the output is a
// terminal and it is known (> 0), else $COLUMNS when it is a positive integer, else 0 (no
// limit).
std::size_t choose_width(bool terminal, unsigned winsize_cols, const char* columns_env);
// `line` cut to `width` columns ending in "…" when longer; 0: unchanged. UTF-8 sequences count
// as one column and escape sequences (ESC [ ... letter) as none; an escape sequence cut off is
// closed with a reset when colour is used (`colour`).
std::string fit_width(const std::string& line, std::size_t width, bool colour);
// Colour only on a terminal, and not when NO_COLOR is set to anything non-empty (no-color.org).
bool use_colour(bool terminal, const char* no_color_env);
// From how many nodes plain output summarises: GUARDIA_PROGRESS_SUMMARY_NODES (a positive
// integer; meant for tests) or 1000.
std::size_t summary_threshold(const char* env);

// What the plain (non-JSON) report of deploy, exec and rollback lists (--report): `full` a row
// per node; `summary` the counts and only the nodes that did not succeed; `automatic` (the
// default) full below summary_threshold() nodes, summary at or above.
enum class ReportMode { full, summary, automatic };
// "full", "summary" or "auto"; anything else: nullopt.
std::optional<ReportMode> parse_report_mode(std::string_view text);
// Whether the plain report of `nodes` nodes has a row per node.
bool report_every_node(ReportMode mode, std::size_t nodes, std::size_t threshold);
// A summary report names at most this many nodes that did not succeed, then says how many more
// there are and where they are (--json, --report full): its output stays under 500 lines.
inline constexpr std::size_t kSummaryReportRows = 400;
// Which rows a plain report prints, one call of show() per node in order: every row, or (a
// summary) only the nodes that did not succeed, at most kSummaryReportRows of them; more()
// counts those left out beyond that.
class ReportRows {
  public:
    explicit ReportRows(bool every) : every_(every) {}
    bool show(bool succeeded);
    std::size_t more() const { return more_; }

  private:
    bool every_;
    std::size_t shown_ = 0, more_ = 0;
};
// The value of --report; throws UsageError (cli.hpp) naming the flag and the accepted values.
ReportMode report_mode_flag(const std::string& value);
// report_every_node() with the threshold of GUARDIA_PROGRESS_SUMMARY_NODES (else 1000).
bool report_every_node(ReportMode mode, std::size_t nodes);

// How long plain (non-terminal) progress waits between two status lines, `elapsed_s` into the
// rollout: every 5 s for the first 2 minutes, every 15 s until 10 minutes, then every minute.
// A log of a long rollout stays readable: ~110 lines in an hour instead of 720.
double plain_status_interval(double elapsed_s);
// A summarising display (plain output of a large rollout) gives a line to at most this many
// failed nodes as they fail, then one line saying that further failures are only counted (the
// report names them, up to kSummaryReportRows): a mass failure cannot flood the log.
inline constexpr std::size_t kSummaryFailureLines = 50;

struct ProgressCounts {
    ProgressCounts() {}
    std::size_t total = 0, finished = 0, failed = 0, in_flight = 0, not_started = 0;
};
// "summary: 420/1000 done, 3 failed, 50 in flight, 12.5 nodes/s, ETA 0:46"
std::string summary_line(const ProgressCounts& c, double elapsed_s);
// "1:05", "1:02:03"; "--:--" when unknown (negative, infinite, NaN).
std::string clock_text(double seconds);

// ---- the display

class ProgressDisplay : public deploy::RolloutObserver {
  public:
    ProgressDisplay(boost::asio::any_io_executor ex, const deploy::Rollout& rollout, std::FILE* out,
                    bool terminal, bool quiet);
    void start();
    void stop();  // final redraw, stops the timer

    void tier_started(const deploy::TierProgress&) override;
    void node_finished(const deploy::NodeProgress&, const deploy::TierProgress&) override;
    void tier_finished(const deploy::TierProgress&) override;
    void gate_tripped(const deploy::TierProgress&, const std::string& reason) override;
    void control_changed(const deploy::RolloutReport&, deploy::ControlRequest,
                         const std::string& by) override;
    void tier_gate(const deploy::TierProgress&) override;
    void note(const std::string& line);  // a permanent line (e.g. "cancelling...")

  private:
    void tick();
    void redraw();
    void erase_block();
    std::string tier_line(const deploy::TierProgress& t) const;
    void print_line(const std::string& line);
    void say(const std::string& line);  // print_line, also under --quiet
    void put(const std::string& line);  // one line, cut to width_
    void print_summary();

    boost::asio::steady_timer timer_;
    const deploy::Rollout& rollout_;
    std::FILE* out_;
    bool terminal_, quiet_, stopped_ = false;
    bool colour_ = false;
    bool summarise_ = false;  // plain output of a large rollout
    std::size_t width_ = 0;   // 0: no limit
    int block_lines_ = 0;
    std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point last_plain_summary_ = t0_;
    std::size_t failure_lines_ = 0;  // failed nodes given a line by a summarising display
};

}  // namespace guardia::cli
