// The `guardia` executable: a thin command-line layer over the engine library.
#include "cli.hpp"
#include "commands.hpp"
#include "progress.hpp"

#include "guardia/core/local_io.hpp"
#include "guardia/version.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <cstring>
#include <string_view>

namespace {

int usage(std::FILE* out) {
    std::fprintf(
        out,
        "usage: guardia <command> [options]\n"
        "       guardia --help | --version\n"
        "\n"
        "Guardia rolls artifacts out to Linux nodes over SSH, tier by tier, with backups, health\n"
        "checks, automatic rollback of failed nodes and a hash-chained audit log; nothing is\n"
        "installed on the nodes. `guardia serve` runs it as a service with an HTTP API.\n"
        "\n"
        "commands:\n"
        "  deploy      a tiered rollout of artifacts to an inventory (guardia deploy --help)\n"
        "  exec        one sanitized command on every node (guardia exec --help)\n"
        "  serve       the always-on service: HTTP API, rollouts, webhooks (guardia serve --help)\n"
        "  audit       audit verify --db FILE: check the audit log's hash chain;\n"
        "              audit --rollout ID [--node N]: a rollout's audit rows (guardia audit --help)\n"
        "  status      one rollout from the store: counts, tiers, failed nodes (guardia status --help)\n"
        "  history     recent rollouts from the store, newest first (guardia history --help)\n"
        "  recover     finish what a killed guardia left in flight (guardia recover --help)\n"
        "  rollback    restore the nodes a rollout deployed (guardia rollback --help)\n"
        "  inspect     which release runs on each node (guardia inspect --help)\n"
        "  version     print the version\n"
        "  help        show this help; help COMMAND: that command's help (as COMMAND --help)\n"
        "\n"
        "options:\n"
        "  -h, --help  this help\n"
        "  --version   print the version (as the version command)\n"
        "\n"
        "Every command takes -h / --help. The configuration: --config FILE, else $GUARDIA_CONFIG,\n"
        "else /etc/guardia/guardia.json if it exists, else built-in defaults.\n"
        "See docs/OPERATIONS.md for the inventory, the configuration file and exit codes.\n");
    return out == stderr ? 2 : 0;
}

int run(int argc, char** argv) {
    if (argc < 2) return usage(stderr);
    const std::string_view command = argv[1];
    if (command == "version" || command == "--version") {
        std::printf("guardia %s\n", guardia::version());
        return 0;
    }
    // `guardia help deploy` is `guardia deploy --help`.
    char help_flag[] = "--help";
    char* help_argv[] = {argv[0], argc >= 3 ? argv[2] : nullptr, help_flag, nullptr};
    if (command == "help" && argc >= 3) return run(3, help_argv);
    if (command == "help" || command == "--help" || command == "-h") return usage(stdout);
    // Log lines go to stderr: stdout carries the report (--json documents must stay parseable
    // when the store warns, e.g. on a full disk).
    // NO_COLOR (no-color.org) turns colour off here too; spdlog colours only terminals.
    spdlog::set_default_logger(std::make_shared<spdlog::logger>(
        "", std::make_shared<spdlog::sinks::stderr_color_sink_mt>(
                guardia::cli::use_colour(true, std::getenv("NO_COLOR"))
                    ? spdlog::color_mode::automatic
                    : spdlog::color_mode::never)));
    spdlog::set_level(spdlog::level::warn);
    try {
        int rc = -1;
        if (command == "deploy") rc = guardia::cli::deploy_command(argc, argv);
        if (command == "exec") rc = guardia::cli::exec_command(argc, argv);
        if (command == "serve") rc = guardia::cli::serve_command(argc, argv);
        if (command == "audit") rc = guardia::cli::audit_command(argc, argv);
        if (command == "recover") rc = guardia::cli::recover_command(argc, argv);
        if (command == "status") rc = guardia::cli::status_command(argc, argv);
        if (command == "history") rc = guardia::cli::history_command(argc, argv);
        if (command == "rollback") rc = guardia::cli::rollback_command(argc, argv);
        if (command == "inspect") rc = guardia::cli::inspect_command(argc, argv);
        if (rc >= 0) {
            guardia::stop_local_io_pool();
            return rc;
        }
    } catch (const guardia::cli::AuditUnavailable& e) {
        std::fprintf(stderr, "guardia %s: %s\n", argv[1], e.what());
        return 3;
    } catch (const guardia::cli::UsageError& e) {
        std::fprintf(stderr, "guardia %s: %s\n", argv[1], e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "guardia %s: %s\n", argv[1], e.what());
        return 2;
    }
    std::fprintf(stderr, "guardia: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}

}  // namespace

int main(int argc, char** argv) {
    return run(argc, argv);
}
