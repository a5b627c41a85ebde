#include "guardia/core/json_input.hpp"

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/parse.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <optional>
#include <set>
#include <vector>

namespace guardia {

namespace json = boost::json;

namespace {

// Length of the well-formed UTF-8 sequence that starts `s` (Unicode table 3-7: no overlong
// form, no surrogate, nothing above U+10FFFF), or 0 if none does.
std::size_t utf8_sequence(std::string_view s) {
    auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
    const unsigned char c = byte(0);
    if (c < 0x80) return 1;
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (s.size() < n || byte(1) < lo || byte(1) > hi) return 0;
    for (std::size_t i = 2; i < n; ++i)
        if ((byte(i) & 0xC0) != 0x80) return 0;
    return n;
}

}  // namespace

std::string printable(std::string_view s) {
    constexpr std::size_t max_bytes = 64;
    std::string out;
    std::size_t i = 0;
    while (i < s.size() && i < max_bytes) {
        const auto u = static_cast<unsigned char>(s[i]);
        const std::size_t n = utf8_sequence(s.substr(i));
        if (n == 0 || u < 0x20 || u == 0x7f) {
            out += '?';
            ++i;
        } else if (i + n > max_bytes) {
            break;  // never cut a character in two
        } else {
            out.append(s.substr(i, n));
            i += n;
        }
    }
    if (i < s.size()) out += "...";
    return out;
}

namespace {

// "3:17": 1-based line and column of byte `offset`; columns count UTF-8 characters.
std::string line_column(std::string_view text, std::size_t offset) {
    offset = std::min(offset, text.size());
    std::size_t line = 1, column = 1;
    for (std::size_t i = 0; i < offset; ++i) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (c == '\n') {
            ++line;
            column = 1;
        } else if ((c & 0xC0) != 0x80) {  // not a UTF-8 continuation byte
            ++column;
        }
    }
    return std::to_string(line) + ":" + std::to_string(column);
}

// ------------------------------------------------------------------ syntax pass
//
// boost::json::value keeps the last of duplicate keys silently; "tier": 1, ..., "tier": 3
// would be a quiet surprise. This first pass finds syntax errors and duplicate keys with
// their position; the second (boost::json::parse) builds the value.

class DuplicateKeyFinder {
  public:
    static constexpr std::size_t max_object_size = std::size_t(-1);
    static constexpr std::size_t max_array_size = std::size_t(-1);
    static constexpr std::size_t max_key_size = std::size_t(-1);
    static constexpr std::size_t max_string_size = std::size_t(-1);

    bool on_document_begin(json::error_code&) { return true; }
    bool on_document_end(json::error_code&) { return true; }
    bool on_object_begin(json::error_code&) {
        keys_.emplace_back();
        return true;
    }
    bool on_object_end(std::size_t, json::error_code&) {
        keys_.pop_back();
        return true;
    }
    bool on_array_begin(json::error_code&) { return true; }
    bool on_array_end(std::size_t, json::error_code&) { return true; }
    bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
        key_.append(s.data(), s.size());
        return true;
    }
    bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
        key_.append(s.data(), s.size());
        if (!keys_.back().insert(key_).second) {
            duplicate_ = std::move(key_);
            ec = make_error_code(errc::invalid_argument);
            return false;
        }
        key_.clear();
        return true;
    }
    bool on_string_part(json::string_view, std::size_t, json::error_code&) { return true; }
    bool on_string(json::string_view, std::size_t, json::error_code&) { return true; }
    bool on_number_part(json::string_view, json::error_code&) { return true; }
    bool on_int64(std::int64_t, json::string_view, json::error_code&) { return true; }
    bool on_uint64(std::uint64_t, json::string_view, json::error_code&) { return true; }
    bool on_double(double, json::string_view, json::error_code&) { return true; }
    bool on_bool(bool, json::error_code&) { return true; }
    bool on_null(json::error_code&) { return true; }
    bool on_comment_part(json::string_view, json::error_code&) { return true; }
    bool on_comment(json::string_view, json::error_code&) { return true; }

    const std::optional<std::string>& duplicate() const { return duplicate_; }

  private:
    std::vector<std::set<std::string, std::less<>>> keys_;  // one per open object
    std::string key_;
    std::optional<std::string> duplicate_;
};

Result<void> check_syntax(std::string_view text, std::string_view source) {
    json::basic_parser<DuplicateKeyFinder> parser{json::parse_options{}};
    json::error_code ec;
    std::size_t n = parser.write_some(false, text.data(), text.size(), ec);
    if (!ec && n < text.size()) ec = json::error::extra_data;
    if (!ec) return {};
    auto where = [&](std::size_t offset) {
        return std::string(source) + ":" + line_column(text, offset) + ": ";
    };
    if (const auto& key = parser.handler().duplicate()) {
        // The parser stops at the key's closing quote; point at its opening one.
        std::size_t open = std::min(n, text.size());
        if (open > 0) --open;
        while (open > 0 && !(text[open] == '"' && text[open - 1] != '\\')) --open;
        return Error(errc::invalid_argument,
                     where(open) + "duplicate key '" + printable(*key) + "'");
    }
    return Error(errc::invalid_argument, where(n) + "invalid JSON: " + ec.message());
}

}  // namespace

Result<boost::json::value> parse_json_document(std::string_view text, std::string_view source) {
    if (auto r = check_syntax(text, source); !r) return r.error();
    json::error_code ec;
    json::value root = json::parse(json::string_view(text.data(), text.size()), ec);
    if (ec)
        return Error(errc::invalid_argument,
                     std::string(source) + ": invalid JSON: " + ec.message());
    return root;
}

Result<std::string> read_text_file(const std::string& path, std::uintmax_t max_bytes,
                                   std::string_view what) {
    auto fail = [&](const std::string& why) {
        return Error(errc::local_io_failed,
                     "cannot read " + std::string(what) + " '" + path + "': " + why);
    };
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(std::strerror(errno));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) return fail(std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return fail("not a regular file");
    const std::string too_large = "larger than " + std::to_string(max_bytes >> 20) + " MiB";
    if (static_cast<std::uintmax_t>(st.st_size) > max_bytes) return fail(too_large);
    std::string text;
    std::array<char, 65536> buf;
    for (;;) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail(std::strerror(errno));
        if (n == 0) break;
        text.append(buf.data(), static_cast<std::size_t>(n));
        if (text.size() > max_bytes) return fail(too_large);
    }
    return text;
}

}  // namespace guardia
