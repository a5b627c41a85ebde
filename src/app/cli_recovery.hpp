// Crash recovery from the command line: rollouts a guardia process left unfinished in a
// database (it was killed, or the machine went down) are recovered with deploy::recover_rollout,
// the same code the service runs at start-up. Used by `guardia recover` and at the start of
// every `guardia deploy` on that database.
#pragma once

#include "cli.hpp"

#include "guardia/core/error.hpp"

#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace guardia::store {
class AuditWriter;
class Database;
}

namespace guardia::cli {

struct CliRecoveryOutcome {
    std::size_t rollouts = 0;       // unfinished rollouts recovered
    std::size_t still_running = 0;  // left alone: their process is alive (or on another host)
    std::size_t nodes_left = 0;     // nodes that could not be inspected (RECOVERY_FAILED)
    std::vector<std::string> lines; // what was done, for people
    Result<void> written;           // whether the store has all of it (else: spilled, exit 3)
};

// Finds the unfinished rollouts of `db_path` and recovers those whose process is gone (with
// `force`, also those of a process on another host). Nodes come from `engine.inventory` by name,
// else from the inventory the database recorded for them. Runs its own event loop to the end:
// call it before (never from) another loop. Writes through `audit`, which must be started.
// Throws UsageError when the database cannot be read, AuditUnavailable when it cannot be
// written.
CliRecoveryOutcome recover_database(const std::string& db_path, const Engine& engine,
                                    store::AuditWriter& audit, const std::string& origin,
                                    bool force);

// The nodes `db` recorded (record_inventory, or the service's imports) that parse and that the
// credential policy admits, by name. Unreadable rows are left out.
std::map<std::string, deploy::Node> stored_nodes(store::Database& db, const Engine& engine);

// Records the inventory file's nodes (their JSON, no secrets: credentials are references) in
// the database, so that `guardia recover` can reach them without the file. Blocking read of
// the file: before the loop.
void record_inventory(const std::string& inventory_path, store::AuditWriter& audit);

}  // namespace guardia::cli
