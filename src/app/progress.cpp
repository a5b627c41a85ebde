#include "progress.hpp"

#include <boost/asio/post.hpp>

#include <unistd.h>

#include <cmath>

namespace guardia::cli {

using Clock = std::chrono::steady_clock;
using deploy::NodeOutcome;

namespace {

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

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

ProgressDisplay::ProgressDisplay(boost::asio::any_io_executor ex, const deploy::Rollout& rollout,
                                 std::FILE* out, bool terminal, bool quiet)
    : timer_(std::move(ex)), rollout_(rollout), out_(out), terminal_(terminal), quiet_(quiet) {}

void ProgressDisplay::start() {
    if (quiet_) return;
    tick();
}

void ProgressDisplay::tick() {
    if (stopped_) return;
    if (terminal_)
        redraw();
    else if (seconds_since(last_plain_summary_) >= 5.0) {
        last_plain_summary_ = Clock::now();
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

void ProgressDisplay::redraw() {
    erase_block();
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
    std::fprintf(out_,
                 "\x1b[1mrollout %s\x1b[0m%s  %zu/%zu done, %zu failed, %zu in flight, %s elapsed\n",
                 p.rollout_id.c_str(), control.c_str(), done, p.nodes.size(), failed, running,
                 clock_text(seconds_since(t0_)).c_str());
    block_lines_ = 1;
    for (const auto& t : p.tiers) {
        if (t.total == 0) continue;
        std::fprintf(out_, "  %s\n", tier_line(t).c_str());
        ++block_lines_;
    }
    std::fflush(out_);
}

void ProgressDisplay::print_line(const std::string& line) {
    if (quiet_) return;
    if (terminal_) erase_block();
    std::fprintf(out_, "[%s] %s\n", clock_text(seconds_since(t0_)).c_str(), line.c_str());
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
    // On a terminal only failures get a line (the block shows the rest); plain output logs all.
    if (ok && terminal_) return;
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
}

void ProgressDisplay::gate_tripped(const deploy::TierProgress&, const std::string& reason) {
    print_line("ABORT: " + reason + " -- no new node starts; nodes in flight finish");
}

}  // namespace guardia::cli
