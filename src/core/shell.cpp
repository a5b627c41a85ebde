#include "guardia/core/shell.hpp"

namespace guardia {

std::string shell_quote(std::string_view value) {
    std::string out;
    out.reserve(value.size() + 2);
    out += '\'';
    for (char c : value) {
        if (c == '\'')
            out += "'\\''";
        else
            out += c;
    }
    out += '\'';
    return out;
}

std::string remote_sha256_script(std::string_view path_word, std::string_view var) {
    return remote_sha256_script(path_word, var, 0);
}

std::string remote_sha256_script(std::string_view path_word, std::string_view var,
                                 std::uint64_t file_bytes) {
    const std::string v(var), p(path_word);
    const bool openssl_first = file_bytes >= kOpensslHashFromBytes;
    // Each tool in turn, if present (`command -v`, a built-in: choosing starts no process)
    // and only until one succeeds: an openssl that is installed but broken (a configuration
    // or provider it cannot load) leaves the work to sha256sum. Whatever answered must be
    // 64 lowercase hex digits, else the file is not judged at all (exit 91): an odd output
    // must not read as a mismatch.
    std::string s = "_gh=; for _gt in ";
    s += openssl_first ? "openssl sha256sum" : "sha256sum openssl";
    s += "; do command -v \"$_gt\" >/dev/null 2>&1 || continue; case $_gt in openssl) _gh=$(openssl "
         "dgst -sha256 -r < " + p + ");; *) _gh=$(sha256sum < " + p + ");; esac && break; _gh=; done; ";
    s += v + "=${_gh%% *}; ";
    s += "case $" + v + " in *[!0-9a-f]*|'') echo \"cannot verify the transferred file: neither "
         "sha256sum nor openssl on the node gave its sha256\" >&2; exit 91;; esac; [ ${#" + v +
         "} -eq 64 ] || { echo \"cannot verify the transferred file: the hashing tool's answer is "
         "not a sha256\" >&2; exit 91; }; ";
    return s;
}

}  // namespace guardia
