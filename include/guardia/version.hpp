#pragma once

namespace guardia {
const char* version() noexcept;
}
