#include "guardia/store/audit_chain.hpp"

#include "detail/audit_chain.hpp"
#include "detail/sqlite.hpp"
#include "guardia/core/digest.hpp"
#include "guardia/store/database.hpp"

#include <chrono>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

namespace guardia::store {

using detail::sqlite_error;
using detail::Statement;

namespace {

constexpr std::string_view genesis =
    "0000000000000000000000000000000000000000000000000000000000000000";

// One domain string per encoding; an encoding, once rows carry it, never changes (rows
// already written must keep verifying). v1: the columns of schema 3. v2: v1's columns, then the
// principal (schema 4), used only for rows whose principal is not empty, so that every row
// without one, older or newer, keeps v1's bytes exactly.
constexpr std::string_view domain_v1 = "guardia.audit_log.v1";
constexpr std::string_view domain_v2 = "guardia.audit_log.v2";

// The row, its hash input encoded so that no two different rows give the same bytes: a type
// tag per field ('I' integer, 'N' null, 'T' text), integers as 8 bytes big-endian, text
// prefixed with its length as 8 bytes big-endian. A separator-based encoding would let
// "a|b" + "c" collide with "a" + "b|c".
class Encoder {
  public:
    void integer(std::int64_t v) {
        out_ += 'I';
        put64(static_cast<std::uint64_t>(v));
    }
    void optional(std::optional<std::int64_t> v) {
        if (v)
            integer(*v);
        else
            out_ += 'N';
    }
    void text(std::string_view s) {
        out_ += 'T';
        put64(s.size());
        out_ += s;
    }
    const std::string& bytes() const noexcept { return out_; }

  private:
    void put64(std::uint64_t v) {
        for (int shift = 56; shift >= 0; shift -= 8) out_ += static_cast<char>((v >> shift) & 0xff);
    }
    std::string out_;
};

// The columns read_row() reads, those of schema 3: chain_existing_rows() runs as migration 3,
// before migration 4 adds `principal` (rows of that time have none), so it must not name it.
constexpr std::string_view row_columns =
    "id, ts_ms, sr_id, rollout_id, node, step, event, exit_code, duration_ms, detail";

AuditRow read_row(const Statement& s) {
    AuditRow row;
    row.id = s.int64(0);
    row.ts_ms = s.int64(1);
    row.sr_id = s.text(2);
    row.rollout_id = s.text(3);
    row.node = s.text(4);
    row.step = s.text(5);
    row.event = s.text(6);
    if (auto code = s.optional_int64(7)) row.exit_code = static_cast<int>(*code);
    row.duration_ms = s.optional_int64(8);
    row.detail = s.text(9);
    return row;
}

bool is_hash(std::string_view h) {
    if (h.size() != 64) return false;
    for (char c : h)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

std::string_view audit_chain_genesis() noexcept {
    return genesis;
}

std::string audit_row_hash(const AuditRow& row, std::string_view prev_hash_hex) {
    Encoder e;
    e.text(row.principal.empty() ? domain_v1 : domain_v2);
    e.integer(row.id);
    e.integer(row.ts_ms);
    e.text(row.sr_id);
    e.text(row.rollout_id);
    e.text(row.node);
    e.text(row.step);
    e.text(row.event);
    e.optional(row.exit_code ? std::optional<std::int64_t>(*row.exit_code) : std::nullopt);
    e.optional(row.duration_ms);
    e.text(row.detail);
    if (!row.principal.empty()) e.text(row.principal);
    e.text(prev_hash_hex);
    return sha256_hex(e.bytes());
}

std::string_view to_string(ChainFault fault) noexcept {
    switch (fault) {
        case ChainFault::altered:
            return "altered";
        case ChainFault::deleted:
            return "deleted";
        case ChainFault::inserted:
            return "inserted";
    }
    return "unknown";
}

namespace detail {

Result<ChainTail> read_chain_tail(sqlite3* db, const std::string& path) {
    auto stmt =
        Statement::prepare(db, "SELECT id, row_hash FROM audit_log ORDER BY id DESC LIMIT 1");
    if (!stmt) return stmt.error();
    ChainTail tail;
    tail.hash = std::string(genesis);
    int rc = stmt->step();
    if (rc == SQLITE_ROW) {
        tail.id = stmt->int64(0);
        tail.hash = stmt->text(1);
    } else if (rc != SQLITE_DONE) {
        return sqlite_error(db, rc, "store " + path + ": reading the end of the audit chain");
    }
    return tail;
}

Result<void> chain_existing_rows(sqlite3* db, const std::string& path) {
    const std::string what = "store " + path + ": chaining the existing audit rows";
    auto select =
        Statement::prepare(db, "SELECT " + std::string(row_columns) +
                                   " FROM audit_log WHERE id > ?1 ORDER BY id LIMIT 1000");
    if (!select) return select.error();
    auto update =
        Statement::prepare(db, "UPDATE audit_log SET prev_hash = ?1, row_hash = ?2 WHERE id = ?3");
    if (!update) return update.error();

    // In pages: a large log is never held in memory at once, and no row is updated while a
    // statement is still stepping over its table.
    std::string prev(genesis);
    std::int64_t after = std::numeric_limits<std::int64_t>::min();
    std::int64_t count = 0, first = 0, last = 0;
    for (;;) {
        select->bind(1, after);
        std::vector<AuditRow> page;
        int rc;
        while ((rc = select->step()) == SQLITE_ROW) page.push_back(read_row(*select));
        select->reset();
        if (rc != SQLITE_DONE) return sqlite_error(db, rc, what);
        if (page.empty()) break;
        for (const auto& row : page) {
            std::string hash = audit_row_hash(row, prev);
            update->bind(1, prev);
            update->bind(2, hash);
            update->bind(3, row.id);
            rc = update->step();
            update->reset();
            if (rc != SQLITE_DONE) return sqlite_error(db, rc, what);
            if (count++ == 0) first = row.id;
            last = row.id;
            prev = std::move(hash);
        }
        after = page.back().id;
    }

    auto meta = Statement::prepare(db,
                                   "INSERT OR REPLACE INTO meta (key, value)"
                                   " VALUES ('audit_chain', ?1)");
    if (!meta) return meta.error();
    std::string note = "sha256 v1 since " + std::to_string(now_ms()) +
                       " ms: " + std::to_string(count) + " earlier rows chained at migration";
    if (count > 0) note += " (ids " + std::to_string(first) + ".." + std::to_string(last) + ")";
    meta->bind(1, note);
    if (int rc = meta->step(); rc != SQLITE_DONE) return sqlite_error(db, rc, what);
    return {};
}

}  // namespace detail

Result<ChainReport> verify_audit_chain(const std::string& path) {
    auto db = Database::open_read_only(path);
    if (!db) return db.error();
    auto version = db->query_int64("PRAGMA user_version");
    if (!version) return version.error();
    if (*version < 3)
        return Error(errc::invalid_argument,
                     "SQLite store " + path + ": schema version " + std::to_string(*version) +
                         " has no audit chain yet; any guardia command that opens it with --db"
                         " (or guardia serve) migrates it and chains the existing rows");

    sqlite3* h = db->native_handle();
    const std::string what = "store " + path + ": reading the audit chain";
    // A file still at schema 3 (verify never migrates) has no principal column: its rows
    // have none, so '' is what they hash with.
    const std::string principal = *version >= 4 ? "principal" : "''";
    // One statement: one consistent snapshot even while a writer appends (WAL).
    auto stmt = Statement::prepare(h, "SELECT " + std::string(row_columns) + ", " + principal +
                                          ", prev_hash, row_hash FROM audit_log ORDER BY id");
    if (!stmt) return stmt.error();

    ChainReport report;
    std::string expected_prev(genesis);  // the stored row_hash of the row before
    std::int64_t previous_id = 0;
    auto broken = [&](ChainFault fault, std::int64_t id, std::string message) {
        ChainBreak b;
        b.fault = fault;
        b.row_id = id;
        b.previous_id = previous_id;
        b.message = std::move(message);
        report.first_break = std::move(b);
    };
    int rc;
    while ((rc = stmt->step()) == SQLITE_ROW) {
        AuditRow row = read_row(*stmt);
        row.principal = stmt->text(10);
        std::string prev_hash = stmt->text(11);
        std::string row_hash = stmt->text(12);
        ++report.rows;
        if (!report.first_id) report.first_id = row.id;
        report.last_id = row.id;
        report.last_hash = row_hash;
        if (report.first_break) {
            // Keep counting rows and tracking the tail; the first break is the one reported.
            continue;
        }
        const std::string id = std::to_string(row.id);
        const std::string before =
            previous_id == 0 ? "the genesis value" : "row " + std::to_string(previous_id);
        const bool hash_ok = is_hash(row_hash) && audit_row_hash(row, prev_hash) == row_hash;
        const bool links = prev_hash == expected_prev;
        const std::int64_t expected_id = previous_id + 1;
        if (!hash_ok && links && is_hash(row_hash)) {
            broken(ChainFault::altered, row.id,
                   "row " + id + " was altered: its content no longer matches its row_hash");
        } else if (!hash_ok) {
            broken(ChainFault::inserted, row.id,
                   "row " + id +
                       " was inserted outside the chain: its row_hash does not match"
                       " its content and its prev_hash does not match " +
                       before);
        } else if (row.id > expected_id) {
            broken(ChainFault::deleted, row.id,
                   "rows deleted before row " + id + ": ids " + std::to_string(expected_id) + ".." +
                       std::to_string(row.id - 1) + " are missing");
        } else if (!links) {
            broken(ChainFault::inserted, row.id,
                   "row " + id + " does not link to " + before +
                       ": its prev_hash differs from that row's row_hash, so " + before +
                       " (or row " + id + ") was inserted or replaced with a recomputed hash");
        }
        previous_id = row.id;
        expected_prev = row_hash;
    }
    if (rc != SQLITE_DONE) return sqlite_error(h, rc, what);
    return report;
}

}  // namespace guardia::store
