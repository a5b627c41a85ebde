#include "guardia/version.hpp"

namespace guardia {
const char* version() noexcept { return "0.1.0"; }
}
