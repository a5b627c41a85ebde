#include "guardia/ssh/known_hosts.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

namespace guardia::ssh {
namespace {

std::string base64_encode(std::string_view in) {
    std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(in.data()),
                            static_cast<int>(in.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

bool base64_decode(std::string_view in, std::string& out) {
    if (in.empty() || in.size() % 4 != 0) return false;
    out.assign(3 * in.size() / 4, '\0');
    int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(in.data()),
                            static_cast<int>(in.size()));
    if (n < 0) return false;
    // EVP_DecodeBlock counts padding as zero bytes; drop them.
    std::size_t pad = 0;
    if (in.back() == '=') ++pad;
    if (in.size() >= 2 && in[in.size() - 2] == '=') ++pad;
    out.resize(static_cast<std::size_t>(n) - pad);
    return true;
}

std::string lowercase(std::string_view text) {
    std::string out(text);
    for (char& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

// Glob match with '*' and '?', as OpenSSH's match_pattern (case-insensitive for hosts).
bool glob_match(std::string_view pattern, std::string_view text) {
    std::size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
    auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; };
    while (t < text.size()) {
        if (p < pattern.size() && (pattern[p] == '?' || lower(pattern[p]) == lower(text[t]))) {
            ++p;
            ++t;
        } else if (p < pattern.size() && pattern[p] == '*') {
            star = p++;
            mark = t;
        } else if (star != std::string_view::npos) {
            p = star + 1;
            t = ++mark;
        } else {
            return false;
        }
    }
    while (p < pattern.size() && pattern[p] == '*') ++p;
    return p == pattern.size();
}

std::vector<std::string_view> split_fields(std::string_view line) {
    std::vector<std::string_view> fields;
    std::size_t i = 0;
    while (i < line.size()) {
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
        if (i >= line.size()) break;
        std::size_t j = i;
        while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
        fields.push_back(line.substr(i, j - i));
        i = j;
    }
    return fields;
}

}  // namespace

Result<HostKeyPolicy> parse_host_key_policy(std::string_view text) {
    if (text == "strict") return HostKeyPolicy::strict;
    if (text == "accept-new") return HostKeyPolicy::accept_new;
    return Error(errc::invalid_argument, "host-key policy '" + std::string(text) +
                                             "' is not one of: strict, accept-new");
}

std::string sha256_fingerprint(std::string_view blob) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(blob.data(), blob.size(), digest, &len, EVP_sha256(), nullptr);
    std::string b64 = base64_encode(std::string_view(reinterpret_cast<char*>(digest), len));
    while (!b64.empty() && b64.back() == '=') b64.pop_back();
    return "SHA256:" + b64;
}

std::string known_hosts_name(std::string_view host, std::uint16_t port) {
    if (port == 22) return std::string(host);
    // Appended piece by piece: "[" + std::string(...) makes GCC 12 at -O3 raise a false
    // -Werror=restrict (GCC bug 105329).
    std::string name = "[";
    name += host;
    name += "]:";
    name += std::to_string(port);
    return name;
}

bool KnownHosts::parse_line(std::string_view line, int line_no, Entry& out) {
    auto fields = split_fields(line);
    std::size_t i = 0;
    if (!fields.empty() && fields[0].starts_with('@')) {
        if (fields[0] == "@revoked")
            out.revoked = true;
        else
            return false;  // @cert-authority: certificates are not supported
        ++i;
    }
    if (fields.size() < i + 3) return false;
    std::string_view hosts = fields[i], type = fields[i + 1], key = fields[i + 2];
    if (hosts.starts_with("|1|")) {
        auto rest = hosts.substr(3);
        auto bar = rest.find('|');
        if (bar == std::string_view::npos) return false;
        if (!base64_decode(rest.substr(0, bar), out.hashed_salt)) return false;
        if (!base64_decode(rest.substr(bar + 1), out.hashed_digest)) return false;
    } else {
        std::size_t start = 0;
        while (start <= hosts.size()) {
            auto comma = hosts.find(',', start);
            auto pat = hosts.substr(start, comma == std::string_view::npos ? std::string_view::npos
                                                                           : comma - start);
            if (!pat.empty()) out.patterns.emplace_back(pat);
            if (comma == std::string_view::npos) break;
            start = comma + 1;
        }
        if (out.patterns.empty()) return false;
    }
    if (!base64_decode(key, out.key_blob)) return false;
    out.key_type = std::string(type);
    out.line = line_no;
    return true;
}

void KnownHosts::parse_text(std::string_view text) {
    std::size_t pos = 0;
    while (pos < text.size()) {
        auto nl = text.find('\n', pos);
        auto line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos
                                                                  : nl - pos);
        pos = nl == std::string_view::npos ? text.size() : nl + 1;
        ++line_count_;
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
        auto first = line.find_first_not_of(" \t");
        if (first == std::string_view::npos || line[first] == '#') continue;
        Entry e;
        if (parse_line(line.substr(first), line_count_, e)) {
            entries_.push_back(std::move(e));
            index_entry(entries_.size() - 1);
        } else
            ++skipped_lines_;
    }
}

Result<std::shared_ptr<KnownHosts>> KnownHosts::load(const std::string& path) {
    auto kh = std::make_shared<KnownHosts>();
    kh->path_ = path;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        if (errno == ENOENT) return kh;
        return Error(errc::local_io_failed,
                     "cannot read known_hosts " + path + ": " + std::strerror(errno));
    }
    std::ostringstream buffer;
    buffer << in.rdbuf();
    kh->parse_text(buffer.str());
    return kh;
}

std::shared_ptr<KnownHosts> KnownHosts::from_text(std::string_view text) {
    auto kh = std::make_shared<KnownHosts>();
    kh->parse_text(text);
    return kh;
}

bool KnownHosts::entry_matches(const Entry& e, const std::string& name) const {
    if (!e.hashed_salt.empty()) {
        // ssh lower-cases the host name before it looks it up or hashes it into known_hosts
        // (ssh.c: lowercase(host)): hash the same lower-cased name, or an entry written for
        // "node-a" would never match a node configured as "Node-A".
        const std::string lower = lowercase(name);
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        HMAC(EVP_sha1(), e.hashed_salt.data(), static_cast<int>(e.hashed_salt.size()),
             reinterpret_cast<const unsigned char*>(lower.data()), lower.size(), mac, &len);
        return len == e.hashed_digest.size() &&
               std::memcmp(mac, e.hashed_digest.data(), len) == 0;
    }
    bool matched = false;
    for (const auto& pat : e.patterns) {
        if (pat.starts_with('!')) {
            if (glob_match(std::string_view(pat).substr(1), name)) return false;
        } else if (glob_match(pat, name)) {
            matched = true;
        }
    }
    return matched;
}

HostKeyCheck KnownHosts::check(std::string_view host, std::uint16_t port,
                               const HostKey& key) const {
    std::lock_guard lock(mutex_);
    return check_locked(host, port, key);
}

Result<HostKeyCheck> KnownHosts::verify(std::string_view host, std::uint16_t port,
                                        const HostKey& key, HostKeyPolicy policy) {
    std::lock_guard lock(mutex_);
    auto result = check_locked(host, port, key);
    if (result.verdict == HostKeyVerdict::unknown && policy == HostKeyPolicy::accept_new) {
        if (auto added = add_locked(host, port, key); !added) return added.error();
        result.verdict = HostKeyVerdict::recorded;
    }
    return result;
}

HostKeyCheck KnownHosts::check_locked(std::string_view host, std::uint16_t port,
                                      const HostKey& key) const {
    const std::string name = known_hosts_name(host, port);
    HostKeyCheck result;
    const Entry* conflicting = nullptr;    // same type, other key
    const Entry* other_type = nullptr;     // the host is known by a key of another type
    bool known = false;
    for (std::size_t index : candidates(name)) {
        const Entry& e = entries_[index];
        if (!entry_matches(e, name) && !(e.revoked && e.key_blob == key.blob)) continue;
        if (e.revoked) {
            if (e.key_blob == key.blob) {
                result.verdict = HostKeyVerdict::revoked;
                result.known_type = e.key_type;
                result.known_fingerprint = sha256_fingerprint(e.key_blob);
                result.known_line = e.line;
                return result;
            }
            continue;
        }
        if (e.key_type == key.type && e.key_blob == key.blob)
            known = true;
        else if (e.key_type == key.type && conflicting == nullptr)
            conflicting = &e;
        else if (e.key_type != key.type && other_type == nullptr)
            other_type = &e;
    }
    // A matching entry wins over a stale one of the same type, as in OpenSSH. A host known by
    // another key type only is a change too: the handshake asks for the known types first, so
    // a server that offers none of them is not the one we know (or was rebuilt: check first).
    const Entry* evidence = conflicting != nullptr ? conflicting : other_type;
    if (known) {
        result.verdict = HostKeyVerdict::known;
    } else if (evidence != nullptr) {
        result.verdict = HostKeyVerdict::changed;
        result.known_type = evidence->key_type;
        result.known_fingerprint = sha256_fingerprint(evidence->key_blob);
        result.known_line = evidence->line;
    }
    return result;
}

std::vector<std::string> KnownHosts::key_types_for(std::string_view host,
                                                   std::uint16_t port) const {
    std::lock_guard lock(mutex_);
    const std::string name = known_hosts_name(host, port);
    std::vector<std::string> types;
    for (std::size_t index : candidates(name)) {
        const Entry& e = entries_[index];
        if (e.revoked || !entry_matches(e, name)) continue;
        if (std::find(types.begin(), types.end(), e.key_type) == types.end())
            types.push_back(e.key_type);
    }
    return types;
}

Result<void> KnownHosts::add(std::string_view host, std::uint16_t port, const HostKey& key) {
    std::lock_guard lock(mutex_);
    return add_locked(host, port, key);
}

Result<void> KnownHosts::add_locked(std::string_view host, std::uint16_t port, const HostKey& key) {
    Entry e;
    e.patterns.push_back(known_hosts_name(host, port));
    e.key_type = key.type;
    e.key_blob = key.blob;
    e.line = ++line_count_;
    if (!path_.empty()) {
        std::string line = e.patterns.front() + " " + key.type + " " + base64_encode(key.blob) + "\n";
        // One append-mode write per line: concurrent writers never interleave within a line.
        int fd = ::open(path_.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
            return Error(errc::local_io_failed,
                         "cannot append to known_hosts " + path_ + ": " + std::strerror(errno));
        // A file not ending in a newline would glue our entry onto its last line.
        struct stat st {};
        if (::fstat(fd, &st) == 0 && st.st_size > 0) {
            char last = '\n';
            if (::pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n') {
                std::string glued = "\n";  // not line.insert(0, ...): GCC bug 105329 at -O3
                glued += line;
                line = std::move(glued);
            }
        }
        ssize_t n = ::write(fd, line.data(), line.size());
        int saved = errno;
        ::close(fd);
        if (n != static_cast<ssize_t>(line.size()))
            return Error(errc::local_io_failed,
                         "cannot append to known_hosts " + path_ + ": " + std::strerror(saved));
    }
    entries_.push_back(std::move(e));
    index_entry(entries_.size() - 1);
    return {};
}

void KnownHosts::index_entry(std::size_t index) {
    const Entry& e = entries_[index];
    const bool literal =
        !e.revoked && e.hashed_salt.empty() &&
        std::none_of(e.patterns.begin(), e.patterns.end(), [](const std::string& p) {
            return p.starts_with('!') || p.find_first_of("*?") != std::string::npos;
        });
    if (!literal) {
        scanned_.push_back(index);
        return;
    }
    for (const auto& pattern : e.patterns) {
        auto& indices = by_name_[lowercase(pattern)];
        if (indices.empty() || indices.back() != index) indices.push_back(index);
    }
}

std::vector<std::size_t> KnownHosts::candidates(const std::string& name) const {
    std::vector<std::size_t> out;
    auto named = by_name_.find(lowercase(name));
    if (named == by_name_.end()) return scanned_;
    out.reserve(named->second.size() + scanned_.size());
    std::merge(named->second.begin(), named->second.end(), scanned_.begin(), scanned_.end(),
               std::back_inserter(out));
    return out;
}

std::size_t KnownHosts::size() const {
    std::lock_guard lock(mutex_);
    return entries_.size();
}

}  // namespace guardia::ssh
