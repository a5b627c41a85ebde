#include "guardia/store/database.hpp"

#include "detail/audit_chain.hpp"
#include "detail/sqlite.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <utility>

namespace guardia::store {

using detail::sqlite_error;
using detail::Statement;

namespace {

// Migration i takes a file from user_version i to i + 1, inside one transaction with the
// version bump: its SQL, then (when a migration has to compute something for existing rows)
// its C++ step. Append new migrations; never edit one that has shipped.
//
// Choices kept for the service and crash recovery: audit_log has no foreign keys (the log
// must accept any event, even about a rollout whose row failed to be written); node_results
// must name an existing rollout, which the single ordered writer guarantees when the rollout
// is upserted first. STRICT tables refuse values of the wrong type instead of storing them.
struct Migration {
    const char* sql;
    Result<void> (*then)(sqlite3* db, const std::string& path) = nullptr;
};

constexpr std::array<Migration, 6> migrations = {{
    // 1: audit log, rollouts, node results; room for tasks, artifacts, inventory, outbox.
    {R"sql(
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    ts_ms       INTEGER NOT NULL,
    sr_id       TEXT NOT NULL,
    rollout_id  TEXT NOT NULL,
    node        TEXT NOT NULL,
    step        TEXT NOT NULL,
    event       TEXT NOT NULL,
    exit_code   INTEGER,
    duration_ms INTEGER,
    detail      TEXT NOT NULL
) STRICT;
CREATE INDEX audit_log_by_sr ON audit_log (sr_id, id);
CREATE INDEX audit_log_by_rollout ON audit_log (rollout_id, node);

CREATE TABLE rollouts (
    id          TEXT PRIMARY KEY,
    sr_id       TEXT NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    created_ms  INTEGER NOT NULL,
    finished_ms INTEGER
) STRICT;
CREATE INDEX rollouts_by_sr ON rollouts (sr_id, created_ms);

CREATE TABLE node_results (
    rollout_id  TEXT NOT NULL REFERENCES rollouts (id),
    node        TEXT NOT NULL,
    status      TEXT NOT NULL,
    step        TEXT NOT NULL DEFAULT '',
    error       TEXT NOT NULL DEFAULT '',
    started_ms  INTEGER,
    finished_ms INTEGER,
    backup_path TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout_id, node)
) STRICT, WITHOUT ROWID;

CREATE TABLE tasks (
    sr_id      TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    requester  TEXT NOT NULL DEFAULT '',
    approver   TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    payload    TEXT NOT NULL DEFAULT '{}'
) STRICT;

CREATE TABLE artifacts (
    id         INTEGER PRIMARY KEY,
    sr_id      TEXT NOT NULL,
    name       TEXT NOT NULL,
    path       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX artifacts_by_sr ON artifacts (sr_id);

CREATE TABLE inventory_nodes (
    name        TEXT PRIMARY KEY,
    inst_id     TEXT NOT NULL,
    system_name TEXT NOT NULL,
    payload     TEXT NOT NULL
) STRICT;
CREATE INDEX inventory_nodes_by_inst ON inventory_nodes (inst_id, system_name);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    event           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    delivered_ms    INTEGER
) STRICT;
CREATE INDEX outbox_pending ON outbox (next_attempt_ms) WHERE delivered_ms IS NULL;
)sql"},
    // 2: the service. Tasks get their targeting and outcome columns; the outbox (never written
    // by version 1) is recreated holding fully rendered deliveries; idempotency keys.
    {R"sql(
ALTER TABLE tasks ADD COLUMN inst_id TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN system_name TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN rollout_id TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN reason TEXT NOT NULL DEFAULT '';
CREATE INDEX tasks_by_status ON tasks (status);

CREATE UNIQUE INDEX artifacts_by_sr_name ON artifacts (sr_id, name);

DROP TABLE outbox;
CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    event           TEXT NOT NULL,
    sr_id           TEXT NOT NULL,
    url             TEXT NOT NULL,
    headers         TEXT NOT NULL,
    body            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    delivered_ms    INTEGER,
    gave_up_ms      INTEGER,
    last_error      TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX outbox_pending ON outbox (next_attempt_ms)
    WHERE delivered_ms IS NULL AND gave_up_ms IS NULL;
CREATE INDEX outbox_by_sr ON outbox (sr_id, created_ms);

CREATE TABLE idempotency_keys (
    key        TEXT PRIMARY KEY,
    request    TEXT NOT NULL,
    status     INTEGER NOT NULL,
    body       TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
)sql"},
    // 3: the tamper-evident audit chain (guardia/store/audit_chain.hpp). Rows already there
    // are chained once, in id order, by chain_existing_rows; `meta` records when and how many
    // (rows written before that moment were not protected when they were written).
    {R"sql(
ALTER TABLE audit_log ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN row_hash TEXT NOT NULL DEFAULT '';
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
)sql",
     &detail::chain_existing_rows},
    // 4: who asked, for rows written on behalf of an API client (AuditEvent::principal).
    // Existing rows get '' and hash exactly as before (audit_row_hash), so the chain holds.
    {R"sql(
ALTER TABLE audit_log ADD COLUMN principal TEXT NOT NULL DEFAULT '';
)sql"},
    // 5: a node's history across SRs (Database::node_histories), read before a PM rollback.
    {R"sql(
CREATE INDEX IF NOT EXISTS node_results_by_node ON node_results (node);
)sql"},
    // 6: the process running a rollout (RolloutRecord::owner), so that recovery never takes
    // over a rollout that is still running in another process on the same database.
    {R"sql(
ALTER TABLE rollouts ADD COLUMN owner TEXT NOT NULL DEFAULT '';
)sql"},
}};

constexpr int max_page = 10000;

// SQLite would create a new file with 0644 & ~umask: create it first, 0600 whatever the umask
// (fchmod: a umask such as 0277 would also take the owner's write bit). O_EXCL: only a file
// created here is changed; an existing file keeps the mode its owner gave it. Failures other
// than "exists" are left to sqlite3_open_v2, whose error names the file. SQLite gives the
// -wal, -shm and -journal files the database file's mode, so they are 0600 too.
void create_private_file(const std::string& path) {
    if (path.empty() || path == ":memory:" || path.rfind("file:", 0) == 0) return;
    struct Fd {
        int fd;
        ~Fd() {
            if (fd >= 0) ::close(fd);
        }
    } f{::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600)};
    if (f.fd >= 0) (void)::fchmod(f.fd, 0600);
}

constexpr std::string_view audit_columns =
    "id, ts_ms, sr_id, rollout_id, node, step, event, exit_code, duration_ms, detail, principal";

Result<std::vector<AuditRow>> read_audit_rows(sqlite3* db, Statement& stmt,
                                              const std::string& what) {
    std::vector<AuditRow> rows;
    int rc;
    while ((rc = stmt.step()) == SQLITE_ROW) {
        AuditRow& row = rows.emplace_back();
        row.id = stmt.int64(0);
        row.ts_ms = stmt.int64(1);
        row.sr_id = stmt.text(2);
        row.rollout_id = stmt.text(3);
        row.node = stmt.text(4);
        row.step = stmt.text(5);
        row.event = stmt.text(6);
        if (auto code = stmt.optional_int64(7)) row.exit_code = static_cast<int>(*code);
        row.duration_ms = stmt.optional_int64(8);
        row.detail = stmt.text(9);
        row.principal = stmt.text(10);
    }
    if (rc != SQLITE_DONE) return sqlite_error(db, rc, what);
    return rows;
}

}  // namespace

void Database::Close::operator()(sqlite3* db) const noexcept {
    // _v2: never fails for statements still open; they are finalized before it frees.
    sqlite3_close_v2(db);
}

Database::Database(std::string path) : Database(std::move(path), DatabaseOptions()) {}

Database::Database(std::string path, DatabaseOptions options) : path_(std::move(path)) {
    configure(options);
    migrate();
}

Database::~Database() = default;
Database::Database(Database&&) noexcept = default;
Database& Database::operator=(Database&&) noexcept = default;

int Database::schema_version() noexcept {
    return static_cast<int>(migrations.size());
}

void Database::configure(const DatabaseOptions& options) {
    auto fail = [this](const Error& e) {
        throw std::runtime_error("SQLite store " + path_ + ": " + e.describe());
    };
    create_private_file(path_);
    sqlite3* raw = nullptr;
    // NOMUTEX: a connection is used by one thread at a time (documented), so SQLite's
    // per-connection mutex would only cost. EXRESCODE: extended codes say which I/O failed.
    int rc = sqlite3_open_v2(
        path_.c_str(), &raw,
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
        nullptr);
    db_.reset(raw);  // even a failed open allocates a handle (for its message)
    if (rc != SQLITE_OK) fail(sqlite_error(db_.get(), rc, "cannot open database"));

    // First, so that the pragmas below wait for a concurrent opener instead of failing.
    sqlite3_busy_timeout(db_.get(), static_cast<int>(options.busy_timeout.count()));

    // WAL: readers never block the writer thread and the writer never blocks readers.
    // Switching a new file to WAL needs an exclusive lock, and SQLite may answer SQLITE_BUSY
    // without calling the busy handler while another connection is creating the same file:
    // retry until busy_timeout (this runs at open, never on the event loop).
    auto mode = query_text("PRAGMA journal_mode = WAL");
    const auto give_up = std::chrono::steady_clock::now() + options.busy_timeout;
    while (!mode &&
           (mode.error().code == make_sqlite_error(SQLITE_BUSY) ||
            (mode.error().code.category() == sqlite_category() &&
             (mode.error().code.value() & 0xff) == SQLITE_BUSY)) &&
           std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        mode = query_text("PRAGMA journal_mode = WAL");
    }
    if (!mode) fail(mode.error());
    if (*mode != "wal" && path_ != ":memory:")
        fail(Error(make_sqlite_error(SQLITE_CANTOPEN),
                   "cannot switch to WAL journal mode (got '" + *mode + "')"));

    if (auto r = exec(options.synchronous_full ? "PRAGMA synchronous = FULL"
                                               : "PRAGMA synchronous = NORMAL");
        !r)
        fail(r.error());
    if (auto r = exec("PRAGMA foreign_keys = ON"); !r) fail(r.error());
    // A build of SQLite without foreign keys would silently ignore the pragma.
    if (auto on = query_int64("PRAGMA foreign_keys"); !on || *on != 1)
        fail(Error(make_sqlite_error(SQLITE_MISUSE), "foreign keys cannot be enabled"));
}

void Database::migrate() {
    auto fail = [this](const Error& e) {
        throw std::runtime_error("SQLite store " + path_ + ": " + e.describe());
    };
    const int latest = schema_version();
    auto version = query_int64("PRAGMA user_version");
    if (!version) fail(version.error());
    if (*version == latest) return;  // the common case takes no write lock

    // IMMEDIATE: a second process migrating at the same moment waits here, then sees the
    // version it wrote (re-read below) instead of applying the migrations twice.
    if (auto r = exec("BEGIN IMMEDIATE"); !r) fail(r.error());
    auto rollback_and_fail = [&](const Error& e) {
        (void)exec("ROLLBACK");
        fail(e);
    };
    version = query_int64("PRAGMA user_version");
    if (!version) rollback_and_fail(version.error());
    if (*version > latest || *version < 0)
        rollback_and_fail(Error(make_sqlite_error(SQLITE_MISMATCH),
                                "schema version " + std::to_string(*version) +
                                    " is not one this build knows (latest " +
                                    std::to_string(latest) + "); refusing to use it"));
    for (auto v = *version; v < latest; ++v) {
        const Migration& m = migrations[static_cast<std::size_t>(v)];
        auto r = exec(m.sql);
        if (r && m.then != nullptr) r = m.then(db_.get(), path_);
        if (!r)
            rollback_and_fail(Error(r.error().code, "migration " + std::to_string(v + 1) +
                                                        " failed: " + r.error().message));
    }
    // user_version lives in the file header and is written by this same transaction.
    if (auto r = exec("PRAGMA user_version = " + std::to_string(latest)); !r)
        rollback_and_fail(r.error());
    if (auto r = exec("COMMIT"); !r) rollback_and_fail(r.error());
}

Result<Database> Database::open_read_only(std::string path) {
    Database db;
    db.path_ = std::move(path);
    const std::string& p = db.path_;
    auto fail = [&](int rc, const std::string& what) -> Error {
        return detail::sqlite_error(db.db_.get(), rc, "SQLite store " + p + ": " + what);
    };
    // SQLite's "unable to open database file" does not say which part failed: stat first.
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0)
        return Error(errc::invalid_argument,
                     "SQLite store " + p + ": cannot open: " + std::strerror(errno));
    if (!S_ISREG(st.st_mode))
        return Error(errc::invalid_argument, "SQLite store " + p + ": not a regular file");
    sqlite3* raw = nullptr;
    int rc = sqlite3_open_v2(p.c_str(), &raw,
                             SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
                             nullptr);
    db.db_.reset(raw);
    if (rc != SQLITE_OK) return fail(rc, "cannot open database");
    sqlite3_busy_timeout(db.db_.get(), 5000);
    // The first read parses the header: a file that is not SQLite fails here (SQLITE_NOTADB).
    auto version = db.query_int64("PRAGMA user_version");
    if (!version)
        return Error(version.error().code, "SQLite store " + p +
                                               ": not a readable SQLite database: " +
                                               version.error().message);
    auto tables = db.query_int64(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'audit_log'");
    if (!tables) return tables.error();
    if (*tables != 1 || *version < 1)
        return Error(errc::invalid_argument,
                     "SQLite store " + p + ": not a Guardia store (no audit_log table)");
    if (*version > schema_version())
        return Error(make_sqlite_error(SQLITE_MISMATCH),
                     "SQLite store " + p + ": schema version " + std::to_string(*version) +
                         " is newer than this build knows (" + std::to_string(schema_version()) +
                         ")");
    return db;
}

Result<void> Database::exec(std::string_view sql) {
    const std::string text(sql);  // sqlite3_exec wants a terminated string
    char* message = nullptr;
    int rc = sqlite3_exec(db_.get(), text.c_str(), nullptr, nullptr, &message);
    std::string detail = message != nullptr ? message : sqlite3_errstr(rc);
    sqlite3_free(message);
    if (rc != SQLITE_OK) return Error(make_sqlite_error(rc), "store " + path_ + ": " + detail);
    return {};
}

Result<std::int64_t> Database::query_int64(std::string_view sql) {
    auto stmt = Statement::prepare(db_.get(), sql);
    if (!stmt) return stmt.error();
    int rc = stmt->step();
    if (rc == SQLITE_ROW) return stmt->int64(0);
    if (rc == SQLITE_DONE)
        return Error(make_sqlite_error(SQLITE_NOTFOUND), "store " + path_ + ": no row");
    return sqlite_error(db_.get(), rc, "store " + path_);
}

Result<std::string> Database::query_text(std::string_view sql) {
    auto stmt = Statement::prepare(db_.get(), sql);
    if (!stmt) return stmt.error();
    int rc = stmt->step();
    if (rc == SQLITE_ROW) return stmt->text(0);
    if (rc == SQLITE_DONE)
        return Error(make_sqlite_error(SQLITE_NOTFOUND), "store " + path_ + ": no row");
    return sqlite_error(db_.get(), rc, "store " + path_);
}

Result<std::vector<AuditRow>> Database::audit_for(std::string_view sr_id, std::int64_t after_id,
                                                  int limit) {
    if (limit < 1 || limit > max_page)
        return Error(errc::invalid_argument, "audit page size " + std::to_string(limit) +
                                                 " is outside 1.." + std::to_string(max_page));
    const std::string what =
        "store " + path_ + ": reading the audit log of SR " + std::string(sr_id);
    auto stmt = Statement::prepare(db_.get(), "SELECT " + std::string(audit_columns) +
                                                  " FROM audit_log WHERE sr_id = ?1 AND id > ?2"
                                                  " ORDER BY id LIMIT ?3");
    if (!stmt) return stmt.error();
    stmt->bind(1, sr_id);
    stmt->bind(2, after_id);
    stmt->bind(3, std::int64_t{limit});
    return read_audit_rows(db_.get(), *stmt, what);
}

Result<std::vector<AuditRow>> Database::audit_for_rollout(std::string_view rollout_id) {
    const std::string what =
        "store " + path_ + ": reading the audit log of rollout " + std::string(rollout_id);
    auto stmt = Statement::prepare(db_.get(), "SELECT " + std::string(audit_columns) +
                                                  " FROM audit_log WHERE rollout_id = ?1"
                                                  " ORDER BY id");
    if (!stmt) return stmt.error();
    stmt->bind(1, rollout_id);
    return read_audit_rows(db_.get(), *stmt, what);
}

Result<std::optional<NodeResult>> Database::node_result(std::string_view rollout_id,
                                                        std::string_view node) {
    auto stmt = Statement::prepare(db_.get(),
                                   "SELECT status, step, error, started_ms, finished_ms,"
                                   " backup_path FROM node_results"
                                   " WHERE rollout_id = ?1 AND node = ?2");
    if (!stmt) return stmt.error();
    stmt->bind(1, rollout_id);
    stmt->bind(2, node);
    int rc = stmt->step();
    if (rc == SQLITE_DONE) return std::optional<NodeResult>();
    if (rc != SQLITE_ROW)
        return sqlite_error(db_.get(), rc,
                            "store " + path_ + ": reading node result of " + std::string(node) +
                                " in rollout " + std::string(rollout_id));
    NodeResult r;
    r.rollout_id = rollout_id;
    r.node = node;
    r.status = stmt->text(0);
    r.step = stmt->text(1);
    r.error = stmt->text(2);
    r.started_ms = stmt->optional_int64(3);
    r.finished_ms = stmt->optional_int64(4);
    r.backup_path = stmt->text(5);
    return std::optional<NodeResult>(std::move(r));
}

Result<std::optional<RolloutRecord>> Database::rollout(std::string_view rollout_id) {
    auto stmt = Statement::prepare(db_.get(),
                                   "SELECT sr_id, status, reason, created_ms, finished_ms,"
                                   " owner FROM rollouts WHERE id = ?1");
    if (!stmt) return stmt.error();
    stmt->bind(1, rollout_id);
    int rc = stmt->step();
    if (rc == SQLITE_DONE) return std::optional<RolloutRecord>();
    if (rc != SQLITE_ROW)
        return sqlite_error(db_.get(), rc,
                            "store " + path_ + ": reading rollout " + std::string(rollout_id));
    RolloutRecord r;
    r.id = rollout_id;
    r.sr_id = stmt->text(0);
    r.status = stmt->text(1);
    r.reason = stmt->text(2);
    r.created_ms = stmt->int64(3);
    r.finished_ms = stmt->optional_int64(4);
    r.owner = stmt->text(5);
    return std::optional<RolloutRecord>(std::move(r));
}

namespace {

constexpr std::string_view task_columns =
    "sr_id, status, requester, approver, inst_id, system_name, rollout_id, reason, created_ms,"
    " updated_ms, payload";

TaskRecord read_task(const Statement& stmt) {
    TaskRecord t;
    t.sr_id = stmt.text(0);
    t.status = stmt.text(1);
    t.requester = stmt.text(2);
    t.approver = stmt.text(3);
    t.inst_id = stmt.text(4);
    t.system_name = stmt.text(5);
    t.rollout_id = stmt.text(6);
    t.reason = stmt.text(7);
    t.created_ms = stmt.int64(8);
    t.updated_ms = stmt.int64(9);
    t.payload = stmt.text(10);
    return t;
}

constexpr std::string_view outbox_columns =
    "id, event, sr_id, url, headers, body, attempts, next_attempt_ms, created_ms, delivered_ms,"
    " gave_up_ms, last_error";

OutboxRecord read_outbox(const Statement& stmt) {
    OutboxRecord o;
    o.id = stmt.text(0);
    o.event = stmt.text(1);
    o.sr_id = stmt.text(2);
    o.url = stmt.text(3);
    o.headers = stmt.text(4);
    o.body = stmt.text(5);
    o.attempts = stmt.int64(6);
    o.next_attempt_ms = stmt.int64(7);
    o.created_ms = stmt.int64(8);
    o.delivered_ms = stmt.optional_int64(9);
    o.gave_up_ms = stmt.optional_int64(10);
    o.last_error = stmt.text(11);
    return o;
}

RolloutRecord read_rollout(const Statement& stmt) {
    RolloutRecord r;
    r.id = stmt.text(0);
    r.sr_id = stmt.text(1);
    r.status = stmt.text(2);
    r.reason = stmt.text(3);
    r.created_ms = stmt.int64(4);
    r.finished_ms = stmt.optional_int64(5);
    r.owner = stmt.text(6);
    return r;
}

// Steps a prepared statement to the end, turning each row into a T.
template <class T, class Read>
Result<std::vector<T>> read_all(sqlite3* db, Statement& stmt, const std::string& what, Read read) {
    std::vector<T> rows;
    int rc;
    while ((rc = stmt.step()) == SQLITE_ROW) rows.push_back(read(stmt));
    if (rc != SQLITE_DONE) return sqlite_error(db, rc, what);
    return rows;
}

// At most one row expected (a primary-key lookup): the row, or empty.
template <class T, class Read>
Result<std::optional<T>> read_one(sqlite3* db, Statement& stmt, const std::string& what,
                                  Read read) {
    auto rows = read_all<T>(db, stmt, what, read);
    if (!rows) return rows.error();
    if (rows->empty()) return std::optional<T>();
    return std::optional<T>(std::move(rows->front()));
}

}  // namespace

Result<std::optional<TaskRecord>> Database::task(std::string_view sr_id) {
    auto stmt = Statement::prepare(
        db_.get(), "SELECT " + std::string(task_columns) + " FROM tasks WHERE sr_id = ?1");
    if (!stmt) return stmt.error();
    stmt->bind(1, sr_id);
    return read_one<TaskRecord>(
        db_.get(), *stmt, "store " + path_ + ": reading task " + std::string(sr_id), read_task);
}

Result<std::vector<TaskRecord>> Database::tasks_in_status(std::string_view status) {
    auto stmt = Statement::prepare(db_.get(), "SELECT " + std::string(task_columns) +
                                                  " FROM tasks WHERE status = ?1 ORDER BY sr_id");
    if (!stmt) return stmt.error();
    stmt->bind(1, status);
    return read_all<TaskRecord>(db_.get(), *stmt,
                                "store " + path_ + ": reading tasks in " + std::string(status),
                                read_task);
}

Result<std::vector<TaskRecord>> Database::tasks_page(const TaskFilter& f) {
    // An empty filter is "any": each condition is bound, never spliced into the SQL.
    auto stmt = Statement::prepare(
        db_.get(), "SELECT " + std::string(task_columns) +
                       " FROM tasks WHERE (?1 = '' OR status = ?1) AND (?2 = '' OR requester = ?2)"
                       " AND (?3 = '' OR approver = ?3) AND (?4 = '' OR"
                       " instr(lower(sr_id), lower(?4)) > 0 OR instr(lower(system_name), lower(?4)) > 0"
                       " OR instr(lower(coalesce(json_extract(payload, '$.title'), '')), lower(?4)) > 0)"
                       " AND (?5 IS NULL OR updated_ms < ?5)"
                       " ORDER BY updated_ms DESC, sr_id DESC LIMIT ?6");
    if (!stmt) return stmt.error();
    stmt->bind(1, f.status);
    stmt->bind(2, f.requester);
    stmt->bind(3, f.approver);
    stmt->bind(4, f.text);
    stmt->bind(5, f.before_updated_ms);
    stmt->bind(6, static_cast<std::int64_t>(f.limit));
    return read_all<TaskRecord>(db_.get(), *stmt, "store " + path_ + ": listing tasks", read_task);
}

Result<std::vector<InventoryNodeRecord>> Database::inventory_nodes(std::string_view inst_id,
                                                                   std::string_view system_name) {
    // Empty inst_id: the whole inventory.
    auto stmt = Statement::prepare(
        db_.get(), inst_id.empty()
                       ? "SELECT name, inst_id, system_name, payload FROM inventory_nodes"
                         " ORDER BY name"
                       : "SELECT name, inst_id, system_name, payload FROM inventory_nodes"
                         " WHERE inst_id = ?1 AND system_name = ?2 ORDER BY name");
    if (!stmt) return stmt.error();
    if (!inst_id.empty()) {
        stmt->bind(1, inst_id);
        stmt->bind(2, system_name);
    }
    return read_all<InventoryNodeRecord>(
        db_.get(), *stmt, "store " + path_ + ": reading the inventory", [](const Statement& s) {
            InventoryNodeRecord n;
            n.name = s.text(0);
            n.inst_id = s.text(1);
            n.system_name = s.text(2);
            n.payload = s.text(3);
            return n;
        });
}

Result<std::vector<ArtifactRecord>> Database::artifacts_for(std::string_view sr_id) {
    auto stmt = Statement::prepare(db_.get(),
                                   "SELECT sr_id, name, path, sha256, size, created_ms"
                                   " FROM artifacts WHERE sr_id = ?1 ORDER BY id");
    if (!stmt) return stmt.error();
    stmt->bind(1, sr_id);
    return read_all<ArtifactRecord>(
        db_.get(), *stmt, "store " + path_ + ": reading the artifacts of SR " + std::string(sr_id),
        [](const Statement& s) {
            ArtifactRecord a;
            a.sr_id = s.text(0);
            a.name = s.text(1);
            a.path = s.text(2);
            a.sha256 = s.text(3);
            a.size = s.int64(4);
            a.created_ms = s.int64(5);
            return a;
        });
}

Result<std::vector<OutboxRecord>> Database::outbox_pending(int limit) {
    auto stmt = Statement::prepare(db_.get(), "SELECT " + std::string(outbox_columns) +
                                                  " FROM outbox WHERE delivered_ms IS NULL AND"
                                                  " gave_up_ms IS NULL ORDER BY next_attempt_ms,"
                                                  " created_ms LIMIT ?1");
    if (!stmt) return stmt.error();
    stmt->bind(1, std::int64_t{limit});
    return read_all<OutboxRecord>(db_.get(), *stmt, "store " + path_ + ": reading the outbox",
                                  read_outbox);
}

Result<std::vector<OutboxRecord>> Database::outbox_for(std::string_view sr_id) {
    auto stmt = Statement::prepare(db_.get(), "SELECT " + std::string(outbox_columns) +
                                                  " FROM outbox WHERE sr_id = ?1"
                                                  " ORDER BY created_ms, id");
    if (!stmt) return stmt.error();
    stmt->bind(1, sr_id);
    return read_all<OutboxRecord>(db_.get(), *stmt, "store " + path_ + ": reading the outbox",
                                  read_outbox);
}

Result<std::optional<IdempotencyRecord>> Database::idempotency(std::string_view key) {
    auto stmt = Statement::prepare(db_.get(),
                                   "SELECT key, request, status, body, created_ms"
                                   " FROM idempotency_keys WHERE key = ?1");
    if (!stmt) return stmt.error();
    stmt->bind(1, key);
    return read_one<IdempotencyRecord>(db_.get(), *stmt,
                                       "store " + path_ + ": reading an idempotency key",
                                       [](const Statement& s) {
                                           IdempotencyRecord k;
                                           k.key = s.text(0);
                                           k.request = s.text(1);
                                           k.status = static_cast<int>(s.int64(2));
                                           k.body = s.text(3);
                                           k.created_ms = s.int64(4);
                                           return k;
                                       });
}

Result<std::vector<RolloutRecord>> Database::unfinished_rollouts() {
    auto stmt = Statement::prepare(db_.get(),
                                   "SELECT id, sr_id, status, reason, created_ms, finished_ms,"
                                   " owner FROM rollouts WHERE finished_ms IS NULL"
                                   " ORDER BY created_ms");
    if (!stmt) return stmt.error();
    return read_all<RolloutRecord>(
        db_.get(), *stmt, "store " + path_ + ": reading unfinished rollouts", read_rollout);
}

Result<std::vector<RolloutRecord>> Database::rollouts_for(std::string_view sr_id) {
    auto stmt = Statement::prepare(db_.get(),
                                   "SELECT id, sr_id, status, reason, created_ms, finished_ms,"
                                   " owner FROM rollouts WHERE sr_id = ?1"
                                   " ORDER BY created_ms DESC, id");
    if (!stmt) return stmt.error();
    stmt->bind(1, sr_id);
    return read_all<RolloutRecord>(
        db_.get(), *stmt, "store " + path_ + ": reading rollouts of SR " + std::string(sr_id),
        read_rollout);
}

namespace {
NodeResult read_node_result(const Statement& s, int first) {
    NodeResult r;
    r.rollout_id = s.text(first + 0);
    r.node = s.text(first + 1);
    r.status = s.text(first + 2);
    r.step = s.text(first + 3);
    r.error = s.text(first + 4);
    r.started_ms = s.optional_int64(first + 5);
    r.finished_ms = s.optional_int64(first + 6);
    r.backup_path = s.text(first + 7);
    return r;
}
}  // namespace

Result<std::vector<NodeHistoryRow>> Database::node_histories(std::string_view sr_id,
                                                              const std::vector<std::string>& also) {
    std::string names = "[";
    for (std::size_t i = 0; i < also.size(); ++i) {
        names += i ? "," : "";
        names += "\"";
        for (char c : also[i]) {  // inventory names: no quote or backslash, but be exact anyway
            if (c == '"' || c == '\\') names += '\\';
            names += c;
        }
        names += "\"";
    }
    names += "]";
    auto stmt = Statement::prepare(
        db_.get(),
        "SELECT r.sr_id, r.created_ms, n.rollout_id, n.node, n.status, n.step, n.error,"
        " n.started_ms, n.finished_ms, n.backup_path FROM node_results n JOIN rollouts r ON"
        " r.id = n.rollout_id WHERE n.node IN (SELECT m.node FROM node_results m JOIN rollouts q"
        " ON q.id = m.rollout_id WHERE q.sr_id = ?1) OR n.node IN (SELECT value FROM"
        " json_each(?2)) ORDER BY n.node, r.created_ms, r.id");
    if (!stmt) return stmt.error();
    stmt->bind(1, sr_id);
    stmt->bind(2, std::string_view(names));
    return read_all<NodeHistoryRow>(
        db_.get(), *stmt,
        "store " + path_ + ": reading the node histories of SR " + std::string(sr_id),
        [](const Statement& s) {
            NodeHistoryRow h;
            h.sr_id = s.text(0);
            h.rollout_created_ms = s.int64(1);
            h.result = read_node_result(s, 2);
            return h;
        });
}

Result<std::vector<NodeResult>> Database::node_results(std::string_view rollout_id) {
    auto stmt = Statement::prepare(db_.get(),
                                   "SELECT rollout_id, node, status, step, error, started_ms,"
                                   " finished_ms, backup_path FROM node_results"
                                   " WHERE rollout_id = ?1 ORDER BY node");
    if (!stmt) return stmt.error();
    stmt->bind(1, rollout_id);
    return read_all<NodeResult>(
        db_.get(), *stmt,
        "store " + path_ + ": reading node results of rollout " + std::string(rollout_id),
        [](const Statement& s) { return read_node_result(s, 0); });
}

}  // namespace guardia::store
