#include "guardia/service/webhook_signature.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <charconv>
#include <stdexcept>

namespace guardia::service {

std::string hmac_sha256_hex(std::string_view key, std::string_view data) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    // An empty key is a valid HMAC key; OpenSSL wants a non-null pointer for it.
    static const unsigned char empty = 0;
    const void* k = key.empty() ? static_cast<const void*>(&empty) : key.data();
    if (!HMAC(EVP_sha256(), k, static_cast<int>(key.size()),
              reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &len))
        throw std::runtime_error("HMAC-SHA256 failed");
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(2 * len);
    for (unsigned int i = 0; i < len; ++i) {
        out += hex[mac[i] >> 4];
        out += hex[mac[i] & 0x0f];
    }
    return out;
}

std::string webhook_signature(std::string_view secret, std::int64_t timestamp_s,
                              std::string_view body) {
    std::string signed_text = std::to_string(timestamp_s);
    signed_text += '.';
    signed_text.append(body);
    return "sha256=" + hmac_sha256_hex(secret, signed_text);
}

SignatureCheck verify_webhook_signature(std::string_view secret, std::string_view timestamp_header,
                                        std::string_view signature_header, std::string_view body,
                                        std::int64_t now_s, std::int64_t tolerance_s) {
    std::int64_t ts = 0;
    const auto* end = timestamp_header.data() + timestamp_header.size();
    auto [p, ec] = std::from_chars(timestamp_header.data(), end, ts);
    if (timestamp_header.empty() || ec != std::errc() || p != end) return SignatureCheck::malformed;
    constexpr std::string_view prefix = "sha256=";
    if (signature_header.substr(0, prefix.size()) != prefix) return SignatureCheck::malformed;
    const std::string expected = webhook_signature(secret, ts, body);
    if (expected.size() != signature_header.size() ||
        CRYPTO_memcmp(expected.data(), signature_header.data(), expected.size()) != 0)
        return SignatureCheck::mismatch;
    if (ts < now_s - tolerance_s || ts > now_s + tolerance_s) return SignatureCheck::stale;
    return SignatureCheck::valid;
}

}  // namespace guardia::service
