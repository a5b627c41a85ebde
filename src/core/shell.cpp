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
    const std::string v(var), p(path_word);
    std::string s = "if command -v sha256sum >/dev/null 2>&1; then ";
    s += v + "=$(sha256sum < " + p + ") || exit 91; elif command -v openssl >/dev/null 2>&1; then ";
    s += v + "=$(openssl dgst -sha256 -r < " + p + ") || exit 91; else echo \"neither sha256sum nor "
         "openssl is installed on the node: cannot verify the transferred file\" >&2; exit 91; fi; ";
    s += v + "=${" + v + "%% *}; ";
    return s;
}

}  // namespace guardia
