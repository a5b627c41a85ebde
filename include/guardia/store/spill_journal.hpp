// The spill journal: where the AuditWriter puts what it could not commit when it stops.
//
// When stop() gives up on a failing store (disk full, I/O errors, a locked or read-only
// file), every item still unwritten goes to this file instead of being lost, and the next
// AuditWriter on the same database replays it into the store before anything else. The file
// lives beside the database (`<db>.spill` unless AuditWriterOptions::spill_path says
// otherwise) and its room is reserved when the writer opens (posix_fallocate), so a disk that
// fills up later cannot take it.
//
// Format, version 1 (UTF-8 text, one JSON object per line, each line ends with '\n'):
//
//   {"guardia_spill":1,"id":"<32 hex digits>"}         the header: version and a unique id
//   {"kind":"audit_event","ts_ms":...,"sr_id":"...",...}
//   {"kind":"node_result","rollout_id":"...",...}
//   ...
//   NUL bytes up to the end of the reserve
//
// `kind` is one of audit_event, node_result, rollout, task, inventory_node, artifact, outbox,
// idempotency; the other members are the record's fields under their names in records.hpp
// (an empty optional is null). The lines are written in place from offset 0 over the
// reserved zeros, then fsynced. A reader stops at the first NUL byte; a line counts only with
// its trailing newline (a torn write leaves an incomplete last line, which is reported, not
// read). JSON escapes every control character, so a record's text never holds a raw NUL or
// newline. Text that is not valid UTF-8 (an stderr tail) is written as is and read back as is.
//
// Replay is exactly once across crashes: each committed batch that holds replayed items also
// records, in the store's meta table (key "spill_replay"), the journal id and how many of its
// items are in the store; a restart after a crash mid-replay skips those.
#pragma once

#include "guardia/store/records.hpp"

#include <cstddef>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace guardia::store {

// One data item the AuditWriter queues (records.hpp), as the journal holds it.
using SpillItem =
    std::variant<AuditEvent, NodeResult, RolloutRecord, TaskRecord, InventoryNodeRecord,
                 ArtifactRecord, OutboxRecord, IdempotencyRecord>;

inline constexpr int spill_format_version = 1;

// The header line, newline included.
std::string spill_header(std::string_view id);
// One item's line, newline included.
std::string spill_line(const SpillItem& item);

// A line the reader could not use: 1-based line number and why.
struct SpillProblem {
    SpillProblem() {}
    std::size_t line = 0;
    std::string reason;
};

struct SpillContents {
    SpillContents() {}
    bool empty = true;             // nothing before the first NUL byte (a fresh or cleared journal)
    int version = 0;               // from the header; 0 when there is no usable header
    std::string id;                // from the header
    std::vector<SpillItem> items;  // every complete, well-formed item line, in order
    std::vector<SpillProblem> problems;  // malformed lines, an incomplete last line, a bad header
    std::size_t used_bytes = 0;          // bytes before the first NUL byte
};

// Reads a journal's bytes (the whole file). Never throws on bad input: what it cannot use is
// in `problems`. With a missing, malformed or newer-version header no item is read (a format
// it does not know is not guessed at).
SpillContents parse_spill(std::string_view bytes);

}  // namespace guardia::store
