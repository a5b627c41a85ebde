// systemd integration for `guardia serve`: the sd_notify
// protocol spoken directly, without libsystemd.
//
// The protocol is one datagram per message on the AF_UNIX socket that systemd names in
// $NOTIFY_SOCKET (an absolute path, or '@' + a name in the abstract namespace), holding
// newline-separated KEY=VALUE lines. Under Type=notify systemd considers the service started
// only on READY=1, and with WatchdogSec= it restarts the service unless WATCHDOG=1 arrives in
// time. Speaking it here keeps libsystemd (and its dependencies) out of the binary and keeps
// every send non-blocking, which sd_notify() does not promise.
//
// Not thread-safe: it belongs to the event loop, like everything else in the service.
#pragma once

#include "guardia/core/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace spdlog {
class logger;
}

namespace guardia::service {

// systemd drops a notification datagram of this size or more (its receive buffer), so a
// longer message is refused here rather than lost silently there.
inline constexpr std::size_t max_notify_message = 4095;
// STATUS= text is cut (at a UTF-8 boundary) to this many bytes: systemd ignores a STATUS
// that is not valid UTF-8, and the whole message must stay under max_notify_message.
inline constexpr std::size_t max_status_text = 1024;

class SystemdNotifier {
  public:
    // Disabled: every call succeeds and sends nothing.
    SystemdNotifier() noexcept = default;
    ~SystemdNotifier();
    // Owns a socket: movable, not copyable.
    SystemdNotifier(SystemdNotifier&& other) noexcept;
    SystemdNotifier& operator=(SystemdNotifier&& other) noexcept;
    SystemdNotifier(const SystemdNotifier&) = delete;
    SystemdNotifier& operator=(const SystemdNotifier&) = delete;

    // Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID. The watchdog applies only when
    // WATCHDOG_PID is unset or equals getpid() (systemd sets it when the variables may leak
    // to a child that is not the main process). Does not unset the variables.
    // Never fails: an unusable environment gives a disabled notifier plus warnings().
    static SystemdNotifier from_environment();

    // NOTIFY_SOCKET was set, its address is supported and the sending socket is open.
    bool enabled() const noexcept { return fd_ >= 0; }
    // The socket address as given in NOTIFY_SOCKET (for messages); empty when disabled.
    const std::string& socket_name() const noexcept { return name_; }
    // What from_environment() found wrong (an unsupported NOTIFY_SOCKET, a malformed
    // WATCHDOG_USEC...). The service logs them: under Type=notify an unusable NOTIFY_SOCKET
    // means systemd waits for READY=1 until its start timeout, and the log must say why.
    const std::vector<std::string>& warnings() const noexcept { return warnings_; }

    // Sends `state` ("KEY=VALUE\n...") as it is. Non-blocking: a busy or absent listener is
    // an error returned at once (the system error code from sendto, e.g. EAGAIN or
    // ECONNREFUSED), never a wait on the event loop. Succeeds without sending when disabled.
    // Errors: errc::invalid_argument for an empty message, one longer than
    // max_notify_message or one holding a NUL byte (systemd would drop it without a word);
    // otherwise the system error of the send.
    Result<void> notify(std::string_view state);

    // READY=1 with MAINPID= (this process) and, when not empty, STATUS=.
    Result<void> ready(std::string_view status = {});
    // STOPPING=1 and, when not empty, STATUS=.
    Result<void> stopping(std::string_view status = {});
    // WATCHDOG=1.
    Result<void> watchdog();
    // STATUS=text. Control characters (a newline would start another KEY=VALUE line, e.g.
    // a forged READY=1 from text that came through the API) become spaces; the text is
    // cut to max_status_text bytes.
    Result<void> status(std::string_view text);

    // How often to send WATCHDOG=1: half of WATCHDOG_USEC, as systemd advises, so one late
    // ping is not yet fatal. Empty when no watchdog is asked of this process or when the
    // notifier is disabled (a ping could not be delivered anyway).
    std::optional<std::chrono::microseconds> watchdog_interval() const noexcept {
        return enabled() ? watchdog_interval_ : std::nullopt;
    }

  private:
    int fd_ = -1;
    std::string name_;
    std::optional<std::chrono::microseconds> watchdog_interval_;
    std::vector<std::string> warnings_;
};

// Sends WATCHDOG=1 at once and then every notifier.watchdog_interval() until cancelled;
// returns at once when there is no interval. It runs on the event loop on purpose, never on a
// thread: the pings prove that the loop still turns, so a hung loop stops them and systemd
// restarts the service.
// Stop: Asio cancellation of any type (terminal, partial or total: there is no state to
// keep), e.g. bind_cancellation_slot on co_spawn or `run_watchdog(n) || shutdown_signal`.
// It then returns normally, without throwing. A failed ping is logged (warn) and the next
// tick tries again; the notifier must outlive the coroutine.
boost::asio::awaitable<void> run_watchdog(SystemdNotifier& notifier,
                                          std::shared_ptr<spdlog::logger> logger = nullptr);

}  // namespace guardia::service
