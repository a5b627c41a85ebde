#include "detail/session_impl.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <array>

namespace guardia::ssh {

namespace asio = boost::asio;

namespace {

// Give the other sessions on the loop a turn after this much output in one go.
constexpr std::uint64_t kYieldEveryBytes = 256 * 1024;

void keep(std::string& sink, const char* data, std::size_t n, std::size_t cap, bool& truncated) {
    if (sink.size() < cap) {
        const std::size_t room = cap - sink.size();
        sink.append(data, std::min(room, n));
        if (n > room) truncated = true;
    } else if (n > 0) {
        truncated = true;
    }
}

// Abandons a running command's channel after its deadline. libssh2 1.10 cannot free a channel
// before the server answers our CLOSE, and sshd answers only when the remote process exits.
// So once our EOF and CLOSE are out (libssh2 then blocks on input only) the channel is parked
// on the session: later reads take in the server's CLOSE whenever it comes, and the session
// stays usable. Returns false if our CLOSE could not even be sent within `grace`.
asio::awaitable<bool> abandon_channel(Session::Impl& impl, detail::ChannelHandle& channel,
                                      std::chrono::milliseconds grace) {
    const auto deadline = Clock::now() + grace;
    LIBSSH2_CHANNEL* ch = channel.get();
    for (;;) {
        long rc = libssh2_channel_close(ch);
        if (rc == 0) {
            boost::system::error_code interrupted;
            rc = co_await impl.drive([&] { return libssh2_channel_free(ch); }, deadline,
                                     interrupted);
            if (!interrupted && rc == 0) (void)channel.release();
            co_return !interrupted;
        }
        if (rc != LIBSSH2_ERROR_EAGAIN) co_return false;
        if ((libssh2_session_block_directions(impl.session.get()) &
             LIBSSH2_SESSION_BLOCK_OUTBOUND) == 0) {
            impl.parked_channels.push_back(std::move(channel));
            co_return true;
        }
        if (co_await impl.wait_socket(deadline)) co_return false;
    }
}

std::string shown(const std::string& command, const ExecOptions& opts) {
    const std::string& text = opts.display.empty() ? command : opts.display;
    return text.size() > 120 ? text.substr(0, 117) + "..." : text;
}

}  // namespace

asio::awaitable<Result<ExecResult>> Session::Impl::run_command(const std::string& command,
                                                              const ExecOptions& opts) {
    if (broken) co_return unusable_error();
    const auto started = Clock::now();
    auto deadline = started + opts.timeout;
    std::chrono::milliseconds limit = opts.timeout;  // the deadline's budget (on_stdout moves it)
    LIBSSH2_SESSION* s = session.get();
    boost::system::error_code interrupted;

    detail::ChannelHandle channel;
    // Whatever path leaves this function with the channel still ours parks it: freeing a live
    // channel would send CLOSE from a destructor.
    ParkOnExit park(parked_channels, channel);
    long rc = co_await drive(
        [&]() -> long {
            channel.reset(libssh2_channel_open_session(s));
            return channel ? 0 : last_errno();
        },
        deadline, interrupted);
    if (interrupted) co_return interrupted_error(interrupted, "opening a channel", opts.timeout);
    if (rc != 0) co_return fail(errc::channel_failed, "opening a channel", rc);
    LIBSSH2_CHANNEL* ch = channel.get();

    rc = co_await drive(
        [&] {
            return libssh2_channel_process_startup(ch, "exec", 4, command.data(),
                                                   static_cast<unsigned>(command.size()));
        },
        deadline, interrupted);
    if (interrupted) co_return interrupted_error(interrupted, "starting a command", opts.timeout);
    if (rc != 0) co_return fail(errc::channel_failed, "starting " + shown(command, opts), rc);

    ExecResult result;
    std::array<char, 32 * 1024> buffer;
    bool out_eof = false, err_eof = false;
    std::uint64_t since_yield = 0;
    while (!(out_eof && err_eof)) {
        bool progressed = false;
        for (int stream : {0, SSH_EXTENDED_DATA_STDERR}) {
            bool& eof = stream == 0 ? out_eof : err_eof;
            if (eof) continue;
            // Drain what is buffered; the window only reopens once we consume it.
            for (;;) {
                ssize_t n = libssh2_channel_read_ex(ch, stream, buffer.data(), buffer.size());
                if (n > 0) {
                    progressed = true;
                    since_yield += static_cast<std::uint64_t>(n);
                    if (stream == 0) {
                        result.out_bytes += static_cast<std::uint64_t>(n);
                        keep(result.out, buffer.data(), static_cast<std::size_t>(n),
                             opts.max_stdout, result.out_truncated);
                        if (opts.on_stdout) {
                            if (auto next = opts.on_stdout(result.out)) {
                                limit = *next;
                                deadline = Clock::now() + *next;
                            }
                        }
                    } else {
                        result.err_bytes += static_cast<std::uint64_t>(n);
                        keep(result.err, buffer.data(), static_cast<std::size_t>(n),
                             opts.max_stderr, result.err_truncated);
                    }
                    if (since_yield >= kYieldEveryBytes) break;
                    continue;
                }
                if (n == 0) {
                    if (libssh2_channel_eof(ch)) eof = true;
                    break;
                }
                if (n == LIBSSH2_ERROR_EAGAIN) break;
                co_return fail(errc::channel_failed, "reading the output of " + shown(command, opts), n);
            }
        }
        if (out_eof && err_eof) break;
        if (libssh2_channel_eof(ch) && !progressed) break;  // EOF and nothing left buffered

        // A command that never stops printing must still meet its deadline.
        if (Clock::now() >= deadline) interrupted = make_error_code(errc::timeout);
        else if (!progressed) interrupted = co_await wait_socket(deadline);
        else if (since_yield >= kYieldEveryBytes) {
            since_yield = 0;
            co_await asio::post(executor, asio::use_awaitable);  // let other sessions run
        }
        if (interrupted == make_error_code(errc::cancelled)) {
            // After cancellation nothing more may be awaited: retire the session as it is.
            co_return interrupted_error(interrupted, "command " + shown(command, opts), opts.timeout);
        }
        if (interrupted) {
            // Nothing is half-done inside libssh2 while we only wait for output, so the channel
            // can be abandoned politely and the session kept. Closing the channel does not stop
            // the remote process: say so.
            const bool closed = co_await abandon_channel(*this, channel, std::chrono::seconds(2));
            std::string msg = peer + ": command exceeded its deadline of " +
                              format_duration(limit) + ": " + shown(command, opts) +
                              "; channel " + (closed ? "closed" : "abandoned") +
                              ", the remote process was not signalled and may still be running";
            if (!closed) mark_broken(msg);
            co_return Error(interrupted, std::move(msg));
        }
    }

    rc = co_await drive([&] { return libssh2_channel_close(ch); }, deadline, interrupted);
    if (!interrupted && rc == 0)
        rc = co_await drive([&] { return libssh2_channel_wait_closed(ch); }, deadline, interrupted);
    if (interrupted) co_return interrupted_error(interrupted, "closing the channel", opts.timeout);
    if (rc != 0) co_return fail(errc::channel_failed, "closing the channel", rc);

    result.exit_code = libssh2_channel_get_exit_status(ch);
    char* signal_name = nullptr;
    std::size_t signal_len = 0;
    libssh2_channel_get_exit_signal(ch, &signal_name, &signal_len, nullptr, nullptr, nullptr,
                                    nullptr);
    if (signal_name != nullptr) {
        result.exit_signal.assign(signal_name, signal_len);
        libssh2_free(s, signal_name);
        result.exit_code = -1;
    }
    // Closed on both sides: freeing sends nothing.
    rc = co_await drive([&] { return libssh2_channel_free(ch); }, deadline, interrupted);
    if (!interrupted && rc == 0) (void)channel.release();
    result.duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started);
    co_return result;
}

asio::awaitable<Result<ExecResult>> Session::exec(std::string command, ExecOptions options) {
    BusyGuard busy(*impl_);
    if (!busy.acquired()) co_return busy_error(*impl_);
    try {
        co_return co_await impl_->run_command(command, options);
    } catch (const boost::system::system_error&) {
        co_return impl_->interrupted_error(make_error_code(errc::cancelled), "command",
                                           options.timeout);
    }
}

asio::awaitable<Result<ExecResult>> Session::exec(std::string command) {
    co_return co_await exec(std::move(command), ExecOptions{});
}

asio::awaitable<Result<ExecResult>> Session::exec_checked(std::string command) {
    co_return co_await exec_checked(std::move(command), ExecOptions{});
}

asio::awaitable<Result<ExecResult>> Session::exec_checked(std::string command,
                                                          ExecOptions options) {
    auto r = co_await exec(command, options);
    if (!r) co_return r;
    if (r->succeeded()) co_return r;
    std::string msg = impl_->peer + ": remote command ";
    msg += r->exit_signal.empty() ? "exited " + std::to_string(r->exit_code)
                                  : "killed by signal " + r->exit_signal;
    msg += ": " + shown(command, options);
    auto tail = r->err_tail();
    while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r')) tail.pop_back();
    if (!tail.empty()) msg += "; stderr: " + tail;
    co_return Error(errc::remote_command_failed, std::move(msg));
}

}  // namespace guardia::ssh
