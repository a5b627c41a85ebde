// Live rollout progress on stderr: a redrawn block per tier on a terminal (done / failed /
// in flight, rate, ETA), plain timestamped lines otherwise (logs, CI, pipes).
#pragma once

#include "guardia/deploy/rollout.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdio>
#include <deque>
#include <string>

namespace guardia::cli {

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

    boost::asio::steady_timer timer_;
    const deploy::Rollout& rollout_;
    std::FILE* out_;
    bool terminal_, quiet_, stopped_ = false;
    int block_lines_ = 0;
    std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point last_plain_summary_ = t0_;
};

}  // namespace guardia::cli
