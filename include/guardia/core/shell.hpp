// Building remote shell commands safely.
#pragma once

#include <string>
#include <string_view>

namespace guardia {

// Quotes `value` for POSIX sh so that it is passed as exactly one word, whatever it holds:
// wraps it in single quotes and turns each embedded ' into '\''.
std::string shell_quote(std::string_view value);

}  // namespace guardia
