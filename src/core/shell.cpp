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
    struct Tool {
        const char* name;
        std::string command;
    };
    const Tool sha256sum{"sha256sum", "sha256sum < " + p};
    const Tool openssl{"openssl", "openssl dgst -sha256 -r < " + p};
    const bool openssl_first = file_bytes >= kOpensslHashFromBytes;
    const Tool& first = openssl_first ? openssl : sha256sum;
    const Tool& second = openssl_first ? sha256sum : openssl;
    // `command -v` is a shell built-in: choosing the tool starts no process.
    std::string s = "if command -v ";
    s += first.name;
    s += " >/dev/null 2>&1; then ";
    s += v + "=$(" + first.command + ") || exit 91; elif command -v ";
    s += second.name;
    s += " >/dev/null 2>&1; then ";
    s += v + "=$(" + second.command + ") || exit 91; else echo \"neither sha256sum nor "
         "openssl is installed on the node: cannot verify the transferred file\" >&2; exit 91; fi; ";
    s += v + "=${" + v + "%% *}; ";
    return s;
}

}  // namespace guardia
