// The pre-check's disk usage, computed from statvfs figures the way `df -P` prints its
// "Capacity" column, so that a threshold means the same whether the node's usage was read over
// SFTP (no process on the node) or by running df. Pure.
#pragma once

#include <cstdint>
#include <optional>

namespace guardia::deploy {

// Percent of the space an unprivileged user can have that is in use, rounded up (coreutils df:
// used = blocks - blocks_free; used * 100 / (used + blocks_available), any remainder adds one).
// nullopt where df prints "-" (a filesystem of no usable size) and for inconsistent figures
// (more free than there are blocks).
std::optional<int> df_use_percent(std::uint64_t blocks, std::uint64_t blocks_free,
                                  std::uint64_t blocks_available) noexcept;

}  // namespace guardia::deploy
