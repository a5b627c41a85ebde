#include "guardia/core/digest.hpp"

#include <openssl/evp.h>

#include <stdexcept>

namespace guardia {

std::string to_hex(const unsigned char* data, std::size_t size) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(size * 2);
    for (std::size_t i = 0; i < size; ++i) {
        out += digits[data[i] >> 4];
        out += digits[data[i] & 15];
    }
    return out;
}

std::string sha256_hex(std::string_view data) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    // Only an allocation failure inside OpenSSL gets here: not a condition to recover from.
    if (EVP_Digest(data.data(), data.size(), d, &n, EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("OpenSSL cannot compute SHA-256");
    return to_hex(d, n);
}

void StreamDigests::Free::operator()(evp_md_ctx_st* c) const noexcept { EVP_MD_CTX_free(c); }

StreamDigests::StreamDigests() : sha256_(EVP_MD_CTX_new()), md5_(EVP_MD_CTX_new()) {
    if (!sha256_ || !md5_ || EVP_DigestInit_ex(sha256_.get(), EVP_sha256(), nullptr) != 1 ||
        EVP_DigestInit_ex(md5_.get(), EVP_md5(), nullptr) != 1)
        throw std::runtime_error("OpenSSL cannot initialise SHA-256/MD5 digests");
}

StreamDigests::~StreamDigests() = default;

void StreamDigests::update(const void* data, std::size_t size) {
    EVP_DigestUpdate(sha256_.get(), data, size);
    EVP_DigestUpdate(md5_.get(), data, size);
}

void StreamDigests::finish(std::string& sha256_hex, std::string& md5_hex) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_DigestFinal_ex(sha256_.get(), d, &n);
    sha256_hex = to_hex(d, n);
    EVP_DigestFinal_ex(md5_.get(), d, &n);
    md5_hex = to_hex(d, n);
}

}  // namespace guardia
