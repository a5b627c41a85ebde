#include "progress.hpp"

#include "cli.hpp"

#include <boost/asio/post.hpp>

#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace guardia::cli {

using Clock = std::chrono::steady_clock;
using deploy::NodeOutcome;

std::string clock_text(double seconds) {
    if (!(seconds >= 0) || std::isinf(seconds)) return "--:--";
    const long s = std::lround(seconds);
    char buf[32];
    if (s >= 3600)
        std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
    return buf;
}

double plain_status_interval(double elapsed_s) {
    if (elapsed_s < 120) return 5;
    if (elapsed_s < 600) return 15;
    return 60;
}

namespace {

// A positive integer, or 0.
std::size_t positive(const char* text) {
    if (text == nullptr || *text == '\0') return 0;
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0' || text[0] == '-' || v == 0) return 0;
    return static_cast<std::size_t>(v);
}

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

// The width of the terminal behind `out` (TIOCGWINSZ), or $COLUMNS, or 0.
std::size_t output_width(std::FILE* out, bool terminal) {
    struct winsize ws {};
    unsigned cols = 0;
    if (terminal && ::ioctl(::fileno(out), TIOCGWINSZ, &ws) == 0) cols = ws.ws_col;
    return choose_width(terminal, cols, std::getenv("COLUMNS"));
}

}  // namespace

std::size_t choose_width(bool terminal, unsigned winsize_cols, const char* columns_env) {
    if (terminal && winsize_cols > 0) return winsize_cols;
    return positive(columns_env);
}

std::string fit_width(const std::string& line, std::size_t width, bool colour) {
    if (width == 0) return line;
    // Columns of the whole line first: most lines fit.
    auto columns = [](const std::string& s, std::size_t limit, std::size_t& cut) {
        std::size_t cols = 0;
        cut = s.size();
        for (std::size_t i = 0; i < s.size();) {
            const auto c = static_cast<unsigned char>(s[i]);
            if (c == 0x1b && i + 1 < s.size() && s[i + 1] == '[') {  // CSI: no column
                std::size_t j = i + 2;
                while (j < s.size() && !(s[j] >= '@' && s[j] <= '~')) ++j;
                i = std::min(j + 1, s.size());
                continue;
            }
            if (cols == limit && cut == s.size()) cut = i;
            ++cols;
            ++i;
            while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
        }
        return cols;
    };
    std::size_t cut = 0;
    if (columns(line, width, cut) <= width) return line;
    // Room for the ellipsis: keep width - 1 columns.
    columns(line, width - 1, cut);
    std::string out = line.substr(0, cut);
    if (colour && out.find('\x1b') != std::string::npos) out += "\x1b[0m";
    return out + "\u2026";
}

bool use_colour(bool terminal, const char* no_color_env) {
    return terminal && (no_color_env == nullptr || *no_color_env == '\0');
}

std::size_t summary_threshold(const char* env) {
    const std::size_t n = positive(env);
    return n > 0 ? n : 1000;
}

std::optional<ReportMode> parse_report_mode(std::string_view text) {
    if (text == "full") return ReportMode::full;
    if (text == "summary") return ReportMode::summary;
    if (text == "auto") return ReportMode::automatic;
    return std::nullopt;
}

bool report_every_node(ReportMode mode, std::size_t nodes, std::size_t threshold) {
    switch (mode) {
        case ReportMode::full:
            return true;
        case ReportMode::summary:
            return false;
        case ReportMode::automatic:
            break;
    }
    return nodes < threshold;
}

bool ReportRows::show(bool succeeded) {
    if (every_) return true;
    if (succeeded) return false;
    if (shown_ == kSummaryReportRows) {
        ++more_;
        return false;
    }
    ++shown_;
    return true;
}

ReportMode report_mode_flag(const std::string& value) {
    if (auto m = parse_report_mode(value)) return *m;
    std::string what = "--report: expected full, summary or auto, got '";
    what += value;
    what += "'";
    throw UsageError(what);
}

bool report_every_node(ReportMode mode, std::size_t nodes) {
    return report_every_node(mode, nodes,
                             summary_threshold(std::getenv("GUARDIA_PROGRESS_SUMMARY_NODES")));
}

std::string summary_line(const ProgressCounts& c, double elapsed_s) {
    const double rate = elapsed_s > 0 ? static_cast<double>(c.finished) / elapsed_s : 0.0;
    const std::size_t left = c.total - std::min(c.total, c.finished + c.not_started);
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "summary: %zu/%zu done, %zu failed, %zu in flight, %.1f nodes/s, ETA %s",
                  c.finished, c.total, c.failed, c.in_flight, rate,
                  left == 0 ? "0:00"
                            : (rate > 0 ? clock_text(static_cast<double>(left) / rate).c_str()
                                        : "--:--"));
    return buf;
}

ProgressDisplay::ProgressDisplay(boost::asio::any_io_executor ex, const deploy::Rollout& rollout,
                                 std::FILE* out, bool terminal, bool quiet)
    : timer_(std::move(ex)),
      rollout_(rollout),
      out_(out),
      terminal_(terminal),
      quiet_(quiet),
      colour_(use_colour(terminal, std::getenv("NO_COLOR"))),
      summarise_(!terminal && rollout.progress().nodes.size() >=
                                  summary_threshold(std::getenv("GUARDIA_PROGRESS_SUMMARY_NODES"))),
      width_(output_width(out, terminal)) {}

void ProgressDisplay::start() {
    if (quiet_) return;
    tick();
}

void ProgressDisplay::tick() {
    if (stopped_) return;
    if (terminal_)
        redraw();
    else if (seconds_since(last_plain_summary_) >= plain_status_interval(seconds_since(t0_))) {
        last_plain_summary_ = Clock::now();
        if (summarise_)
            print_summary();
        else
            for (const auto& t : rollout_.progress().tiers)
                if (t.active) print_line(tier_line(t));
        if (rollout_.progress().control != deploy::ControlState::running)
            print_line(std::string(to_string(rollout_.progress().control)) +
                       ": no new node starts (resume: kill -USR2 " + std::to_string(::getpid()) +
                       ")");
    }
    timer_.expires_after(std::chrono::milliseconds(terminal_ ? 200 : 1000));
    timer_.async_wait([this](boost::system::error_code ec) {
        if (!ec) tick();
    });
}

void ProgressDisplay::stop() {
    if (quiet_ || stopped_) return;
    stopped_ = true;
    timer_.cancel();
    if (terminal_) {
        redraw();
        block_lines_ = 0;  // the last block stays on screen
    }
}

std::string ProgressDisplay::tier_line(const deploy::TierProgress& t) const {
    const double elapsed = t.started_at == Clock::time_point{} ? 0.0
                           : t.complete
                               ? std::chrono::duration<double>(t.finished_at - t.started_at).count()
                               : seconds_since(t.started_at);
    const double rate = elapsed > 0 ? static_cast<double>(t.finished) / elapsed : 0.0;
    const std::size_t left = t.total - t.finished - t.skipped;
    std::string state = t.complete ? "done" : t.active ? "running" : "waiting";
    char buf[256];
    std::snprintf(
        buf, sizeof buf,
        "tier %d %-7s %5zu/%-5zu done  %4zu failed  %4zu in flight  %4zu not started  %6.1f "
        "nodes/s  %s %s",
        t.tier, state.c_str(), t.finished, t.total, t.failed, t.in_flight, t.skipped, rate,
        t.complete ? "took" : "ETA",
        t.complete ? clock_text(elapsed).c_str()
                   : (rate > 0 ? clock_text(static_cast<double>(left) / rate).c_str() : "--:--"));
    return buf;
}

void ProgressDisplay::erase_block() {
    for (int k = 0; k < block_lines_; ++k) std::fputs("\x1b[1A\x1b[2K", out_);
    block_lines_ = 0;
}

void ProgressDisplay::put(const std::string& line) {
    std::fputs(fit_width(line, width_, colour_).c_str(), out_);
    std::fputc('\n', out_);
}

void ProgressDisplay::redraw() {
    erase_block();
    width_ = output_width(out_, terminal_);  // the terminal may have been resized
    const auto& p = rollout_.progress();
    std::size_t done = 0, failed = 0, running = 0;
    for (const auto& t : p.tiers) {
        done += t.finished;
        failed += t.failed;
        running += t.in_flight;
    }
    const std::string control = p.control == deploy::ControlState::running
                                    ? std::string()
                                    : "  " + std::string(to_string(p.control));
    char head[512];
    std::snprintf(head, sizeof head,
                  "%srollout %s%s%s  %zu/%zu done, %zu failed, %zu in flight, %s elapsed",
                  colour_ ? "\x1b[1m" : "", p.rollout_id.c_str(), colour_ ? "\x1b[0m" : "",
                  control.c_str(), done, p.nodes.size(), failed, running,
                  clock_text(seconds_since(t0_)).c_str());
    put(head);
    block_lines_ = 1;
    for (const auto& t : p.tiers) {
        if (t.total == 0) continue;
        put("  " + tier_line(t));
        ++block_lines_;
    }
    std::fflush(out_);
}

void ProgressDisplay::print_line(const std::string& line) {
    if (quiet_) return;
    if (terminal_) erase_block();
    std::string stamped = "[";  // not "[" + std::string&&: GCC bug 105329 at -O3
    stamped += clock_text(seconds_since(t0_));
    stamped += "] ";
    stamped += line;
    put(stamped);
    if (terminal_ && !stopped_) redraw();
    std::fflush(out_);
}

void ProgressDisplay::say(const std::string& line) {
    if (!quiet_) return print_line(line);
    std::fprintf(out_, "guardia: %s\n", line.c_str());
    std::fflush(out_);
}

// Operator control is always said (also under --quiet): a paused rollout says how it goes on.
void ProgressDisplay::control_changed(const deploy::RolloutReport& r, deploy::ControlRequest request,
                                      const std::string& by) {
    const std::string pid = std::to_string(::getpid());
    switch (request) {
        case deploy::ControlRequest::pause:
            say("PAUSED by " + by + ": no new node starts; nodes in flight finish. Resume: kill -USR2 " +
                pid + " (cancel: kill -INT " + pid + ")");
            break;
        case deploy::ControlRequest::resume:
            say("RESUMED by " + by);
            break;
        case deploy::ControlRequest::abort:
            say("ABORT: " + r.reason + " -- no new node starts; nodes in flight finish");
            break;
    }
}

void ProgressDisplay::tier_gate(const deploy::TierProgress& t) {
    const std::string pid = std::to_string(::getpid());
    say("tier " + std::to_string(t.tier) + " done: AWAITING_APPROVAL before the next tier. " +
        "Approve: kill -USR2 " + pid + " (cancel: kill -INT " + pid + ")");
}

void ProgressDisplay::note(const std::string& line) {
    print_line(line);
}

void ProgressDisplay::tier_started(const deploy::TierProgress& t) {
    print_line("tier " + std::to_string(t.tier) + ": starting " + std::to_string(t.total) +
               " node(s)");
}

void ProgressDisplay::node_finished(const deploy::NodeProgress& n, const deploy::TierProgress&) {
    const auto& r = n.report;
    const bool ok = r.outcome == NodeOutcome::deployed;
    // On a terminal only failures get a line (the block shows the rest); plain output logs all,
    // but for a large rollout (summaries instead).
    if (ok && (terminal_ || summarise_)) return;
    if (summarise_ && !ok && ++failure_lines_ > kSummaryFailureLines) {
        if (failure_lines_ == kSummaryFailureLines + 1)
            print_line("more than " + std::to_string(kSummaryFailureLines) +
                       " nodes failed: further failures are counted in the summaries, the report "
                       "names them");
        return;
    }
    std::string line =
        n.node.name + " " +
        std::string(rollout_.progress().dry_run && ok ? "READY" : to_string(r.outcome)) + " (" +
        std::to_string(r.duration.count()) + " ms)";
    if (!ok) {
        line += " at " + r.failed_step + ": " + r.error.message;
        if (!r.rollback_error.empty()) line += "; rollback: " + r.rollback_error;
    }
    print_line(line);
}

void ProgressDisplay::tier_finished(const deploy::TierProgress& t) {
    print_line(tier_line(t));
    if (summarise_) print_summary();
}

void ProgressDisplay::print_summary() {
    ProgressCounts c;
    const auto& p = rollout_.progress();
    c.total = p.nodes.size();
    for (const auto& t : p.tiers) {
        c.finished += t.finished;
        c.failed += t.failed;
        c.in_flight += t.in_flight;
        c.not_started += t.skipped;
    }
    print_line(summary_line(c, seconds_since(t0_)));
}

void ProgressDisplay::gate_tripped(const deploy::TierProgress&, const std::string& reason) {
    print_line("ABORT: " + reason + " -- no new node starts; nodes in flight finish");
}

}  // namespace guardia::cli
