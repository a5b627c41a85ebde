#include "detail/key_signer.hpp"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace guardia::ssh::detail {
namespace {

// Reads SSH wire-format values from a byte string.
class WireReader {
public:
    explicit WireReader(std::string_view data) : data_(data) {}
    bool u32(std::uint32_t& out) {
        if (data_.size() < 4) return false;
        out = (std::uint32_t(std::uint8_t(data_[0])) << 24) |
              (std::uint32_t(std::uint8_t(data_[1])) << 16) |
              (std::uint32_t(std::uint8_t(data_[2])) << 8) | std::uint32_t(std::uint8_t(data_[3]));
        data_.remove_prefix(4);
        return true;
    }
    bool str(std::string_view& out) {
        std::uint32_t n = 0;
        if (!u32(n) || data_.size() < n) return false;
        out = data_.substr(0, n);
        data_.remove_prefix(n);
        return true;
    }

private:
    std::string_view data_;
};

void put_u32(std::string& out, std::uint32_t v) {
    out += static_cast<char>(v >> 24);
    out += static_cast<char>(v >> 16);
    out += static_cast<char>(v >> 8);
    out += static_cast<char>(v);
}
void put_str(std::string& out, std::string_view s) {
    put_u32(out, static_cast<std::uint32_t>(s.size()));
    out += s;
}
// SSH mpint: big-endian two's complement, minimal length, leading 0 if the top bit is set.
void put_mpint(std::string& out, const BIGNUM* bn) {
    std::vector<unsigned char> bytes(static_cast<std::size_t>(BN_num_bytes(bn)));
    BN_bn2bin(bn, bytes.data());
    std::string v;
    if (!bytes.empty() && (bytes[0] & 0x80) != 0) v += '\0';
    v.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    put_str(out, v);
}

bool base64_decode(std::string_view in, std::string& out) {
    std::string clean;
    for (char c : in)
        if (c != '\n' && c != '\r' && c != ' ' && c != '\t') clean += c;
    if (clean.size() % 4 != 0) return false;
    out.assign(3 * clean.size() / 4, '\0');
    int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(clean.data()),
                            static_cast<int>(clean.size()));
    if (n < 0) return false;
    std::size_t pad = 0;
    if (!clean.empty() && clean.back() == '=') ++pad;
    if (clean.size() >= 2 && clean[clean.size() - 2] == '=') ++pad;
    out.resize(static_cast<std::size_t>(n) - pad);
    return true;
}

struct EcCurve {
    const char* ssh_name;     // "nistp256"
    const char* group_name;   // OpenSSL group name
    const EVP_MD* (*md)();
};
constexpr EcCurve kCurves[] = {
    {"nistp256", "prime256v1", EVP_sha256},
    {"nistp384", "secp384r1", EVP_sha384},
    {"nistp521", "secp521r1", EVP_sha512},
};

const EcCurve* curve_by_ssh_name(std::string_view n) {
    for (const auto& c : kCurves)
        if (n == c.ssh_name) return &c;
    return nullptr;
}
const EcCurve* curve_by_group_name(std::string_view n) {
    for (const auto& c : kCurves)
        if (n == c.group_name) return &c;
    return nullptr;
}

std::unique_ptr<EVP_PKEY, PkeyFree> ec_key_from(const EcCurve& curve, std::string_view point,
                                                std::string_view scalar) {
    std::unique_ptr<OSSL_PARAM_BLD, void (*)(OSSL_PARAM_BLD*)> bld(OSSL_PARAM_BLD_new(),
                                                                  OSSL_PARAM_BLD_free);
    std::unique_ptr<BIGNUM, void (*)(BIGNUM*)> d(
        BN_bin2bn(reinterpret_cast<const unsigned char*>(scalar.data()),
                  static_cast<int>(scalar.size()), nullptr),
        BN_clear_free);
    if (!bld || !d) return nullptr;
    OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, curve.group_name, 0);
    OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size());
    OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, d.get());
    std::unique_ptr<OSSL_PARAM, void (*)(OSSL_PARAM*)> params(OSSL_PARAM_BLD_to_param(bld.get()),
                                                            OSSL_PARAM_free);
    std::unique_ptr<EVP_PKEY_CTX, void (*)(EVP_PKEY_CTX*)> ctx(
        EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr), EVP_PKEY_CTX_free);
    EVP_PKEY* key = nullptr;
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
        EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_KEYPAIR, params.get()) != 1)
        return nullptr;
    return std::unique_ptr<EVP_PKEY, PkeyFree>(key);
}

constexpr std::string_view kOpensshBegin = "-----BEGIN OPENSSH PRIVATE KEY-----";
constexpr std::string_view kOpensshEnd = "-----END OPENSSH PRIVATE KEY-----";

}  // namespace

std::string private_key_type(std::string_view text) {
    if (text.find("BEGIN RSA PRIVATE KEY") != std::string_view::npos) return "ssh-rsa";
    if (text.find("BEGIN EC PRIVATE KEY") != std::string_view::npos) return "ecdsa";
    if (text.find("BEGIN DSA PRIVATE KEY") != std::string_view::npos) return "ssh-dss";
    auto begin = text.find(kOpensshBegin);
    if (begin == std::string_view::npos) return {};
    auto body_start = begin + kOpensshBegin.size();
    auto end = text.find(kOpensshEnd, body_start);
    std::string raw;
    if (end == std::string_view::npos || !base64_decode(text.substr(body_start, end - body_start), raw))
        return {};
    if (raw.size() < 15) return {};
    WireReader r(std::string_view(raw).substr(15));
    std::string_view cipher, kdf, kdfopts, pub, type;
    std::uint32_t nkeys = 0;
    if (!r.str(cipher) || !r.str(kdf) || !r.str(kdfopts) || !r.u32(nkeys) || !r.str(pub)) return {};
    WireReader p(pub);
    if (!p.str(type)) return {};
    return std::string(type);
}

Result<std::unique_ptr<KeySigner>> KeySigner::parse(std::string_view text,
                                                    const std::string& passphrase) {
    auto signer = std::unique_ptr<KeySigner>(new KeySigner());
    const auto unsupported = [](std::string why) {
        return Error(errc::invalid_argument, std::move(why));
    };

    if (auto begin = text.find(kOpensshBegin); begin != std::string_view::npos) {
        auto body_start = begin + kOpensshBegin.size();
        auto end = text.find(kOpensshEnd, body_start);
        std::string raw;
        // The decoded private key must not linger in freed memory.
        struct Wipe {
            std::string& s;
            ~Wipe() {
                if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
            }
        } wipe{raw};
        if (end == std::string_view::npos || !base64_decode(text.substr(body_start, end - body_start), raw))
            return unsupported("not a well-formed OpenSSH private key");
        static constexpr std::string_view magic("openssh-key-v1\0", 15);
        if (raw.compare(0, magic.size(), magic) != 0) return unsupported("unknown OpenSSH key version");
        WireReader r(std::string_view(raw).substr(magic.size()));
        std::string_view cipher, kdf, kdfopts, pub, priv;
        std::uint32_t nkeys = 0;
        if (!r.str(cipher) || !r.str(kdf) || !r.str(kdfopts) || !r.u32(nkeys) || nkeys != 1 ||
            !r.str(pub) || !r.str(priv))
            return unsupported("malformed OpenSSH private key");
        if (cipher != "none") return unsupported("encrypted OpenSSH key");
        WireReader p(priv);
        std::uint32_t check1 = 0, check2 = 0;
        std::string_view type;
        if (!p.u32(check1) || !p.u32(check2) || check1 != check2 || !p.str(type))
            return unsupported("malformed OpenSSH private section");
        if (type == "ssh-ed25519") {
            std::string_view pk, sk;
            if (!p.str(pk) || !p.str(sk) || pk.size() != 32 || sk.size() != 64)
                return unsupported("malformed ed25519 key");
            signer->pkey_.reset(EVP_PKEY_new_raw_private_key(
                EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(sk.data()), 32));
        } else if (type.starts_with("ecdsa-sha2-")) {
            std::string_view curve_name, point, scalar;
            if (!p.str(curve_name) || !p.str(point) || !p.str(scalar))
                return unsupported("malformed ECDSA key");
            const EcCurve* curve = curve_by_ssh_name(curve_name);
            if (curve == nullptr) return unsupported("unknown ECDSA curve");
            signer->pkey_ = ec_key_from(*curve, point, scalar);
            signer->digest_ = curve->md();
        } else {
            return unsupported("key type " + std::string(type) + " is left to libssh2");
        }
        if (!signer->pkey_) return unsupported("OpenSSL refused the key");
        signer->public_blob_ = std::string(pub);
        signer->algorithm_ = std::string(type);
        return signer;
    }

    // PEM: parse once with OpenSSL.
    std::unique_ptr<BIO, void (*)(BIO*)> bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())),
                                            BIO_free_all);
    EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr,
                                            const_cast<char*>(passphrase.c_str()));
    if (key == nullptr) return unsupported("OpenSSL cannot read this PEM key");
    signer->pkey_.reset(key);
    if (EVP_PKEY_is_a(key, "ED25519")) {
        unsigned char pk[32];
        std::size_t len = sizeof pk;
        if (EVP_PKEY_get_raw_public_key(key, pk, &len) != 1 || len != 32)
            return unsupported("cannot read ed25519 public key");
        signer->algorithm_ = "ssh-ed25519";
        put_str(signer->public_blob_, signer->algorithm_);
        put_str(signer->public_blob_, std::string_view(reinterpret_cast<char*>(pk), len));
        return signer;
    }
    if (EVP_PKEY_is_a(key, "EC")) {
        char group[64] = {};
        std::size_t glen = 0;
        unsigned char point[200];
        std::size_t plen = 0;
        if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen) != 1 ||
            EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, sizeof point,
                                            &plen) != 1)
            return unsupported("cannot read ECDSA public key");
        const EcCurve* curve = curve_by_group_name(group);
        if (curve == nullptr) return unsupported("unsupported ECDSA curve " + std::string(group));
        signer->algorithm_ = std::string("ecdsa-sha2-") + curve->ssh_name;
        signer->digest_ = curve->md();
        put_str(signer->public_blob_, signer->algorithm_);
        put_str(signer->public_blob_, curve->ssh_name);
        put_str(signer->public_blob_, std::string_view(reinterpret_cast<char*>(point), plen));
        return signer;
    }
    return unsupported("PEM key type is left to libssh2");
}

std::string KeySigner::sign(const unsigned char* data, std::size_t len) const {
    std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, digest_, nullptr, pkey_.get()) != 1) return {};
    std::size_t sig_len = 0;
    if (EVP_DigestSign(ctx.get(), nullptr, &sig_len, data, len) != 1) return {};
    std::string sig(sig_len, '\0');
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &sig_len, data, len) != 1)
        return {};
    sig.resize(sig_len);
    if (digest_ == nullptr) return sig;  // ed25519: the 64 raw bytes
    // ECDSA: OpenSSL gives DER; SSH wants mpint r || mpint s.
    const auto* p = reinterpret_cast<const unsigned char*>(sig.data());
    std::unique_ptr<ECDSA_SIG, void (*)(ECDSA_SIG*)> ecdsa(
        d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size())), ECDSA_SIG_free);
    if (!ecdsa) return {};
    std::string out;
    put_mpint(out, ECDSA_SIG_get0_r(ecdsa.get()));
    put_mpint(out, ECDSA_SIG_get0_s(ecdsa.get()));
    return out;
}

}  // namespace guardia::ssh::detail
