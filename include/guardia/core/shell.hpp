// Building remote shell commands safely.
#pragma once

#include <cstdint>
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
// The same for a file of `file_bytes`: from kOpensslHashFromBytes on, `openssl dgst` is tried
// first and sha256sum is the fallback. openssl costs more to start (~3 ms: libcrypto, its
// configuration) but hashes 2x (software) to 6x (SHA-NI) faster than coreutils' sha256sum,
// which has no SHA extensions: measured per MiB 4 ms against 0.7 ms with SHA-NI; the two meet
// at about 1 MiB with SHA-NI and 2 MiB without.
inline constexpr std::uint64_t kOpensslHashFromBytes = std::uint64_t{2} << 20;
std::string remote_sha256_script(std::string_view path_word, std::string_view var,
                                 std::uint64_t file_bytes);

}  // namespace guardia
