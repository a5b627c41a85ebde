#include "guardia/service/systemd_notify.hpp"

#include <doctest/doctest.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/datagram_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace guardia;
using namespace guardia::service;
using namespace std::chrono_literals;
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

const char* const notify_vars[] = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"};

// Sets the sd_notify variables for one test and puts back what the process had before, so
// that a test run under systemd (or another test) is not disturbed.
class NotifyEnv {
  public:
    NotifyEnv() {
        for (const char* name : notify_vars) {
            const char* v = std::getenv(name);
            saved_.push_back(v ? std::optional<std::string>(v) : std::nullopt);
            ::unsetenv(name);
        }
    }
    ~NotifyEnv() {
        for (std::size_t i = 0; i < saved_.size(); ++i) {
            if (saved_[i])
                ::setenv(notify_vars[i], saved_[i]->c_str(), 1);
            else
                ::unsetenv(notify_vars[i]);
        }
    }
    NotifyEnv(const NotifyEnv&) = delete;
    NotifyEnv& operator=(const NotifyEnv&) = delete;

    void set(const char* name, const std::string& value) { ::setenv(name, value.c_str(), 1); }

  private:
    std::vector<std::optional<std::string>> saved_;
};

class TempDir {
  public:
    TempDir() {
        std::string pattern =
            (std::filesystem::temp_directory_path() / "guardia-notify-XXXXXX").string();
        if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string file(const char* name) const { return (path_ / name).string(); }

  private:
    std::filesystem::path path_;
};

// An abstract name no other test run uses.
std::string abstract_name() {
    static int counter = 0;
    return "@guardia-notify-test-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

// What systemd does: a bound AF_UNIX datagram socket that receives the notifications.
class Listener {
  public:
    // `name`: a path, or '@' + an abstract name (NOTIFY_SOCKET's syntax).
    explicit Listener(const std::string& name) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        REQUIRE(name.size() < sizeof addr.sun_path);
        std::memcpy(addr.sun_path, name.data(), name.size());
        socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
        if (name.front() == '@')
            addr.sun_path[0] = '\0';
        else
            ++len;  // the path's NUL
        REQUIRE(::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), len) == 0);
    }
    ~Listener() { close(); }
    Listener(const Listener&) = delete;
    Listener& operator=(const Listener&) = delete;

    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    int fd() const { return fd_; }

    // The next datagram, or nothing within `timeout`.
    std::optional<std::string> receive(milliseconds timeout = 1000ms) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
        char buf[8192];
        const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) return std::nullopt;
        return std::string(buf, static_cast<std::size_t>(n));
    }
    bool queue_empty() { return !receive(0ms); }

  private:
    int fd_ = -1;
};

// "ok", or the error as a person would read it (shown by doctest when a check fails).
std::string outcome(const Result<void>& r) {
    return r ? "ok" : r.error().describe();
}

std::string pid_text() {
    return std::to_string(::getpid());
}

bool is_errno(const Error& e, int value) {
    return e.code == boost::system::error_code(value, boost::system::system_category());
}

// The datagrams each call must produce, byte for byte.
void check_exact_datagrams(const std::string& name) {
    NotifyEnv env;
    Listener listener(name);
    env.set("NOTIFY_SOCKET", name);
    SystemdNotifier n = SystemdNotifier::from_environment();
    REQUIRE(n.enabled());
    CHECK(n.socket_name() == name);
    CHECK(n.warnings().empty());

    REQUIRE(outcome(n.ready()) == "ok");
    CHECK(listener.receive() == "READY=1\nMAINPID=" + pid_text());
    REQUIRE(outcome(n.ready("listening on 127.0.0.1:8080")) == "ok");
    CHECK(listener.receive() ==
          "READY=1\nMAINPID=" + pid_text() + "\nSTATUS=listening on 127.0.0.1:8080");
    REQUIRE(outcome(n.status("2 rollouts running")) == "ok");
    CHECK(listener.receive() == "STATUS=2 rollouts running");
    REQUIRE(outcome(n.watchdog()) == "ok");
    CHECK(listener.receive() == "WATCHDOG=1");
    REQUIRE(outcome(n.stopping()) == "ok");
    CHECK(listener.receive() == "STOPPING=1");
    REQUIRE(outcome(n.stopping("waiting for 3 nodes to finish or roll back")) == "ok");
    CHECK(listener.receive() == "STOPPING=1\nSTATUS=waiting for 3 nodes to finish or roll back");
    REQUIRE(outcome(n.notify("EXTEND_TIMEOUT_USEC=5000000\nSTATUS=x")) == "ok");
    CHECK(listener.receive() == "EXTEND_TIMEOUT_USEC=5000000\nSTATUS=x");
    CHECK(listener.queue_empty());

    // Read, not consumed: a process that re-executes itself must find them again.
    const char* still = std::getenv("NOTIFY_SOCKET");
    CHECK((still != nullptr && still == name));
}

}  // namespace

TEST_CASE("systemd notifier: exact datagrams to a socket path") {
    TempDir dir;
    check_exact_datagrams(dir.file("notify"));
}

TEST_CASE("systemd notifier: exact datagrams to an abstract '@' name") {
    check_exact_datagrams(abstract_name());
}

TEST_CASE("systemd notifier: without NOTIFY_SOCKET it is disabled, succeeds and sends nothing") {
    NotifyEnv env;
    env.set("WATCHDOG_USEC", "30000000");  // a watchdog without a socket cannot be fed
    SystemdNotifier n = SystemdNotifier::from_environment();
    CHECK_FALSE(n.enabled());
    CHECK(n.warnings().empty());
    CHECK(n.socket_name().empty());
    CHECK_FALSE(n.watchdog_interval());
    CHECK(outcome(n.ready("x")) == "ok");
    CHECK(outcome(n.stopping()) == "ok");
    CHECK(outcome(n.watchdog()) == "ok");
    CHECK(outcome(n.status("x")) == "ok");
    CHECK(outcome(n.notify("READY=1")) == "ok");

    env.set("NOTIFY_SOCKET", "");
    CHECK_FALSE(SystemdNotifier::from_environment().enabled());

    SystemdNotifier defaulted;
    CHECK_FALSE(defaulted.enabled());
    CHECK(outcome(defaulted.watchdog()) == "ok");
}

TEST_CASE("systemd notifier: an unusable NOTIFY_SOCKET disables it with a warning") {
    for (const std::string& bad : {std::string("relative/notify"), std::string("vsock:2:1234"),
                                   std::string("/") + std::string(200, 'a'), std::string("@"),
                                   "@" + std::string(200, 'a')}) {
        CAPTURE(bad);
        NotifyEnv env;
        env.set("NOTIFY_SOCKET", bad);
        env.set("WATCHDOG_USEC", "1000000");
        SystemdNotifier n = SystemdNotifier::from_environment();
        CHECK_FALSE(n.enabled());
        REQUIRE(n.warnings().size() == 1);
        CHECK(n.warnings()[0].find("NOTIFY_SOCKET=") == 0);
        CHECK_FALSE(n.watchdog_interval());
        CHECK(outcome(n.ready()) == "ok");
    }
}

TEST_CASE("systemd notifier: STATUS text cannot inject lines and is cut at a UTF-8 boundary") {
    TempDir dir;
    NotifyEnv env;
    Listener listener(dir.file("notify"));
    env.set("NOTIFY_SOCKET", dir.file("notify"));
    SystemdNotifier n = SystemdNotifier::from_environment();

    REQUIRE(outcome(n.status("SR-1\nREADY=1\r\tSTOPPING=1")) == "ok");
    CHECK(listener.receive() == "STATUS=SR-1 READY=1  STOPPING=1");
    REQUIRE(outcome(n.ready("a\nMAINPID=1")) == "ok");
    CHECK(listener.receive() == "READY=1\nMAINPID=" + pid_text() + "\nSTATUS=a MAINPID=1");

    // "x" then 600 two-byte characters: byte max_status_text falls inside a character.
    std::string text = "x";
    for (int i = 0; i < 600; ++i) text += "\xc3\xa9";
    REQUIRE(outcome(n.status(text)) == "ok");
    const auto got = listener.receive();
    REQUIRE(got);
    CHECK(*got == "STATUS=" + text.substr(0, max_status_text - 1));
}

TEST_CASE("systemd notifier: raw messages are bounded and never empty") {
    TempDir dir;
    NotifyEnv env;
    Listener listener(dir.file("notify"));
    env.set("NOTIFY_SOCKET", dir.file("notify"));
    SystemdNotifier n = SystemdNotifier::from_environment();

    auto r = n.notify("");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::invalid_argument);
    r = n.notify("STATUS=" + std::string(max_notify_message, 'x'));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::invalid_argument);
    r = n.notify(std::string("STATUS=a\0b", 10));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::invalid_argument);
    REQUIRE(outcome(n.status(std::string("a\0b", 3))) == "ok");  // STATUS text is cleaned
    CHECK(listener.receive() == "STATUS=a b");
    CHECK(listener.queue_empty());

    const std::string largest = "STATUS=" + std::string(max_notify_message - 7, 'x');
    REQUIRE(outcome(n.notify(largest)) == "ok");
    CHECK(listener.receive() == largest);
}

TEST_CASE("systemd notifier: WATCHDOG_USEC and WATCHDOG_PID") {
    TempDir dir;
    Listener listener(dir.file("notify"));
    struct Case {
        const char* usec;
        std::optional<std::string> pid;
        std::optional<std::chrono::microseconds> interval;
        bool warns;
    };
    const std::string other_pid = std::to_string(::getpid() + 1);
    const Case cases[] = {
        {"30000000", std::nullopt, 15s, false},  // half of what systemd asks
        {"30000000", pid_text(), 15s, false},
        {"1", std::nullopt, 0us, false},
        {"30000000", other_pid, std::nullopt, true},  // meant for another process
        {"30000000", std::string("12abc"), std::nullopt, true},
        {"30000000", std::string("0"), std::nullopt, true},
        {"0", std::nullopt, std::nullopt, false},  // no watchdog
        {"", std::nullopt, std::nullopt, false},
        {"30s", std::nullopt, std::nullopt, true},
        {"-5", std::nullopt, std::nullopt, true},
        {"18446744073709551615", std::nullopt, std::nullopt, true},  // "infinity"
    };
    for (const Case& c : cases) {
        CAPTURE(c.usec);
        CAPTURE(c.pid.value_or("(unset)"));
        NotifyEnv env;
        env.set("NOTIFY_SOCKET", dir.file("notify"));
        env.set("WATCHDOG_USEC", c.usec);
        if (c.pid) env.set("WATCHDOG_PID", *c.pid);
        SystemdNotifier n = SystemdNotifier::from_environment();
        CHECK(n.enabled());  // the watchdog's fate never disables the notifications
        CHECK(n.watchdog_interval() == c.interval);
        CHECK(n.warnings().size() == (c.warns ? 1u : 0u));
    }
}

TEST_CASE("systemd notifier: nobody listening is an error at once, never a wait") {
    TempDir dir;
    NotifyEnv env;

    SUBCASE("no such path") {
        env.set("NOTIFY_SOCKET", dir.file("absent"));
        SystemdNotifier n = SystemdNotifier::from_environment();
        REQUIRE(n.enabled());  // the socket may appear later: checked per send
        const auto start = Clock::now();
        const auto r = n.ready();
        CHECK(Clock::now() - start < 500ms);
        REQUIRE_FALSE(r.has_value());
        CHECK(is_errno(r.error(), ENOENT));
        CHECK(r.error().message.find(dir.file("absent")) != std::string::npos);
    }
    SUBCASE("a socket file left behind by a listener that is gone") {
        { Listener gone(dir.file("stale")); }
        env.set("NOTIFY_SOCKET", dir.file("stale"));
        SystemdNotifier n = SystemdNotifier::from_environment();
        const auto start = Clock::now();
        const auto r = n.watchdog();
        CHECK(Clock::now() - start < 500ms);
        REQUIRE_FALSE(r.has_value());
        CHECK(is_errno(r.error(), ECONNREFUSED));
    }
    SUBCASE("an abstract name nobody bound") {
        env.set("NOTIFY_SOCKET", abstract_name());
        SystemdNotifier n = SystemdNotifier::from_environment();
        const auto start = Clock::now();
        const auto r = n.stopping();
        CHECK(Clock::now() - start < 500ms);
        REQUIRE_FALSE(r.has_value());
        CHECK(is_errno(r.error(), ECONNREFUSED));
    }
}

TEST_CASE("systemd notifier: a listener that stops reading makes sends fail, not block") {
    // systemd busy or hung: its queue fills up. A blocking send here would freeze the loop
    // and every SSH session on it.
    TempDir dir;
    NotifyEnv env;
    Listener listener(dir.file("notify"));
    env.set("NOTIFY_SOCKET", dir.file("notify"));
    SystemdNotifier n = SystemdNotifier::from_environment();
    const auto start = Clock::now();
    std::optional<Error> failure;
    int sent = 0;
    for (; sent < 100000 && !failure; ++sent)
        if (auto r = n.watchdog(); !r) failure = r.error();
    CHECK(Clock::now() - start < 2s);
    REQUIRE(failure);
    CHECK(sent > 1);
    CHECK(is_errno(*failure, EAGAIN));
    CHECK(listener.receive() == "WATCHDOG=1");  // what got through is intact
}

namespace {

struct Ping {
    Clock::time_point at;
    std::string text;
};

// Receives on the event loop (as systemd would, concurrently with the pings) and asks the
// watchdog to stop after `stop_after` pings; then keeps listening for `quiet` to prove that
// no ping follows the stop.
asio::awaitable<void> collect(Listener& listener, std::vector<Ping>& pings, std::size_t stop_after,
                              asio::cancellation_signal& stop, asio::cancellation_type how,
                              milliseconds quiet) {
    auto ex = co_await asio::this_coro::executor;
    asio::local::datagram_protocol::socket sock(ex, asio::local::datagram_protocol(),
                                                ::dup(listener.fd()));
    char buf[512];
    while (pings.size() < stop_after) {
        const std::size_t n = co_await sock.async_receive(asio::buffer(buf), asio::use_awaitable);
        pings.push_back({Clock::now(), std::string(buf, n)});
    }
    stop.emit(how);
    asio::steady_timer quiet_timer(ex, quiet);
    co_await quiet_timer.async_wait(asio::use_awaitable);
    sock.close();
}

}  // namespace

TEST_CASE("run_watchdog pings at half WATCHDOG_USEC on the loop and stops when cancelled") {
    const milliseconds interval = 100ms;
    asio::cancellation_type how = asio::cancellation_type::terminal;
    SUBCASE("terminal cancellation") {
        how = asio::cancellation_type::terminal;
    }
    SUBCASE("total cancellation") {
        how = asio::cancellation_type::total;
    }
    CAPTURE(static_cast<int>(how));

    TempDir dir;
    NotifyEnv env;
    Listener listener(dir.file("notify"));
    env.set("NOTIFY_SOCKET", dir.file("notify"));
    env.set("WATCHDOG_USEC", std::to_string(2 * interval.count() * 1000));
    SystemdNotifier n = SystemdNotifier::from_environment();
    REQUIRE(n.watchdog_interval() == interval);

    asio::io_context ioc;
    asio::cancellation_signal stop;
    std::vector<Ping> pings;
    bool watchdog_done = false;
    std::exception_ptr watchdog_error;
    bool collector_done = false;
    const auto start = Clock::now();
    asio::co_spawn(ioc, run_watchdog(n),
                   asio::bind_cancellation_slot(stop.slot(), [&](std::exception_ptr e) {
                       watchdog_done = true;
                       watchdog_error = e;
                   }));
    asio::co_spawn(ioc, collect(listener, pings, 5, stop, how, 3 * interval),
                   [&](std::exception_ptr e) {
                       collector_done = true;
                       if (e) std::rethrow_exception(e);
                   });
    ioc.run_for(10s);

    CHECK(watchdog_done);
    CHECK_FALSE(watchdog_error);  // a cancelled watchdog returns, it does not throw
    REQUIRE(collector_done);
    REQUIRE(pings.size() == 5);  // and none after the stop (the collector kept listening)
    CHECK(listener.queue_empty());
    for (const Ping& p : pings) CHECK(p.text == "WATCHDOG=1");
    CHECK(pings[0].at - start < interval);  // the first ping goes out at once
    for (std::size_t i = 1; i < pings.size(); ++i) {
        const auto gap = std::chrono::duration_cast<milliseconds>(pings[i].at - pings[i - 1].at);
        CAPTURE(gap.count());
        CHECK(gap >= interval - 20ms);  // never early (allowing for the receiver's delay)
        CHECK(gap < 3 * interval);      // and not lost (a generous bound: loaded CI, ASan)
    }
}

TEST_CASE("run_watchdog returns at once when no watchdog is asked for") {
    TempDir dir;
    NotifyEnv env;
    Listener listener(dir.file("notify"));
    env.set("NOTIFY_SOCKET", dir.file("notify"));
    SystemdNotifier n = SystemdNotifier::from_environment();
    REQUIRE_FALSE(n.watchdog_interval());

    asio::io_context ioc;
    bool done = false;
    asio::co_spawn(ioc, run_watchdog(n), [&](std::exception_ptr e) {
        done = true;
        CHECK_FALSE(e);
    });
    const auto start = Clock::now();
    ioc.run_for(5s);
    CHECK(done);
    CHECK(Clock::now() - start < 1s);
    CHECK(listener.queue_empty());
}

TEST_CASE("run_watchdog logs a failed ping and keeps trying") {
    TempDir dir;
    NotifyEnv env;
    env.set("NOTIFY_SOCKET", dir.file("nobody"));
    env.set("WATCHDOG_USEC", "40000");  // a ping every 20 ms
    SystemdNotifier n = SystemdNotifier::from_environment();
    std::ostringstream log;
    auto logger = std::make_shared<spdlog::logger>(
        "watchdog-test", std::make_shared<spdlog::sinks::ostream_sink_st>(log));
    logger->set_pattern("%l %v");

    asio::io_context ioc;
    asio::cancellation_signal stop;
    bool done = false;
    asio::co_spawn(ioc, run_watchdog(n, logger),
                   asio::bind_cancellation_slot(stop.slot(), [&](std::exception_ptr e) {
                       done = true;
                       CHECK_FALSE(e);
                   }));
    asio::steady_timer stopper(ioc, 110ms);
    stopper.async_wait([&](boost::system::error_code) { stop.emit(asio::cancellation_type::all); });
    ioc.run_for(10s);
    CHECK(done);

    std::size_t failures = 0;
    const std::string text = log.str();
    for (auto pos = text.find("warning systemd watchdog ping failed"); pos != std::string::npos;
         pos = text.find("warning systemd watchdog ping failed", pos + 1))
        ++failures;
    CAPTURE(text);
    CHECK(failures >= 3);
    CHECK(text.find(dir.file("nobody")) != std::string::npos);
}
