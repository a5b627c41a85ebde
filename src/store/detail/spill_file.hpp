// The spill journal's file (format: guardia/store/spill_journal.hpp): opened, locked,
// reserved, written and cleared by the AuditWriter's thread only.
#pragma once

#include "guardia/core/error.hpp"

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace guardia::store::detail {

class SpillFile {
  public:
    // Opens or creates the file (mode 0600) and takes an exclusive, non-blocking flock: two
    // writers on one database (the service and a CLI deploy) must not replay or overwrite
    // each other's journal. Errors name the file; a lock held elsewhere is errc::node_locked.
    static Result<SpillFile> open(std::string path);
    ~SpillFile();
    SpillFile(SpillFile&& other) noexcept;
    SpillFile& operator=(SpillFile&& other) noexcept;
    SpillFile(const SpillFile&) = delete;
    SpillFile& operator=(const SpillFile&) = delete;

    const std::string& path() const noexcept { return path_; }
    bool is_open() const noexcept { return fd_ >= 0; }

    Result<std::string> read_all() const;
    // posix_fallocate of [0, bytes): the blocks are the journal's from now on, whatever else
    // fills the disk. Keeps any content.
    Result<void> reserve(std::size_t bytes);

    struct Written {
        Written() {}
        std::size_t lines = 0;  // leading lines complete on disk (and synced unless error)
        std::optional<Error> error;
    };
    // Writes the lines from offset 0, NULs over what an older content left in
    // [end, stale_end), fsyncs. On a failed write the incomplete line is zeroed, so a reader
    // sees exactly the `lines` complete ones.
    Written write(const std::vector<std::string>& lines, std::size_t stale_end);

    // Back to an empty journal that keeps its room: zeroes [0, used), shrinks a file grown
    // past `reserve_bytes` back to it, fsyncs. Never gives the reserved blocks back.
    Result<void> clear(std::size_t used, std::size_t reserve_bytes);

    // Renames the file to `to` (kept for an operator) and opens a fresh, locked one at path().
    // If the rename fails nothing changes; if only the fresh one fails this is closed.
    Result<void> set_aside(const std::string& to);

  private:
    SpillFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
    Result<void> zero(std::size_t from, std::size_t to);

    std::string path_;
    int fd_ = -1;
};

}  // namespace guardia::store::detail
