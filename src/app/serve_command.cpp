// `guardia serve`: the always-on service (docs/API.md, docs/OPERATIONS.md).
//
// Start-up order: configuration (every error names the file and field, exit 2), store, crash
// recovery of what a previous process left in flight, listener, then the readiness line on
// stdout and READY=1 to systemd. SIGTERM/SIGINT drain: no new work, in-flight nodes finish or
// roll back, final states durable, exit 0.
#include "cli.hpp"
#include "commands.hpp"

#include "guardia/deploy/credential_store.hpp"
#include "guardia/http/server.hpp"
#include "guardia/service/clients.hpp"
#include "guardia/service/deploy_service.hpp"
#include "guardia/service/notifier.hpp"
#include "guardia/service/service_config.hpp"
#include "guardia/service/systemd_notify.hpp"
#include "guardia/store/audit_writer.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <csignal>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>

namespace guardia::cli {

namespace asio = boost::asio;

namespace {

constexpr const char* serve_usage =
    "usage: guardia serve [--config FILE] [--port N] [--listen ADDRESS] [--db FILE]\n"
    "\n"
    "The always-on service: HTTP API, rollouts, approvals, webhooks (docs/API.md).\n"
    "\n"
    "  --config FILE     engine configuration with the \"service\" section (default:\n"
    "                    $GUARDIA_CONFIG, else /etc/guardia/guardia.json; one is required)\n"
    "  --port N          listen on port N instead of service.port (0: any free port)\n"
    "  --listen ADDRESS  listen on ADDRESS instead of service.listen_address\n"
    "  --db FILE         the store (default: store.db, else <service.state_dir>/guardia.db)\n"
    "  -h, --help        this help\n"
    "Prints 'guardia: listening on http(s)://ADDRESS:PORT' once ready.\n";

// Pings systemd's watchdog from the loop itself: a hung loop stops the pings and systemd
// restarts the service.
asio::awaitable<void> watchdog_loop(service::SystemdNotifier& sd, std::chrono::microseconds every,
                                    std::shared_ptr<asio::steady_timer> timer,
                                    std::shared_ptr<bool> stop) {
    bool failing = false;  // log a failing ping once, and its recovery, not every interval
    while (!*stop) {
        auto ping = sd.watchdog();
        if (!ping && !failing)
            spdlog::error("watchdog ping failed: {} (systemd will restart the service if this "
                          "lasts WatchdogSec)",
                          ping.error().message);
        else if (ping && failing)
            spdlog::warn("watchdog pings work again");
        failing = !ping;
        timer->expires_after(every);
        boost::system::error_code ec;
        co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
}

}  // namespace

int serve_command(int argc, char** argv) {
    Args args(argc, argv, 2);
    Common common;
    std::optional<unsigned> port;
    std::string listen;
    while (!args.done()) {
        const std::string f = args.flag();
        if (f == "--help" || f == "-h") return print_help(serve_usage, common, true);
        if (f == "--config")
            common.config_path = args.value();
        else if (f == "--db")
            common.db_path = args.value();
        else if (f == "--listen")
            listen = args.value();
        else if (f == "--port") {
            const std::string v = args.value();
            try {
                std::size_t used = 0;
                const unsigned long p = std::stoul(v, &used);
                if (used != v.size() || p > 65535) throw std::out_of_range(v);
                port = static_cast<unsigned>(p);
            } catch (const std::exception&) {
                throw UsageError("--port: must be a number between 0 and 65535, not '" + v + "'");
            }
        } else
            throw UsageError("unknown option " + f + "\n" + serve_usage);
    }
    // Without --config: GUARDIA_CONFIG, else /etc/guardia/guardia.json (resolve_config_path);
    // the built-in defaults have no "service" section, so one of them is required.
    if (resolve_config_path(common).empty())
        throw UsageError(std::string("--config FILE is required (or GUARDIA_CONFIG, or ") +
                         system_config_path + ")\n" + serve_usage);

    harden_process();  // before any token or key is read
    Engine engine = load_engine(common, false);
    // An API caller writes the inventory: keys only from ssh.key_dirs (default
    // /etc/guardia/keys), passwords only to the hosts they are bound to.
    engine.credentials->set_policy(deploy::service_credential_policy(engine.config.key_dirs));
    auto scfg = service::parse_service_config(engine.config.service, engine.config_path);
    if (!scfg) throw UsageError(scfg.error().message);
    if (port) scfg->port = static_cast<std::uint16_t>(*port);
    if (!listen.empty()) scfg->listen_address = listen;
    // Plain HTTP off loopback (--listen included) is refused here, before anything binds.
    if (auto ok = service::check_transport(*scfg); !ok) throw UsageError(ok.error().message);
    auto ncfg = service::parse_notifier_config(engine.config.notifications, engine.config_path);
    if (!ncfg) throw UsageError(ncfg.error().message);
    if (auto ok = service::load_webhook_secrets(*ncfg, engine.config_path); !ok)
        throw UsageError(ok.error().message);
    ncfg->public_url = service::console_base_url(*scfg, scfg->port);
    auto loaded = service::ClientRegistry::load(*scfg);
    if (!loaded) throw UsageError(loaded.error().message);
    auto clients = std::make_shared<const service::ClientRegistry>(std::move(*loaded));
    std::string db = common.db_path.empty() ? engine.config.db : common.db_path;
    if (db.empty()) db = scfg->state_dir + "/guardia.db";

    // stdout carries only the readiness line; the log goes to stderr (the journal).
    auto logger = spdlog::stderr_logger_mt("guardia");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::info);

    std::unique_ptr<store::AuditWriter> audit;
    try {
        std::error_code ec;
        std::filesystem::create_directories(std::filesystem::path(db).parent_path(), ec);
        audit = std::make_unique<store::AuditWriter>(db);
    } catch (const std::exception& e) {
        throw UsageError(std::string("store: ") + e.what());
    }
    audit->set_redactions(engine.credentials->secrets());
    audit->start();

    int exit_code = 0;
    {
        asio::io_context ioc(1);
        service::SystemdNotifier sd = service::SystemdNotifier::from_environment();
        for (const auto& w : sd.warnings()) logger->warn("systemd: {}", w);
        service::Notifier notifier(ioc.get_executor(), std::move(*ncfg), *audit, db, logger);

        service::DeployServiceDeps deps;
        deps.engine = engine.config;
        deps.engine.host_key_policy = engine.host_key_policy;
        deps.service = *scfg;
        deps.clients = clients;
        deps.db_path = db;
        deps.audit = audit.get();
        deps.notifier = &notifier;
        deps.credentials = engine.credentials;
        deps.known_hosts = engine.known_hosts;
        deps.owner = owner_id();
        deps.logger = logger;
        service::DeployService svc(ioc.get_executor(), std::move(deps));

        http::ServerOptions so;
        so.address = scfg->listen_address;
        so.port = scfg->port;
        so.max_body_bytes = scfg->max_body_bytes;
        so.max_header_bytes = scfg->max_header_bytes;
        so.max_connections = scfg->max_connections;
        so.max_connections_per_address = scfg->max_connections_per_address;
        so.read_timeout = scfg->request_timeout;
        so.idle_timeout = scfg->idle_timeout;
        so.logger = logger;
        if (!scfg->tls_cert_file.empty()) {
            http::TlsFiles tls;
            tls.cert_file = scfg->tls_cert_file;
            tls.key_file = scfg->tls_key_file;
            so.tls = tls;
        }
        // Artifact uploads (PUT /api/tasks/{sr}/artifacts/{name}) may be larger than JSON.
        // Only for a client holding the submit role: an anonymous client never gets a large
        // body buffered.
        const std::size_t artifact_limit = scfg->max_artifact_bytes;
        so.body_limit_for = [artifact_limit, clients](const http::Request& head) {
            return service::request_body_limit(head, *clients, artifact_limit);
        };
        // Authentication from the head alone, before a body byte is read: the only request an
        // anonymous client may make is a body-less GET (or HEAD) of /healthz; anything else,
        // an undecodable path or an unknown path included, without a known token is answered
        // 401 and the connection closed (the role is the route table's business). An admitted
        // anonymous request is thus tiny and cannot hold a slot while it trickles a body.
        // A console session cookie counts as the token of its client (DeployService::admit).
        so.admit = [&svc](const http::Request& head) { return svc.admit(head); };
        http::Server server(ioc.get_executor(), std::move(so),
                            http::StreamingHandler([&svc](http::Request r) {
                                return svc.handle_streaming(std::move(r));
                            }));

        asio::signal_set signals(ioc, SIGTERM, SIGINT);
        auto watchdog_stop = std::make_shared<bool>(false);
        auto watchdog_timer = std::make_shared<asio::steady_timer>(ioc);
        const std::chrono::milliseconds grace = scfg->shutdown_grace;

        asio::co_spawn(
            ioc,
            [&]() -> asio::awaitable<void> {
                (void)sd.status("recovering rollouts left in flight");
                const auto recovered = co_await svc.recover();
                if (recovered > 0)
                    logger->warn("recovered {} rollout(s) or task(s) a previous process left",
                                 recovered);
                if (auto ok = server.listen(); !ok) {
                    std::fprintf(stderr, "guardia serve: %s\n", ok.error().message.c_str());
                    exit_code = 2;
                    signals.cancel();
                    co_await notifier.stop();
                    co_return;
                }
                server.start();
                notifier.start();
                const auto ep = server.local_endpoint();
                if (scfg->public_url.empty())  // the real port (--port 0 lets the kernel pick)
                    notifier.set_public_url(service::console_base_url(*scfg, ep.port()));
                const std::string url = std::string(server.uses_tls() ? "https" : "http") + "://" +
                                        ep.address().to_string() + ":" + std::to_string(ep.port());
                std::printf("guardia: listening on %s\n", url.c_str());
                std::fflush(stdout);
                logger->info("listening on {} (store {})", url, db);
                (void)sd.ready("listening on " + url);
                if (auto every = sd.watchdog_interval())
                    asio::co_spawn(ioc, watchdog_loop(sd, *every, watchdog_timer, watchdog_stop),
                                   asio::detached);

                boost::system::error_code ec;
                int signo =
                    co_await signals.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                logger->info("signal {}: stopping; rollouts in flight drain (grace {} s)", signo,
                             grace.count() / 1000);
                (void)sd.stopping("draining: no new rollouts; nodes in flight finish");
                co_await svc.drain(grace);
                co_await server.shutdown(std::chrono::seconds(5));
                co_await notifier.stop();
                *watchdog_stop = true;
                watchdog_timer->cancel();
                signals.cancel();
                logger->info("stopped");
            },
            [&](std::exception_ptr e) {
                if (!e) return;
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& x) {
                    std::fprintf(stderr, "guardia serve: %s\n", x.what());
                }
                exit_code = 1;
                ioc.stop();
            });
        ioc.run();
    }
    audit->stop();
    return exit_code;
}

}  // namespace guardia::cli
