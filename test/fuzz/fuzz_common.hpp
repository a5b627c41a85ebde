// Helpers shared by the fuzz targets: failing loudly, and CPU-time budgets per input.
#pragma once

#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace guardia::fuzz {

// A property does not hold: say which, and abort (libFuzzer saves the input as crash-*).
[[noreturn]] inline void fail(const char* property, std::string_view detail = {}) {
    std::fprintf(stderr, "\n== property violated: %s\n", property);
    if (!detail.empty())
        std::fprintf(stderr, "== %.*s\n", static_cast<int>(detail.size()), detail.data());
    std::abort();
}

#define GUARDIA_FUZZ_CHECK(cond, detail) \
    do {                                 \
        if (!(cond)) ::guardia::fuzz::fail(#cond, (detail)); \
    } while (0)

// CPU time of this thread: unlike wall-clock time it does not count the time the machine
// (shared, loaded CI runners) gave to others, so a budget can be tight without being flaky.
inline double thread_cpu_ms() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

// A budget in milliseconds from the environment (`name`), else `fallback`.
inline double budget_ms(const char* name, double fallback) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? std::atof(v) : fallback;
}

// True if `s` holds a byte that must never reach a log line or an error message raw.
inline bool has_control(std::string_view s) {
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) return true;
    }
    return false;
}

// True if `s` is well-formed UTF-8 (Unicode table 3-7), as JSON clients require of the
// messages that reach them in API answers. Written apart from the code under test.
inline bool is_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                                  : c >= 0xF0 && c <= 0xF4  ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        for (std::size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
        const auto c1 = static_cast<unsigned char>(n > 1 ? s[i + 1] : 0);
        if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) || (c == 0xF0 && c1 < 0x90) ||
            (c == 0xF4 && c1 > 0x8F))
            return false;
        i += n;
    }
    return true;
}

}  // namespace guardia::fuzz
