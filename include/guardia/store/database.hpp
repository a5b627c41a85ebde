// One SQLite connection to Guardia's store, with the schema brought up to date on open.
//
// Opening configures the connection (WAL, busy_timeout, foreign keys) and applies the
// migrations the file has not seen yet, keyed on PRAGMA user_version. A file this opens for the
// first time is created mode 0600 whatever the umask (the audit log names hosts, people and
// errors); SQLite gives its -wal, -shm and -journal files the mode of the database file. A file that cannot be
// opened or migrated is a start-up failure: the constructor throws std::runtime_error naming
// the file. Once open, a failed query is a Result error in sqlite_category().
//
// A Database is one connection: use it from one thread at a time. Reads run on the calling
// thread and may touch the disk, so the service calls them off the event loop (run_blocking()
// from guardia/core/local_io.hpp); WAL lets them run while the AuditWriter, on its own
// connection, commits. All writes go through the AuditWriter.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/store/records.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;

namespace guardia::store {

using namespace std::chrono_literals;

// SQLite result codes (SQLITE_*, extended codes included), with SQLite's own text.
const boost::system::error_category& sqlite_category() noexcept;
inline boost::system::error_code make_sqlite_error(int rc) noexcept {
    return {rc, sqlite_category()};
}

struct DatabaseOptions {
    DatabaseOptions() noexcept {}
    // How long a statement waits for another connection's lock before failing with
    // SQLITE_BUSY. Under WAL only writers wait for each other.
    std::chrono::milliseconds busy_timeout = 5s;
    // false: synchronous=NORMAL, a commit survives a crash of the process but may be lost
    //        on power failure (enough for reads and one-off migrations).
    // true:  synchronous=FULL, the WAL is fsynced at every commit. The AuditWriter uses it:
    //        it commits in batches, so this is one fsync per batch, not per event.
    bool synchronous_full = false;
};

class Database {
  public:
    // Opens or creates the file and migrates it. Throws std::runtime_error naming the file.
    explicit Database(std::string path);
    Database(std::string path, DatabaseOptions options);
    // Opens an existing file read-only: never creates, configures or migrates it (checks and
    // audit verification must not change what they look at). A missing file, a file that is
    // not SQLite, not a Guardia store or of a newer schema is an error naming the file.
    static Result<Database> open_read_only(std::string path);
    ~Database();
    Database(Database&&) noexcept;
    Database& operator=(Database&&) noexcept;
    Database(const Database&) = delete;
    Database& operator=(const Database&) = delete;

    // The schema version this build creates (PRAGMA user_version after opening). A file with
    // a newer version, written by a newer Guardia, is refused rather than misread.
    static int schema_version() noexcept;

    const std::string& path() const noexcept { return path_; }

    // Audit events of an SR with id > after_id, oldest first, at most `limit` (1..10000):
    // page with after_id = the last id seen.
    Result<std::vector<AuditRow>> audit_for(std::string_view sr_id, std::int64_t after_id,
                                            int limit);
    // Every audit event of a rollout, oldest first.
    Result<std::vector<AuditRow>> audit_for_rollout(std::string_view rollout_id);
    // The node's row in that rollout; empty when none was written.
    Result<std::optional<NodeResult>> node_result(std::string_view rollout_id,
                                                  std::string_view node);
    // The rollout's row; empty when none was written.
    Result<std::optional<RolloutRecord>> rollout(std::string_view rollout_id);

    // The service's records. Empty optional / vector when there is none.
    Result<std::optional<TaskRecord>> task(std::string_view sr_id);
    Result<std::vector<TaskRecord>> tasks_in_status(std::string_view status);
    // A page of tasks, newest updated_ms first (ties: sr_id descending), matching every filter
    // that is set: status / requester / approver exactly, `text` as a case-insensitive
    // substring of sr_id, the title (payload) or system_name, `before_updated_ms` strictly.
    struct TaskFilter {
        TaskFilter() {}
        std::string status, requester, approver, text;
        std::optional<std::int64_t> before_updated_ms;
        int limit = 50;
    };
    Result<std::vector<TaskRecord>> tasks_page(const TaskFilter& filter);
    // Nodes of one (inst_id, system_name); the whole inventory when inst_id is empty.
    Result<std::vector<InventoryNodeRecord>> inventory_nodes(std::string_view inst_id,
                                                             std::string_view system_name);
    Result<std::vector<ArtifactRecord>> artifacts_for(std::string_view sr_id);  // staging order
    // Undelivered deliveries that have not given up, earliest next attempt first.
    Result<std::vector<OutboxRecord>> outbox_pending(int limit);
    Result<std::vector<OutboxRecord>> outbox_for(std::string_view sr_id);
    Result<std::optional<IdempotencyRecord>> idempotency(std::string_view key);
    // Rollouts without finished_ms: in flight, or left so by a process that died.
    Result<std::vector<RolloutRecord>> unfinished_rollouts();
    Result<std::vector<RolloutRecord>> rollouts_for(std::string_view sr_id);  // newest first
    Result<std::vector<NodeResult>> node_results(std::string_view rollout_id);
    // Every row of every node that any rollout of `sr_id` touched, and of the nodes named in
    // `also`, from all SRs' rollouts: by node, then oldest rollout first (who changed the node,
    // and in which order).
    Result<std::vector<NodeHistoryRow>> node_histories(std::string_view sr_id,
                                                       const std::vector<std::string>& also = {});

    // Constant SQL only (schema, pragmas, checks in tests): values from outside go through
    // bound parameters in a dedicated helper, never into these strings.
    Result<void> exec(std::string_view sql);
    // First column of the first row as an integer / text (e.g. "PRAGMA user_version").
    Result<std::int64_t> query_int64(std::string_view sql);
    Result<std::string> query_text(std::string_view sql);

    // For the store layer's own statements (the AuditWriter's inserts).
    sqlite3* native_handle() const noexcept { return db_.get(); }

  private:
    Database() = default;  // for open_read_only()

    struct Close {
        void operator()(sqlite3* db) const noexcept;
    };

    void configure(const DatabaseOptions& options);
    void migrate();

    std::string path_;
    std::unique_ptr<sqlite3, Close> db_;
};

}  // namespace guardia::store
