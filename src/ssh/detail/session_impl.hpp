// Private state of a Session and the one helper through which every libssh2 call runs.
#pragma once

#include "guardia/ssh/session.hpp"
#include "handles.hpp"
#include "session_arena.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::ssh {

using Clock = std::chrono::steady_clock;

struct Session::Impl {
    explicit Impl(boost::asio::any_io_executor ex);
    ~Impl();

    // Declared first so it dies last: the blocks it owns outlive every libssh2 handle below.
    detail::SessionArena arena;
    boost::asio::any_io_executor executor;
    boost::asio::ip::tcp::socket socket;
    boost::asio::steady_timer timer;
    detail::SessionHandle session;
    detail::SftpHandle sftp;
    // Handles that could not be closed politely (a timed-out command's channel whose CLOSE
    // sshd answers only when the process exits; handles left by a failed operation). They are
    // freed by ~Impl after the socket is shut down, so freeing them sends nothing.
    std::vector<detail::ChannelHandle> parked_channels;
    std::vector<detail::SftpFileHandle> parked_files;

    std::string host;
    std::uint16_t port = 0;
    std::string user;
    std::string peer;  // user@host:port
    HostKey host_key;
    std::shared_ptr<spdlog::logger> logger;
    const Secret* kbdint_password = nullptr;  // valid only during authentication

    bool broken = false;
    std::string broken_reason;
    bool busy = false;        // an operation is running (libssh2 sessions are not re-entrant)
    int direction_less = 0;   // consecutive EAGAINs for which libssh2 named no direction

    // Awaits the socket in the direction libssh2 last blocked on, or the deadline.
    // Returns success, errc::timeout or errc::cancelled.
    boost::asio::awaitable<boost::system::error_code> wait_socket(Clock::time_point deadline);

    // Calls `fn` until it returns something other than LIBSSH2_ERROR_EAGAIN, awaiting the
    // socket in between. `fn` is re-called with the very same arguments, so whatever it
    // points at must stay put. If the wait is interrupted, `interrupted` is set and
    // LIBSSH2_ERROR_EAGAIN returned: the call is left half-done.
    template <class Fn>
    boost::asio::awaitable<long> drive(Fn fn, Clock::time_point deadline,
                                       boost::system::error_code& interrupted) {
        for (;;) {
            long rc = static_cast<long>(fn());
            if (rc != LIBSSH2_ERROR_EAGAIN) co_return rc;
            interrupted = co_await wait_socket(deadline);
            if (interrupted) co_return LIBSSH2_ERROR_EAGAIN;
        }
    }

    // libssh2's last error text, e.g. "Unable to send FXP_OPEN*" (no secrets in it).
    std::string last_error_text() const;
    int last_errno() const;

    // Marks the session unusable (the first reason is kept) and shuts its socket down, so
    // the server side goes away now rather than when the owner drops the Session.
    void mark_broken(std::string reason);
    // Runs a command on a new channel (the body of Session::exec; also used by upload).
    boost::asio::awaitable<Result<ExecResult>> run_command(const std::string& command,
                                                           const ExecOptions& options);
    // An error for `what` failing with libssh2 code `rc` (marks the session broken when the
    // code means the transport is gone).
    Error fail(errc kind, std::string_view what, long rc);
    // An error for an interrupted wait (timeout or cancellation) during `what`; marks the
    // session broken because the libssh2 call was left half-done.
    Error interrupted_error(boost::system::error_code ec, std::string_view what,
                            std::chrono::milliseconds limit);
    Error unusable_error() const;
};

// True for libssh2 codes that mean the connection itself is gone or corrupt (or that libssh2's
// state is: BAD_USE after a half-sent packet).
bool is_transport_failure(long rc) noexcept;

// Moves a still-owned handle into the session's parked list when it goes out of scope, so an
// early return never frees (and thereby sends on) a live handle.
template <class Handle>
class ParkOnExit {
public:
    ParkOnExit(std::vector<Handle>& parking, Handle& handle) : parking_(parking), handle_(handle) {}
    ~ParkOnExit() {
        if (handle_) parking_.push_back(std::move(handle_));
    }
    ParkOnExit(const ParkOnExit&) = delete;
    ParkOnExit& operator=(const ParkOnExit&) = delete;

private:
    std::vector<Handle>& parking_;
    Handle& handle_;
};

// Marks a Session busy for the duration of one public operation.
class BusyGuard {
public:
    explicit BusyGuard(Session::Impl& impl) : impl_(impl), acquired_(!impl.busy) {
        if (acquired_) impl_.busy = true;
    }
    ~BusyGuard() {
        if (acquired_) impl_.busy = false;
    }
    bool acquired() const noexcept { return acquired_; }
    BusyGuard(const BusyGuard&) = delete;
    BusyGuard& operator=(const BusyGuard&) = delete;

private:
    Session::Impl& impl_;
    bool acquired_;
};
Error busy_error(const Session::Impl& impl);

std::string format_duration(std::chrono::milliseconds d);

}  // namespace guardia::ssh
