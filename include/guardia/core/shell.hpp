// Building remote shell commands safely.
#pragma once

#include <string>
#include <string_view>

namespace guardia {

// Quotes `value` for POSIX sh so that it is passed as exactly one word, whatever it holds:
// wraps it in single quotes and turns each embedded ' into '\''.
std::string shell_quote(std::string_view value);

// Shell text (ending in "; ") that sets the variable `var` to the lowercase hex sha256 of the
// file `path_word` (a shell word such as "$s"), read from stdin so no file name is escaped in
// the output: with coreutils' sha256sum (one small process), else `openssl dgst`; neither on
// the node: a message saying so on stderr and exit 91. `var` must be a plain variable name.
std::string remote_sha256_script(std::string_view path_word, std::string_view var);

}  // namespace guardia
