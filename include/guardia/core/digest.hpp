// SHA-256 and MD5 of a byte stream (OpenSSL EVP), as lowercase hex: how artifacts are hashed
// for uploads (SHA-256 verified on the target, MD5 recorded as the original engine did).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

struct evp_md_ctx_st;

namespace guardia {

std::string to_hex(const unsigned char* data, std::size_t size);

// SHA-256 of bytes held in memory, as lowercase hex (the audit chain's row hashes).
std::string sha256_hex(std::string_view data);

class StreamDigests {
public:
    StreamDigests();
    ~StreamDigests();
    StreamDigests(const StreamDigests&) = delete;
    StreamDigests& operator=(const StreamDigests&) = delete;

    void update(const void* data, std::size_t size);
    // Ends the stream; call once.
    void finish(std::string& sha256_hex, std::string& md5_hex);

private:
    struct Free {
        void operator()(evp_md_ctx_st* c) const noexcept;
    };
    std::unique_ptr<evp_md_ctx_st, Free> sha256_;
    std::unique_ptr<evp_md_ctx_st, Free> md5_;
};

}  // namespace guardia
