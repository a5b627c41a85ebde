#include "guardia/version.hpp"

#ifndef GUARDIA_GIT_COMMIT
#define GUARDIA_GIT_COMMIT "unknown"
#endif

namespace guardia {
const char* version() noexcept {
    return "0.1.0";
}
const char* build_commit() noexcept {
    return GUARDIA_GIT_COMMIT;
}
}  // namespace guardia
