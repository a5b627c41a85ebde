// Small measurement helpers shared by the benchmark programs.
#pragma once

#include <sys/resource.h>

namespace guardia::bench {

// CPU seconds (user + system) this process has used so far.
inline double cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

}  // namespace guardia::bench
