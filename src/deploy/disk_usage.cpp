#include "guardia/deploy/disk_usage.hpp"

#include <limits>

namespace guardia::deploy {

std::optional<int> df_use_percent(std::uint64_t blocks, std::uint64_t blocks_free,
                                  std::uint64_t blocks_available) noexcept {
    if (blocks_free > blocks) return std::nullopt;
    const std::uint64_t used = blocks - blocks_free;
    const std::uint64_t usable = used + blocks_available;
    if (usable == 0 || usable < used) return std::nullopt;  // df's "-"; or the sum wrapped
    if (used <= std::numeric_limits<std::uint64_t>::max() / 100) {
        const std::uint64_t used100 = used * 100;
        return static_cast<int>(used100 / usable + (used100 % usable != 0 ? 1 : 0));
    }
    // Beyond 2^64 / 100 blocks df falls back on double; so do we, the same way, so that even
    // there the two agree.
    const double u = static_cast<double>(used);
    const double percent = u * 100 / (u + static_cast<double>(blocks_available));
    const auto whole = static_cast<double>(static_cast<long>(percent));
    return static_cast<int>(whole < percent ? whole + 1 : whole);
}

}  // namespace guardia::deploy
