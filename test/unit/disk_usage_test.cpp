#include "guardia/deploy/disk_usage.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>

using guardia::deploy::df_use_percent;

TEST_CASE("disk usage: df -P's Capacity from statvfs figures") {
    // Exact percentages.
    CHECK(df_use_percent(100, 100, 100) == 0);
    CHECK(df_use_percent(100, 50, 50) == 50);
    CHECK(df_use_percent(100, 0, 0) == 100);
    // Any remainder rounds up: 1 block used of 1,000 is 1 %, as df prints it.
    CHECK(df_use_percent(1000, 999, 999) == 1);
    CHECK(df_use_percent(1000, 100, 100) == 90);
    CHECK(df_use_percent(1000, 99, 99) == 91);
    // Root's reserve counts as neither used nor available: used / (used + available).
    // ext4 with 5 % reserved, 80 % used: 800 / (800 + 150) = 84.2 -> 85.
    CHECK(df_use_percent(1000, 200, 150) == 85);
    // Full for users while root's reserve is left: 100 %.
    CHECK(df_use_percent(1000, 50, 0) == 100);
    // Figures read off a real ext4 (`stat -f /`: Total 66053021, Free 61553494, Available
    // 20584770 blocks), for which `df -P /` printed 18 %.
    CHECK(df_use_percent(66053021, 61553494, 20584770) == 18);
}

TEST_CASE("disk usage: no answer where df prints '-' or the figures cannot be") {
    CHECK_FALSE(df_use_percent(0, 0, 0).has_value());      // a filesystem of no size (proc, sysfs)
    CHECK_FALSE(df_use_percent(10, 11, 11).has_value());   // more free than blocks
    constexpr auto max = std::numeric_limits<std::uint64_t>::max();
    CHECK_FALSE(df_use_percent(max, 0, max).has_value());  // used + available wraps
}

TEST_CASE("disk usage: huge filesystems take df's floating-point path") {
    constexpr auto max = std::numeric_limits<std::uint64_t>::max();
    CHECK(df_use_percent(max, 0, 0) == 100);
    CHECK(df_use_percent(max, max / 2, 0) == 100);
    // 3 * 2^62 used of 2^64 - 1 is a hair over 75 %; in double, as df computes it, exactly 75.
    CHECK(df_use_percent(max, max / 4, max / 4) == 75);
}
