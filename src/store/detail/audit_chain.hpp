// The chain's pieces the writer and the migration share (see guardia/store/audit_chain.hpp).
#pragma once

#include "guardia/core/error.hpp"

#include <sqlite3.h>

#include <cstdint>
#include <string>

namespace guardia::store::detail {

// The newest row of the chain: the next row gets id + 1 and links to hash.
struct ChainTail {
    ChainTail() {}
    std::int64_t id = 0;  // 0: the log is empty
    std::string hash;     // the genesis value when the log is empty
};

// Reads the tail on `db`; call it inside the write transaction that appends to it.
Result<ChainTail> read_chain_tail(sqlite3* db, const std::string& path);

// Migration step: gives every row written before the chain existed its prev_hash and row_hash,
// in id order, and records that in the meta table. Runs inside the migration's transaction.
Result<void> chain_existing_rows(sqlite3* db, const std::string& path);

}  // namespace guardia::store::detail
