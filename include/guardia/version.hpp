#pragma once

namespace guardia {
const char* version() noexcept;
// The git commit the binary was configured from (CMake, at configure time), or "unknown"
// when the source tree was not a git checkout.
const char* build_commit() noexcept;
}
