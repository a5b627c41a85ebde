// Fuzz target: the known_hosts parser and matcher, guardia::ssh::KnownHosts
// (ssh/known_hosts.hpp). The input is the text of a known_hosts file (from_text: no file).
//
// Each input is then queried the way a rollout does: for a few host names (fixed ones used by
// the seed corpus, including names whose hashes are in the hashed |1| seeds, and names taken
// from the input's own host fields, with and without [host]:port) and a few keys (two ed25519,
// one ECDSA: the ones the seeds hold), key_types_for(), check() and verify(accept-new).
//
// Properties: no crash, sanitizer report or leak; a changed/revoked verdict names an entry (a
// line of the input and an OpenSSH fingerprint); verify() agrees with check(); a key that
// verify() recorded under accept-new is known right after, and its type is among
// key_types_for().
#include "guardia/ssh/known_hosts.hpp"

#include "fuzz_common.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

using guardia::ssh::HostKey;
using guardia::ssh::HostKeyPolicy;
using guardia::ssh::HostKeyVerdict;
using guardia::ssh::KnownHosts;

std::string base64_decode(std::string_view in) {
    std::string out(3 * in.size() / 4, '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(in.data()),
                                  static_cast<int>(in.size()));
    std::size_t pad = in.ends_with("==") ? 2 : in.ends_with("=") ? 1 : 0;
    out.resize(n < 0 ? 0 : static_cast<std::size_t>(n) - pad);
    return out;
}

HostKey key(const char* type, std::string_view b64) {
    HostKey k;
    k.type = type;
    k.blob = base64_decode(b64);
    return k;
}

const std::vector<HostKey>& keys() {
    static const std::vector<HostKey> k = {
        key("ssh-ed25519",
            "AAAAC3NzaC1lZDI1NTE5AAAAIPDGc4zjVrvzQMSWBTWenQMaUSSRhcock5xIsy5qR72x"),
        key("ssh-ed25519",
            "AAAAC3NzaC1lZDI1NTE5AAAAIL5m1n95ZHbIfiv5eYxyJ65MDIdzn110+bllWWRXvt6a"),
        key("ecdsa-sha2-nistp256",
            "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBMEiOBm2dsf7Bm1NWqtJ+Dnul2VlgTS1"
            "R8BsRVdTVKqy137wv25cWGGwkiVVjHrKz+KLIVTRTLot31F4cDhoR4s="),
    };
    return k;
}

struct Target {
    std::string host;
    std::uint16_t port = 22;
};

// The hosts of the seed corpus, then up to 6 taken from the input's host fields.
std::vector<Target> targets(std::string_view text) {
    std::vector<Target> out = {{"host.example.com", 22},
                               {"192.0.2.10", 22},
                               {"git.example.com", 2222},
                               {"HOST.example.com", 22}};
    std::size_t pos = 0;
    while (pos < text.size() && out.size() < 10) {
        std::size_t nl = std::min(text.find('\n', pos), text.size());
        std::string_view line = text.substr(pos, nl - pos);
        pos = nl + 1;
        if (line.starts_with("@")) line = line.substr(std::min(line.find(' '), line.size()));
        line = line.substr(std::min(line.find_first_not_of(" \t"), line.size()));
        std::string_view hosts = line.substr(0, std::min(line.find_first_of(" \t"), line.size()));
        std::string_view first = hosts.substr(0, hosts.find(','));
        if (first.starts_with("!")) first.remove_prefix(1);
        if (first.empty() || first.starts_with("|") || first.starts_with("#")) continue;
        Target t;
        if (first.starts_with("[")) {
            const auto close = first.find("]:");
            if (close == std::string_view::npos) continue;
            unsigned port = 0;
            for (char c : first.substr(close + 2)) {
                if (c < '0' || c > '9' || port > 65535) break;
                port = port * 10 + static_cast<unsigned>(c - '0');
            }
            if (port == 0 || port > 65535) continue;
            t.host = std::string(first.substr(1, close - 1));
            t.port = static_cast<std::uint16_t>(port);
        } else {
            t.host = std::string(first);
        }
        out.push_back(std::move(t));
    }
    return out;
}

// A host name as a real connection would have one: no wildcard, negation, separator or
// control character (known_hosts_name(host) is then a literal pattern matching itself).
bool plain_host(std::string_view h) {
    if (h.empty() || h.front() == '!') return false;
    for (char c : h) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f || c == '*' || c == '?' || c == ',' || c == '[' || c == ']')
            return false;
    }
    return true;
}

void check_evidence(const guardia::ssh::HostKeyCheck& r, int lines, const std::string& what) {
    if (r.verdict != HostKeyVerdict::changed && r.verdict != HostKeyVerdict::revoked) return;
    GUARDIA_FUZZ_CHECK(r.known_fingerprint.starts_with("SHA256:"), what);
    GUARDIA_FUZZ_CHECK(r.known_line >= 1 && r.known_line <= lines, what);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto kh = KnownHosts::from_text(text);
    GUARDIA_FUZZ_CHECK(kh->path().empty() && kh->skipped_lines() >= 0, "from_text");
    const int lines = static_cast<int>(std::count(text.begin(), text.end(), '\n')) + 1;
    const std::size_t entries = kh->size();

    const std::vector<Target> hosts = targets(text);
    struct Unknown {
        const Target* target;
        const HostKey* key;
    };
    std::vector<Unknown> unknown;
    for (const Target& t : hosts) {
        const std::string what = guardia::ssh::known_hosts_name(t.host, t.port);
        const auto types = kh->key_types_for(t.host, t.port);
        for (const HostKey& k : keys()) {
            const auto r = kh->check(t.host, t.port, k);
            check_evidence(r, lines, what);
            if (r.verdict == HostKeyVerdict::known)
                GUARDIA_FUZZ_CHECK(std::find(types.begin(), types.end(), k.type) != types.end(),
                                   "a known key's type is among key_types_for: " + what);
            if (r.verdict == HostKeyVerdict::unknown) {
                if (plain_host(t.host)) unknown.push_back({&t, &k});
                continue;
            }
            // Not unknown: verify() changes nothing and says what check() said.
            auto v = kh->verify(t.host, t.port, k, HostKeyPolicy::accept_new);
            GUARDIA_FUZZ_CHECK(v.has_value() && v->verdict == r.verdict,
                               "verify agrees with check: " + what);
            GUARDIA_FUZZ_CHECK(kh->size() == entries, "verify recorded a key it knew: " + what);
        }
    }
    // Recording under accept-new, on a fresh copy (the first and the last unknown pair only:
    // each costs a parse of the whole input).
    if (unknown.size() > 2) unknown.erase(unknown.begin() + 1, unknown.end() - 1);
    for (const Unknown& u : unknown) {
        const Target& t = *u.target;
        const HostKey& k = *u.key;
        const std::string what = guardia::ssh::known_hosts_name(t.host, t.port);
        auto copy = KnownHosts::from_text(text);
        auto v = copy->verify(t.host, t.port, k, HostKeyPolicy::accept_new);
        GUARDIA_FUZZ_CHECK(v.has_value(), "verify without a file cannot fail: " + what);
        GUARDIA_FUZZ_CHECK(v->verdict == HostKeyVerdict::recorded, what);
        GUARDIA_FUZZ_CHECK(copy->size() == entries + 1, what);
        const auto again = copy->check(t.host, t.port, k);
        GUARDIA_FUZZ_CHECK(again.verdict == HostKeyVerdict::known,
                           "a recorded key is known afterwards: " + what);
        const auto now = copy->key_types_for(t.host, t.port);
        GUARDIA_FUZZ_CHECK(std::find(now.begin(), now.end(), k.type) != now.end(), what);
    }
    (void)guardia::ssh::sha256_fingerprint(text);
    return 0;
}
