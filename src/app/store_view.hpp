// Shared pieces of the store readers (`guardia status`, `history`, `audit --rollout`):
// which database to read, opening it read-only, and time formatting.
#pragma once

#include "cli.hpp"

#include "guardia/store/reader.hpp"

#include <cstdint>
#include <string>

namespace guardia::cli {

// The flags every reader takes: --db FILE, --config FILE, --json.
struct ReaderFlags {
    std::string db, config;
    bool json = false;
    // --db, else store.db of --config FILE, else ./guardia.db (as `guardia deploy`).
    std::string db_path() const;
};
// Reads one of them; false if `flag` is not one.
bool reader_flag(const std::string& flag, Args& args, ReaderFlags& r);

// Opens `db` read-only; a missing file or a file that is not a Guardia store throws
// UsageError naming it.
store::RolloutReader open_reader(const std::string& db);

std::string utc_time(std::int64_t unix_ms);  // 2026-12-05T01:02:03.456Z
std::string seconds_text(std::int64_t ms);   // "12.3 s"
std::string printable(std::string text);      // control characters (newlines...) as spaces

}  // namespace guardia::cli
