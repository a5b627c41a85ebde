#include "guardia/ssh/known_hosts.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

using namespace guardia::ssh;

namespace {

std::string b64(const std::string& raw) {
    std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(raw.data()),
                            static_cast<int>(raw.size()));
    out.resize(static_cast<size_t>(n));
    return out;
}

// A syntactically valid ssh-ed25519 wire blob with a chosen 32-byte body.
HostKey ed25519_key(char fill) {
    std::string blob;
    auto put = [&](const std::string& s) {
        uint32_t n = static_cast<uint32_t>(s.size());
        blob += static_cast<char>(n >> 24);
        blob += static_cast<char>(n >> 16);
        blob += static_cast<char>(n >> 8);
        blob += static_cast<char>(n);
        blob += s;
    };
    put("ssh-ed25519");
    put(std::string(32, fill));
    return {"ssh-ed25519", blob};
}

std::string line_for(const std::string& hosts, const HostKey& k) {
    return hosts + " " + k.type + " " + b64(k.blob) + "\n";
}

std::string hashed_host(const std::string& name, const std::string& salt) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    HMAC(EVP_sha1(), salt.data(), static_cast<int>(salt.size()),
         reinterpret_cast<const unsigned char*>(name.data()), name.size(), mac, &len);
    return "|1|" + b64(salt) + "|" + b64(std::string(reinterpret_cast<char*>(mac), len));
}

}  // namespace

TEST_CASE("known_hosts names use [host]:port except on port 22") {
    CHECK(known_hosts_name("10.0.0.1", 22) == "10.0.0.1");
    CHECK(known_hosts_name("127.0.0.1", 2222) == "[127.0.0.1]:2222");
}

TEST_CASE("fingerprints match OpenSSH's SHA256 form") {
    // ssh-keygen -lf prints SHA256:<unpadded base64 of sha256(blob)>; check the form and length.
    auto fp = sha256_fingerprint(ed25519_key('a').blob);
    CHECK(fp.rfind("SHA256:", 0) == 0);
    CHECK(fp.size() == 7 + 43);
    CHECK(fp.find('=') == std::string::npos);
}

TEST_CASE("a listed key is known, a different key of the same type is a change") {
    auto good = ed25519_key('g'), evil = ed25519_key('e');
    auto kh = KnownHosts::from_text("# comment\n\n" + line_for("[127.0.0.1]:2222", good));
    CHECK(kh->check("127.0.0.1", 2222, good).verdict == HostKeyVerdict::known);
    auto changed = kh->check("127.0.0.1", 2222, evil);
    CHECK(changed.verdict == HostKeyVerdict::changed);
    CHECK(changed.known_fingerprint == sha256_fingerprint(good.blob));
    CHECK(changed.known_line == 3);
    // Same host, other port: a different known_hosts name, so unknown.
    CHECK(kh->check("127.0.0.1", 2223, good).verdict == HostKeyVerdict::unknown);
}

TEST_CASE("a host known only by another key type is a change, not a new host") {
    auto ed = ed25519_key('d');
    HostKey ecdsa{"ecdsa-sha2-nistp256", std::string("\0\0\0\x13" "ecdsa-sha2-nistp256", 23) + "xyz"};
    auto kh = KnownHosts::from_text(line_for("[10.0.0.9]:22022", ecdsa));
    auto r = kh->check("10.0.0.9", 22022, ed);
    CHECK(r.verdict == HostKeyVerdict::changed);
    CHECK(r.known_type == "ecdsa-sha2-nistp256");
    // ...and accept-new does not record it.
    auto v = kh->verify("10.0.0.9", 22022, ed, HostKeyPolicy::accept_new);
    REQUIRE(v.has_value());
    CHECK(v->verdict == HostKeyVerdict::changed);
    CHECK(kh->size() == 1);
}

TEST_CASE("verify() records an unknown key once under accept-new, never under strict") {
    auto kh = KnownHosts::from_text("");
    auto first = ed25519_key('1'), second = ed25519_key('2');
    auto strict = kh->verify("h", 2200, first, HostKeyPolicy::strict);
    REQUIRE(strict.has_value());
    CHECK(strict->verdict == HostKeyVerdict::unknown);
    CHECK(kh->size() == 0);
    auto rec = kh->verify("h", 2200, first, HostKeyPolicy::accept_new);
    REQUIRE(rec.has_value());
    CHECK(rec->verdict == HostKeyVerdict::recorded);
    // A second, different key for the same host (a racing or malicious connection) is refused.
    auto other = kh->verify("h", 2200, second, HostKeyPolicy::accept_new);
    REQUIRE(other.has_value());
    CHECK(other->verdict == HostKeyVerdict::changed);
    CHECK(kh->size() == 1);
}

TEST_CASE("patterns: lists, wildcards, negation, hashed hosts, revoked keys") {
    auto k = ed25519_key('k');
    std::string text = line_for("web-01,10.1.2.3", k) + line_for("*.example.org,!bad.example.org", k) +
                       line_for(hashed_host("[db-1]:2200", "0123456789abcdefghij"), k) +
                       "@revoked * " + k.type + " " + b64(ed25519_key('r').blob) + "\n" +
                       "this line is garbage\n";
    auto kh = KnownHosts::from_text(text);
    CHECK(kh->skipped_lines() == 1);
    CHECK(kh->check("10.1.2.3", 22, k).verdict == HostKeyVerdict::known);
    CHECK(kh->check("web-01", 22, k).verdict == HostKeyVerdict::known);
    CHECK(kh->check("a.example.org", 22, k).verdict == HostKeyVerdict::known);
    CHECK(kh->check("bad.example.org", 22, k).verdict == HostKeyVerdict::unknown);
    CHECK(kh->check("db-1", 2200, k).verdict == HostKeyVerdict::known);
    CHECK(kh->check("db-1", 22, k).verdict == HostKeyVerdict::unknown);
    CHECK(kh->check("anything", 22, ed25519_key('r')).verdict == HostKeyVerdict::revoked);
}

TEST_CASE("hashed entries match the lower-cased host name, as OpenSSH writes them") {
    // ssh lower-cases the host name before hashing it into known_hosts (HashKnownHosts yes,
    // ssh-keygen -H): a lookup in another case must hash the same lower-cased name.
    auto k = ed25519_key('k');
    auto kh = KnownHosts::from_text(line_for(hashed_host("node-a.example", "salt-0123456789abcd"), k) +
                                    line_for(hashed_host("[db-2.example]:2200", "salt-abcdefghij0123"), k));
    CHECK(kh->check("node-a.example", 22, k).verdict == HostKeyVerdict::known);
    CHECK(kh->check("Node-A.Example", 22, k).verdict == HostKeyVerdict::known);
    CHECK(kh->check("NODE-A.EXAMPLE", 22, k).verdict == HostKeyVerdict::known);
    CHECK(kh->check("DB-2.Example", 2200, k).verdict == HostKeyVerdict::known);
    CHECK(kh->check("Node-A.Example", 22, ed25519_key('x')).verdict == HostKeyVerdict::changed);
    CHECK(kh->key_types_for("Node-A.Example", 22) == std::vector<std::string>{"ssh-ed25519"});
    CHECK(kh->check("node-b.example", 22, k).verdict == HostKeyVerdict::unknown);
}

TEST_CASE("a thousand hosts: exact names, wildcards and negations keep OpenSSH's answers") {
    // Literal names are found through the index, everything else by a scan; the verdict and
    // the entry named as evidence must not depend on which.
    auto k = ed25519_key('k'), stale = ed25519_key('s'), other = ed25519_key('o');
    std::string text;
    for (int i = 0; i < 1000; ++i) text += line_for("[10.0.0." + std::to_string(i % 250) + "]:" + std::to_string(20000 + i), k);
    text += line_for("[10.0.0.7]:20007,Web-1", k);                // line 1001: a second name
    text += line_for("[10.9.*]:2200", stale);                     // line 1002: wildcard, first
    text += line_for("[10.9.0.1]:2200", k);                       // line 1003: exact, later
    text += line_for("[10.8.*]:2200,![10.8.0.66]:2200", stale);   // line 1004: negation
    auto kh = KnownHosts::from_text(text);
    CHECK(kh->size() == 1004);
    CHECK(kh->check("10.0.0.5", 20005, k).verdict == HostKeyVerdict::known);
    CHECK(kh->check("10.0.0.5", 20006, k).verdict == HostKeyVerdict::unknown);
    CHECK(kh->check("web-1", 22, k).verdict == HostKeyVerdict::known);  // case-insensitive
    CHECK(kh->key_types_for("10.0.0.7", 20007) == std::vector<std::string>{"ssh-ed25519"});
    auto changed = kh->check("10.0.0.999", 20999, other);
    CHECK(changed.verdict == HostKeyVerdict::unknown);
    changed = kh->check("10.0.0.249", 20999, other);
    CHECK(changed.verdict == HostKeyVerdict::changed);
    CHECK(changed.known_line == 1000);
    // The exact entry's key is known even though a wildcard entry with another key comes
    // first; a third key is a change whose evidence is the first matching entry in the file.
    CHECK(kh->check("10.9.0.1", 2200, k).verdict == HostKeyVerdict::known);
    auto c = kh->check("10.9.0.1", 2200, other);
    CHECK(c.verdict == HostKeyVerdict::changed);
    CHECK(c.known_line == 1002);
    CHECK(kh->check("10.8.0.5", 2200, stale).verdict == HostKeyVerdict::known);
    CHECK(kh->check("10.8.0.66", 2200, stale).verdict == HostKeyVerdict::unknown);
    // A key recorded later is found through the index too.
    auto added = kh->verify("new-host", 2222, other, HostKeyPolicy::accept_new);
    REQUIRE(added.has_value());
    CHECK(added->verdict == HostKeyVerdict::recorded);
    CHECK(kh->check("NEW-HOST", 2222, other).verdict == HostKeyVerdict::known);
}

TEST_CASE("add() appends an OpenSSH line that a reload finds") {
    auto dir = std::filesystem::temp_directory_path() / "guardia-kh-test";
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    auto path = (dir / "known_hosts").string();
    { std::ofstream(path) << "# no trailing newline"; }
    auto kh = KnownHosts::load(path);
    REQUIRE(kh.has_value());
    auto k = ed25519_key('n');
    REQUIRE((*kh)->add("127.0.0.1", 2201, k).has_value());
    auto again = KnownHosts::load(path);
    REQUIRE(again.has_value());
    CHECK((*again)->check("127.0.0.1", 2201, k).verdict == HostKeyVerdict::known);
    CHECK((*again)->skipped_lines() == 0);
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    CHECK(ss.str().find("\n[127.0.0.1]:2201 ssh-ed25519 ") != std::string::npos);
    std::filesystem::remove_all(dir);
}

TEST_CASE("a missing known_hosts file is empty, not an error") {
    auto kh = KnownHosts::load("/nonexistent-dir-guardia/known_hosts");
    REQUIRE(kh.has_value());
    CHECK((*kh)->size() == 0);
}

TEST_CASE("host-key policies parse by name") {
    CHECK(*parse_host_key_policy("strict") == HostKeyPolicy::strict);
    CHECK(*parse_host_key_policy("accept-new") == HostKeyPolicy::accept_new);
    auto bad = parse_host_key_policy("yolo");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message.find("yolo") != std::string::npos);
}
