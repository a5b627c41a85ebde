#include "guardia/deploy/fanout.hpp"

#include "guardia/core/sanitizer.hpp"
#include "guardia/deploy/credential_store.hpp"
#include "guardia/ssh/session.hpp"
#include "guardia/store/audit_writer.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

namespace guardia::deploy {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

struct Fanout::Impl {
    Inventory inventory;
    std::string command;
    std::function<std::string(const Node&)> script_for;  // create_script(): per node
    FanoutOptions options;
    std::vector<FanoutResult> results;
    std::vector<std::unique_ptr<asio::cancellation_signal>> signals;
    std::vector<char> running;  // the node's coroutine body has started and not finished
    bool cancelled = false;
    std::size_t in_flight = 0, done = 0;
    std::optional<asio::steady_timer> wake;

    asio::awaitable<void> one(std::size_t i);
};

Fanout::Fanout() : impl_(std::make_unique<Impl>()) {}
Fanout::~Fanout() = default;

Result<std::unique_ptr<Fanout>> Fanout::create(Inventory inventory, std::string command,
                                               FanoutOptions options) {
    if (command.empty()) return Error(errc::invalid_argument, "exec: the command is empty");
    if (auto ok = sanitize_command(command, options.policy); !ok)
        return Error(errc::security_violation,
                     "exec: command refused, nothing was sent: " + ok.error().message);
    auto f = create_script(std::move(inventory), nullptr, std::move(options));
    if (f) (*f)->impl_->command = std::move(command);
    return f;
}

Result<std::unique_ptr<Fanout>> Fanout::create_script(
    Inventory inventory, std::function<std::string(const Node&)> script_for,
    FanoutOptions options) {
    if (!options.known_hosts) return Error(errc::invalid_argument, "exec: no known_hosts");
    if (!options.credentials) return Error(errc::invalid_argument, "exec: no credential store");
    if (options.max_sessions == 0) options.max_sessions = 1;
    std::unique_ptr<Fanout> f(new Fanout());
    f->impl_->inventory = std::move(inventory);
    f->impl_->script_for = std::move(script_for);
    f->impl_->options = std::move(options);
    return f;
}

asio::awaitable<void> Fanout::Impl::one(std::size_t i) {
    running[i] = 1;
    const Node& node = inventory.nodes[i];
    FanoutResult& r = results[i];
    const auto t0 = Clock::now();
    auto fail = [&](const Error& e) {
        r.error = Error(e.code, "node '" + node.name + "': " + e.message);
    };
    try {
        auto o =
            options.credentials->connect_options(node, options.known_hosts, options.host_key_policy,
                                                 options.connect_timeout, options.logger);
        if (!o) {
            fail(o.error());
        } else {
            auto ex = co_await asio::this_coro::executor;
            auto s = co_await ssh::Session::connect(ex, std::move(*o));
            if (!s) {
                fail(s.error());
            } else {
                // Audit or stop: the command is sent only once its intent row is committed;
                // a store that cannot commit stops the fan-out (no further node starts).
                Result<void> intent;
                if (options.audit) {
                    store::AuditEvent e;
                    e.sr_id = options.sr_id;
                    e.rollout_id = options.run_id;
                    e.node = node.name;
                    e.step = "EXEC";
                    e.event = "STEP_START";
                    options.audit->record(std::move(e));
                    intent = co_await options.audit->durable();
                }
                if (!intent) {
                    fail(Error(errc::audit_unavailable,
                               "EXEC: the audit log cannot be written (" + intent.error().message +
                                   "): the command was not sent"));
                    cancelled = true;
                } else {
                    ssh::ExecOptions eo;
                    eo.timeout = options.command_timeout;
                    eo.max_stdout = options.max_output;
                    eo.max_stderr = options.max_output;
                    const std::string text = script_for ? script_for(node) : command;
                    auto x = co_await (*s)->exec(text, eo);
                    if (!x) {
                        fail(x.error());
                    } else {
                        r.ran = true;
                        r.exit_code = x->exit_code;
                        r.exit_signal = x->exit_signal;
                        r.out = std::move(x->out);
                        r.err = std::move(x->err);
                    }
                }
                if ((*s)->usable()) co_await (*s)->disconnect();
            }
        }
    } catch (const boost::system::system_error&) {
        r.error = Error(errc::cancelled, "node '" + node.name + "': cancelled");
    }
    r.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
    if (options.audit) {
        store::AuditEvent e;
        e.sr_id = options.sr_id;
        e.rollout_id = options.run_id;
        e.node = node.name;
        e.step = "EXEC";
        e.event = r.succeeded() ? "EXEC_OK" : "EXEC_FAILED";
        if (r.ran && r.exit_signal.empty()) e.exit_code = r.exit_code;
        e.duration_ms = r.duration.count();
        e.detail = r.ran ? (r.exit_signal.empty() ? std::string() : "signal " + r.exit_signal)
                         : r.error.message;
        options.audit->record(std::move(e));
    }
    running[i] = 0;
    --in_flight;
    ++done;
    wake->cancel();
}

asio::awaitable<std::vector<FanoutResult>> Fanout::run() {
    auto& m = *impl_;
    auto ex = co_await asio::this_coro::executor;
    m.wake.emplace(ex);
    const std::size_t n = m.inventory.nodes.size();
    m.results.assign(n, FanoutResult());
    m.running.assign(n, 0);
    for (std::size_t i = 0; i < n; ++i) {
        m.results[i].node = m.inventory.nodes[i].name;
        m.results[i].error =
            Error(errc::cancelled, "node '" + m.results[i].node + "': not started (cancelled)");
        m.signals.push_back(std::make_unique<asio::cancellation_signal>());
    }
    auto wait = [&]() -> asio::awaitable<void> {
        m.wake->expires_at(Clock::time_point::max());
        boost::system::error_code ec;
        co_await m.wake->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    };
    Clock::time_point next_start{};
    std::size_t spawned = 0;
    for (std::size_t i = 0; i < n && !m.cancelled; ++i) {
        while (!m.cancelled && m.in_flight >= m.options.max_sessions) co_await wait();
        if (m.cancelled) break;
        if (m.options.max_connections_per_second > 0) {
            // The timer is shared with node completions, which may wake it early: loop.
            while (!m.cancelled && Clock::now() < next_start) {
                m.wake->expires_at(next_start);
                boost::system::error_code ec;
                co_await m.wake->async_wait(asio::redirect_error(asio::use_awaitable, ec));
            }
            if (m.cancelled) break;
            next_start = std::max(next_start, Clock::now()) +
                         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                             1.0 / m.options.max_connections_per_second));
        }
        ++m.in_flight;
        ++spawned;
        asio::co_spawn(ex, m.one(i),
                       asio::bind_cancellation_slot(m.signals[i]->slot(), asio::detached));
    }
    while (m.done < spawned) co_await wait();
    co_return m.results;
}

void Fanout::cancel() {
    auto& m = *impl_;
    if (m.cancelled) return;
    m.cancelled = true;
    // Only bodies that have started: see Rollout::Impl::request_stop for why.
    for (std::size_t i = 0; i < m.running.size(); ++i)
        if (m.running[i]) m.signals[i]->emit(asio::cancellation_type::terminal);
    if (m.wake) m.wake->cancel();
}

}  // namespace guardia::deploy
