// The audit log's hash chain: each audit_log row carries prev_hash (the row_hash of the row
// before it, or the genesis value for the first row) and row_hash, a SHA-256 over an
// unambiguous encoding of every column of the row and its prev_hash. The AuditWriter computes
// them inside the transaction that inserts the row, holding the write lock, so two writers
// (threads or processes) can never fork the chain.
//
// What it proves: any change to a row's content, any row deleted from the middle or the
// head, and any row inserted by hand (without recomputing every later hash) is found by
// verify_audit_chain(). What it cannot prove: that the newest rows were not deleted (a chain
// ends wherever it ends; anchor the last id and hash elsewhere), nor anything against someone
// who rewrites the whole chain from the forged row on (there is no secret key).
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/store/records.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace guardia::store {

// Hex SHA-256 the first row chains to: 64 zeros.
std::string_view audit_chain_genesis() noexcept;

// Hex SHA-256 of the row's columns (id, ts_ms, sr_id, rollout_id, node, step, event,
// exit_code, duration_ms, detail, in that order), then principal when it is not empty, and
// `prev_hash_hex`. Each field is encoded with a type tag and, for text, a length prefix: no two
// different rows encode alike. A row with an empty principal hashes exactly as before the
// principal existed (domain "guardia.audit_log.v1"), so rows already written still verify; a
// row with one uses the domain "guardia.audit_log.v2" and its principal follows detail, so
// setting, changing or clearing a row's principal changes its hash.
std::string audit_row_hash(const AuditRow& row, std::string_view prev_hash_hex);

// What is wrong with the first row that breaks the chain.
enum class ChainFault {
    altered,   // its content no longer matches its row_hash; its link to the row before holds
    deleted,   // rows are missing before it (a gap in the ids, or its prev_hash names a row
               // that is no longer there); the row itself is intact
    inserted,  // not written by Guardia's chain: no valid hash and no link to the row before,
               // or a valid hash that links to a row that is not its predecessor
};
std::string_view to_string(ChainFault fault) noexcept;

struct ChainBreak {
    ChainBreak() {}
    ChainFault fault = ChainFault::altered;
    std::int64_t row_id = 0;       // the first row found wrong
    std::int64_t previous_id = 0;  // the row before it in id order; 0 if it is the first
    std::string message;           // one sentence for operators
};

struct ChainReport {
    ChainReport() {}
    std::int64_t rows = 0;  // rows checked (all rows, even after a break)
    std::optional<std::int64_t> first_id;
    std::optional<std::int64_t> last_id;    // for external anchoring: the chain cannot see
    std::string last_hash;                  // rows deleted after this one
    std::optional<ChainBreak> first_break;  // empty: the chain is intact
};

// Walks the chain of the database file `path`, opened read-only (never created, never
// migrated: migrating would chain whatever was tampered with). Errors (Result) when the file
// is missing, not SQLite, not a Guardia store, or written before the chain existed; each
// message names the file. A broken chain is not an error: it is the report's first_break.
Result<ChainReport> verify_audit_chain(const std::string& path);

}  // namespace guardia::store
