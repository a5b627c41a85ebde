#include "guardia/service/systemd_notify.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

namespace guardia::service {

namespace asio = boost::asio;

namespace {

// The peer address named by NOTIFY_SOCKET, or why it cannot be used.
struct Address {
    Address() noexcept {}
    sockaddr_un addr{};
    socklen_t length = 0;  // 0: unusable
    std::string problem;
};

Address parse_address(std::string_view name) {
    Address a;
    a.addr.sun_family = AF_UNIX;
    constexpr std::size_t capacity = sizeof a.addr.sun_path;
    if (name.front() == '@') {
        // Abstract namespace: a leading NUL, then the name; the length says where it ends
        // (no terminating NUL, which would become part of the name).
        if (name.size() < 2 || name.size() > capacity) {
            a.problem = "abstract socket name of " + std::to_string(name.size() - 1) +
                        " bytes (1 to " + std::to_string(capacity - 1) + " supported)";
            return a;
        }
        a.addr.sun_path[0] = '\0';
        std::memcpy(a.addr.sun_path + 1, name.data() + 1, name.size() - 1);
        a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
        return a;
    }
    // A relative path would depend on the working directory, and other schemes (systemd
    // 254's "vsock:") are not spoken here.
    if (name.front() != '/') {
        a.problem = "not an absolute path or an '@' abstract name";
        return a;
    }
    if (name.size() >= capacity || name.find('\0') != std::string_view::npos) {
        a.problem =
            "path too long for a unix socket (" + std::to_string(capacity - 1) + " bytes at most)";
        return a;
    }
    std::memcpy(a.addr.sun_path, name.data(), name.size());
    a.addr.sun_path[name.size()] = '\0';
    a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + 1);
    return a;
}

// A whole decimal number, nothing before or after it.
template <class Int>
std::optional<Int> parse_decimal(std::string_view s) {
    Int value{};
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (ec != std::errc{} || end != s.data() + s.size() || s.empty()) return std::nullopt;
    return value;
}

std::string_view env(const char* name) {
    const char* v = std::getenv(name);
    return v ? std::string_view(v) : std::string_view();
}

// Control characters would split STATUS= into several KEY=VALUE lines; the cut falls on a
// UTF-8 character boundary so that valid text stays valid (systemd drops invalid STATUS=).
std::string status_line(std::string_view text) {
    std::size_t n = text.size();
    if (n > max_status_text) {
        n = max_status_text;
        while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
    }
    std::string line = "STATUS=";
    line.reserve(line.size() + n);
    for (char c : text.substr(0, n)) {
        const auto u = static_cast<unsigned char>(c);
        line += (u < 0x20 || u == 0x7f) ? ' ' : c;
    }
    return line;
}

}  // namespace

SystemdNotifier::~SystemdNotifier() {
    if (fd_ >= 0) ::close(fd_);
}

SystemdNotifier::SystemdNotifier(SystemdNotifier&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      name_(std::move(other.name_)),
      watchdog_interval_(std::exchange(other.watchdog_interval_, std::nullopt)),
      warnings_(std::move(other.warnings_)) {}

SystemdNotifier& SystemdNotifier::operator=(SystemdNotifier&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = std::exchange(other.fd_, -1);
        name_ = std::move(other.name_);
        watchdog_interval_ = std::exchange(other.watchdog_interval_, std::nullopt);
        warnings_ = std::move(other.warnings_);
    }
    return *this;
}

SystemdNotifier SystemdNotifier::from_environment() {
    SystemdNotifier n;
    const std::string_view socket_name = env("NOTIFY_SOCKET");
    if (socket_name.empty()) return n;  // not started by systemd (or not as Type=notify)

    const Address address = parse_address(socket_name);
    if (address.length == 0) {
        n.warnings_.push_back("NOTIFY_SOCKET=" + std::string(socket_name) +
                              " cannot be used: " + address.problem);
        return n;
    }
    // One socket for the process's lifetime, opened now: with a thousand SSH sessions open
    // the process may sit near its descriptor limit, and a watchdog ping must not depend on
    // getting a new descriptor then. CLOEXEC: no child inherits it (and so cannot speak for
    // us); NONBLOCK backs up MSG_DONTWAIT.
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        n.warnings_.push_back("NOTIFY_SOCKET=" + std::string(socket_name) +
                              ": cannot open a unix datagram socket: " + std::strerror(errno));
        return n;
    }
    n.fd_ = fd;
    n.name_ = std::string(socket_name);

    const std::string_view usec_text = env("WATCHDOG_USEC");
    if (usec_text.empty()) return n;
    const auto usec = parse_decimal<std::uint64_t>(usec_text);
    // systemd writes at most a finite 64-bit count; anything past int64 is no usable period.
    if (!usec || *usec > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        n.warnings_.push_back("WATCHDOG_USEC=" + std::string(usec_text) +
                              " is not a number of microseconds: no watchdog pings");
        return n;
    }
    if (*usec == 0) return n;
    const std::string_view pid_text = env("WATCHDOG_PID");
    if (!pid_text.empty()) {
        const auto pid = parse_decimal<pid_t>(pid_text);
        if (!pid || *pid <= 0) {
            n.warnings_.push_back("WATCHDOG_PID=" + std::string(pid_text) +
                                  " is not a process id: no watchdog pings");
            return n;
        }
        // The variables leaked from the process systemd watches to this one: pinging would
        // keep that process alive on our behalf.
        if (*pid != ::getpid()) {
            n.warnings_.push_back("WATCHDOG_PID=" + std::string(pid_text) +
                                  " is not this process (" + std::to_string(::getpid()) +
                                  "): no watchdog pings");
            return n;
        }
    }
    n.watchdog_interval_ = std::chrono::microseconds(static_cast<std::int64_t>(*usec / 2));
    return n;
}

Result<void> SystemdNotifier::notify(std::string_view state) {
    if (!enabled()) return {};
    if (state.empty()) return Error(errc::invalid_argument, "empty systemd notification");
    if (state.size() > max_notify_message)
        return Error(errc::invalid_argument,
                     "systemd notification of " + std::to_string(state.size()) +
                         " bytes (systemd drops " + std::to_string(max_notify_message + 1) +
                         " or more)");
    // systemd ignores a message with a NUL in it; better an error here than a silent drop.
    if (state.find('\0') != std::string_view::npos)
        return Error(errc::invalid_argument, "systemd notification holds a NUL byte");
    const Address address = parse_address(name_);
    // MSG_DONTWAIT: when systemd's queue is full (PID 1 busy) the send fails at once with
    // EAGAIN instead of stalling every session on the loop. MSG_NOSIGNAL: no SIGPIPE.
    const ssize_t sent = ::sendto(fd_, state.data(), state.size(), MSG_DONTWAIT | MSG_NOSIGNAL,
                                  reinterpret_cast<const sockaddr*>(&address.addr), address.length);
    if (sent < 0) {
        const int e = errno;
        return Error(boost::system::error_code(e, boost::system::system_category()),
                     "cannot notify systemd at " + name_ + ": " + std::strerror(e));
    }
    // A datagram goes whole or not at all; checked anyway rather than assumed.
    if (static_cast<std::size_t>(sent) != state.size())
        return Error(errc::short_write, "systemd notification cut to " + std::to_string(sent) +
                                            " of " + std::to_string(state.size()) + " bytes");
    return {};
}

Result<void> SystemdNotifier::ready(std::string_view status_text) {
    std::string message = "READY=1\nMAINPID=" + std::to_string(::getpid());
    if (!status_text.empty()) message += "\n" + status_line(status_text);
    return notify(message);
}

Result<void> SystemdNotifier::stopping(std::string_view status_text) {
    std::string message = "STOPPING=1";
    if (!status_text.empty()) message += "\n" + status_line(status_text);
    return notify(message);
}

Result<void> SystemdNotifier::watchdog() {
    return notify("WATCHDOG=1");
}

Result<void> SystemdNotifier::status(std::string_view text) {
    return notify(status_line(text));
}

asio::awaitable<void> run_watchdog(SystemdNotifier& notifier,
                                   std::shared_ptr<spdlog::logger> logger) {
    const auto interval = notifier.watchdog_interval();
    if (!interval) co_return;
    if (!logger) logger = spdlog::default_logger();
    // Any cancellation type stops the pings: there is no partial progress to keep.
    co_await asio::this_coro::reset_cancellation_state(asio::enable_total_cancellation());
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (;;) {
        if (auto r = notifier.watchdog(); !r)
            logger->warn(
                "systemd watchdog ping failed ({}); systemd restarts the service if "
                "pings keep failing",
                r.error().describe());
        // Measured from this ping, not from a fixed schedule: after a stall the next ping
        // comes one interval later instead of a burst that would hide the stall.
        timer.expires_after(*interval);
        auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        if (ec == asio::error::operation_aborted || cs.cancelled() != asio::cancellation_type::none)
            co_return;
    }
}

}  // namespace guardia::service
