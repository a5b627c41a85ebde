// A private key parsed once, signing in-process for libssh2_userauth_publickey().
//
// libssh2 1.10's *_frommemory re-parses the key on every connection and first tries OpenSSL 3's
// PEM decoders, which cost ~70 % of the client CPU of a connection. Parsing once and signing
// through the callback API removes that.
#pragma once

#include "guardia/core/error.hpp"

#include <openssl/evp.h>

#include <memory>
#include <string>
#include <string_view>

namespace guardia::ssh::detail {

struct PkeyFree {
    void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};

// The SSH key type of a private key file ("ssh-ed25519", "ssh-rsa", ...), read without
// decrypting it (OpenSSH files carry the public key in clear); empty if unknown.
std::string private_key_type(std::string_view text);

class KeySigner {
public:
    // Parses an unencrypted OpenSSH-format or a PEM ed25519/ECDSA key. Returns an error for
    // anything else (encrypted OpenSSH keys, RSA, DSA): the caller then lets libssh2 do it.
    static Result<std::unique_ptr<KeySigner>> parse(std::string_view text,
                                                    const std::string& passphrase);

    const std::string& algorithm() const noexcept { return algorithm_; }    // "ssh-ed25519"
    const std::string& public_blob() const noexcept { return public_blob_; }  // SSH wire form
    // The raw signature libssh2 wraps into the USERAUTH request: 64 bytes for ed25519,
    // mpint r || mpint s for ECDSA. Empty on failure.
    std::string sign(const unsigned char* data, std::size_t len) const;

private:
    std::unique_ptr<EVP_PKEY, PkeyFree> pkey_;
    std::string algorithm_;
    std::string public_blob_;
    const EVP_MD* digest_ = nullptr;  // nullptr for ed25519 (pure EdDSA)
};

}  // namespace guardia::ssh::detail
