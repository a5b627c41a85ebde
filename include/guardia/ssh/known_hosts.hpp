// Host-key verification against an OpenSSH known_hosts file.
//
// Understands what OpenSSH writes and reads: comma-separated host patterns with `*`/`?`
// wildcards and `!` negation, `[host]:port` for non-default ports, hashed entries
// (`|1|salt|hmac` of the lower-cased name, as ssh writes them), `@revoked` markers (`@cert-authority` lines are ignored: no certificates).
#pragma once

#include "guardia/core/error.hpp"

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace guardia::ssh {

enum class HostKeyPolicy {
    strict,      // unknown or changed key: refuse
    accept_new,  // unknown key: record it and go on; changed key: refuse
};

// Parses "strict" / "accept-new".
Result<HostKeyPolicy> parse_host_key_policy(std::string_view text);

// A public host key: its algorithm name ("ssh-ed25519") and its SSH wire-format blob.
struct HostKey {
    std::string type;
    std::string blob;
};

// OpenSSH's fingerprint form: "SHA256:" + unpadded base64 of SHA-256(blob).
std::string sha256_fingerprint(std::string_view blob);

// The name known_hosts uses for a host: "host" on port 22, "[host]:port" otherwise.
std::string known_hosts_name(std::string_view host, std::uint16_t port);

enum class HostKeyVerdict {
    known,     // listed for this host
    unknown,   // the host has no entry at all
    changed,   // the host is listed with other keys (of this type or only of other types)
    revoked,   // the key is marked @revoked
    recorded,  // was unknown, and verify() recorded it under accept-new
};

struct HostKeyCheck {
    HostKeyVerdict verdict = HostKeyVerdict::unknown;
    // For changed/revoked: the entry that conflicts (its key type, fingerprint, line).
    std::string known_type;
    std::string known_fingerprint;
    int known_line = 0;
};

class KnownHosts {
public:
    // Loads `path`. A missing file is an empty set (accept-new will create it); an unreadable
    // one is an error. Lines that cannot be parsed are skipped and counted.
    static Result<std::shared_ptr<KnownHosts>> load(const std::string& path);
    // Parses text without a file behind it (add() then only updates memory).
    static std::shared_ptr<KnownHosts> from_text(std::string_view text);

    HostKeyCheck check(std::string_view host, std::uint16_t port, const HostKey& key) const;

    // check() and, under accept-new, recording an unknown key, as one step: two sessions to the
    // same new host cannot both record (different) keys.
    Result<HostKeyCheck> verify(std::string_view host, std::uint16_t port, const HostKey& key,
                                HostKeyPolicy policy);

    // Key types recorded for the host, so the handshake can ask for one of those first.
    std::vector<std::string> key_types_for(std::string_view host, std::uint16_t port) const;

    // Records a key (accept-new): appended to the file in one write, and to memory.
    Result<void> add(std::string_view host, std::uint16_t port, const HostKey& key);

    const std::string& path() const noexcept { return path_; }
    std::size_t size() const;
    int skipped_lines() const noexcept { return skipped_lines_; }

private:
    struct Entry {
        bool revoked = false;
        std::vector<std::string> patterns;  // plain patterns, may start with '!'
        std::string hashed_salt;            // non-empty for |1|salt|hash entries
        std::string hashed_digest;
        std::string key_type;
        std::string key_blob;
        int line = 0;
    };
    static bool parse_line(std::string_view line, int line_no, Entry& out);
    bool entry_matches(const Entry& e, const std::string& name) const;
    HostKeyCheck check_locked(std::string_view host, std::uint16_t port, const HostKey& key) const;
    Result<void> add_locked(std::string_view host, std::uint16_t port, const HostKey& key);
    void parse_text(std::string_view text);
    // Files the entry at `index` under its names (or among the scanned ones).
    void index_entry(std::size_t index);
    // Indices of the entries that may match `name` (the exact-name ones, and every scanned
    // one), in file order: what the checks then walk, instead of the whole file.
    std::vector<std::size_t> candidates(const std::string& name) const;

    std::string path_;
    std::vector<Entry> entries_;
    // Entries whose patterns are all literal names (no wildcard, no negation, not hashed, not
    // @revoked), by lowercase name: with a thousand hosts a lookup is a hash probe, not a scan
    // of the file per connection (twice: key types before the handshake, the check after).
    std::unordered_map<std::string, std::vector<std::size_t>> by_name_;
    std::vector<std::size_t> scanned_;  // every other entry, in file order
    int skipped_lines_ = 0;
    int line_count_ = 0;
    // A KnownHosts is shared by every session of a rollout; sessions run on one loop, but
    // the service may run tools on other threads, so add()/check() are made safe anyway.
    mutable std::mutex mutex_;
};

}  // namespace guardia::ssh
