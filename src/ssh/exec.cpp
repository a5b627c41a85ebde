#include "detail/session_impl.hpp"

#include <boost/asio/use_awaitable.hpp>

#include <array>

namespace guardia::ssh {

namespace asio = boost::asio;

namespace {

void keep(std::string& sink, const char* data, std::size_t n, std::size_t cap, bool& truncated) {
    if (sink.size() < cap) {
        const std::size_t room = cap - sink.size();
        sink.append(data, std::min(room, n));
        if (n > room) truncated = true;
    } else if (n > 0) {
        truncated = true;
    }
}

// Abandons a running command's channel. libssh2 1.10 cannot free a channel before the server
// answers our CLOSE, and sshd answers only when the remote process exits. So once our EOF and
// CLOSE are out (libssh2 then blocks on input only) the channel is parked on the session: later
// reads take in the server's CLOSE whenever it comes, and the session stays usable. Returns
// false if our CLOSE could not even be sent within `grace`.
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

asio::awaitable<Result<ExecResult>> exec_impl(Session::Impl& impl, const std::string& command,
                                              const ExecOptions& opts) {
    if (impl.broken) co_return impl.unusable_error();
    const auto started = Clock::now();
    const auto deadline = started + opts.timeout;
    LIBSSH2_SESSION* s = impl.session.get();
    boost::system::error_code interrupted;

    detail::ChannelHandle channel;
    long rc = co_await impl.drive(
        [&]() -> long {
            channel.reset(libssh2_channel_open_session(s));
            return channel ? 0 : impl.last_errno();
        },
        deadline, interrupted);
    if (interrupted) co_return impl.interrupted_error(interrupted, "opening a channel", opts.timeout);
    if (rc != 0) co_return impl.fail(errc::channel_failed, "opening a channel", rc);
    LIBSSH2_CHANNEL* ch = channel.get();

    rc = co_await impl.drive(
        [&] {
            return libssh2_channel_process_startup(ch, "exec", 4, command.data(),
                                                   static_cast<unsigned>(command.size()));
        },
        deadline, interrupted);
    if (interrupted) co_return impl.interrupted_error(interrupted, "starting a command", opts.timeout);
    if (rc != 0) co_return impl.fail(errc::channel_failed, "starting a command", rc);

    ExecResult result;
    std::array<char, 32 * 1024> buffer;
    bool out_eof = false, err_eof = false;
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
                    if (stream == 0) {
                        result.out_bytes += static_cast<std::uint64_t>(n);
                        keep(result.out, buffer.data(), static_cast<std::size_t>(n),
                             opts.max_stdout, result.out_truncated);
                    } else {
                        result.err_bytes += static_cast<std::uint64_t>(n);
                        keep(result.err, buffer.data(), static_cast<std::size_t>(n),
                             opts.max_stderr, result.err_truncated);
                    }
                    continue;
                }
                if (n == 0) {
                    if (libssh2_channel_eof(ch)) eof = true;
                    break;
                }
                if (n == LIBSSH2_ERROR_EAGAIN) break;
                co_return impl.fail(errc::channel_failed, "reading command output", n);
            }
        }
        if (out_eof && err_eof) break;
        if (libssh2_channel_eof(ch) && !progressed) {
            // EOF seen and nothing buffered on either stream: done.
            break;
        }
        if (!progressed) {
            interrupted = co_await impl.wait_socket(deadline);
            if (interrupted) {
                // Nothing is half-done inside libssh2 while we only wait for output, so the
                // channel can be closed politely and the session kept. Closing the channel
                // does not stop the remote process: say so.
                const bool closed =
                    co_await abandon_channel(impl, channel, std::chrono::seconds(2));
                std::string msg = impl.peer + ": command ";
                msg += interrupted == make_error_code(errc::timeout)
                           ? "exceeded its deadline of " + format_duration(opts.timeout)
                           : std::string("was cancelled");
                msg += "; channel " + std::string(closed ? "closed" : "abandoned") +
                       ", the remote process was not signalled and may still be running";
                if (!closed) impl.mark_broken(msg);
                co_return Error(interrupted, std::move(msg));
            }
        }
    }

    rc = co_await impl.drive([&] { return libssh2_channel_close(ch); }, deadline, interrupted);
    if (!interrupted && rc == 0)
        rc = co_await impl.drive([&] { return libssh2_channel_wait_closed(ch); }, deadline,
                                 interrupted);
    if (interrupted)
        co_return impl.interrupted_error(interrupted, "closing the channel", opts.timeout);
    if (rc != 0) co_return impl.fail(errc::channel_failed, "closing the channel", rc);

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
    // The channel is closed: freeing it sends nothing and cannot block.
    rc = co_await impl.drive([&] { return libssh2_channel_free(ch); }, deadline, interrupted);
    if (rc == 0) (void)channel.release();
    result.duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started);
    co_return result;
}

}  // namespace

asio::awaitable<Result<ExecResult>> Session::exec(std::string command, ExecOptions options) {
    try {
        co_return co_await exec_impl(*impl_, command, options);
    } catch (const boost::system::system_error&) {
        co_return impl_->interrupted_error(make_error_code(errc::cancelled), "command",
                                           options.timeout);
    }
}

asio::awaitable<Result<ExecResult>> Session::exec_checked(std::string command,
                                                          ExecOptions options) {
    auto r = co_await exec(command, options);
    if (!r) co_return r;
    if (r->succeeded()) co_return r;
    std::string shown = command.size() > 120 ? command.substr(0, 117) + "..." : command;
    std::string msg = impl_->peer + ": remote command ";
    msg += r->exit_signal.empty() ? "exited " + std::to_string(r->exit_code)
                                  : "killed by signal " + r->exit_signal;
    msg += ": " + shown;
    auto tail = r->err_tail();
    while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r')) tail.pop_back();
    if (!tail.empty()) msg += "; stderr: " + tail;
    co_return Error(errc::remote_command_failed, std::move(msg));
}

}  // namespace guardia::ssh
