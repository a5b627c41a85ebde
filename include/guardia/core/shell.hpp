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
// the output: with coreutils' sha256sum (one small process), else `openssl dgst`; when neither
// is there or neither works, or the answer is not 64 lowercase hex digits: a message on stderr
// and exit 91. `var` must be a plain variable name; the text also sets _gt and _gh.
std::string remote_sha256_script(std::string_view path_word, std::string_view var);
// The same for a file of `file_bytes`: from kOpensslHashFromBytes on, `openssl dgst` is tried
// first and sha256sum is the fallback. coreutils' sha256sum has no SHA extensions; openssl
// hashes faster but is a larger process to start and end. Measured in deploys on the test
// fleet (bench/run-target-cost, the node's CPU; a CPU with SHA-NI): at 1 MiB the hashing
// process is 4.7 ms with sha256sum and 4.3 ms with openssl, yet the node's total rises by
// ~2.6 ms with openssl; at 2 MiB 8.7 against 4.9 ms and the total falls by ~2.7 ms; at 8 MiB
// 32.7 against 10.2 ms, -17 % in all. Without SHA-NI (masked with OPENSSL_ia32cap; perf stat)
// openssl still wins from 2 MiB on (8.8 against 7.6 ms; 8 MiB 33.5 against 24.6).
inline constexpr std::uint64_t kOpensslHashFromBytes = std::uint64_t{2} << 20;
std::string remote_sha256_script(std::string_view path_word, std::string_view var,
                                 std::uint64_t file_bytes);

}  // namespace guardia
