// What a session authenticates with. Keys are read once and shared by every session that
// uses them: libssh2's *_fromfile re-reads and re-parses the file on every signature.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/core/secret.hpp"

#include <memory>
#include <optional>
#include <string>

namespace guardia::ssh {

namespace detail {
class KeySigner;
}

struct PrivateKey {
    std::string path;   // where it came from, for messages only
    Secret contents;    // the private key file as read (PEM / OpenSSH format)
    Secret passphrase;  // empty when the key is not encrypted
    std::string type;   // "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", ...; empty if unknown
    // The key parsed once, for ed25519/ECDSA keys that are unencrypted OpenSSH or PEM files.
    // Null otherwise: libssh2 then parses `contents` on every connection (much slower).
    std::shared_ptr<const detail::KeySigner> signer;

    // Reads a private key file. ed25519 and ECDSA keys work everywhere; RSA keys only
    // where the server still accepts ssh-rsa (SHA-1) signatures (libssh2 1.10 cannot sign
    // with rsa-sha2-*, and OpenSSH >= 8.8 refuses ssh-rsa by default). A file readable by
    // group or others (mode & 077) is refused: "UNPROTECTED PRIVATE KEY FILE", naming the
    // path and its mode (errc::invalid_argument).
    static Result<std::shared_ptr<const PrivateKey>> load(const std::string& path,
                                                          Secret passphrase = {});
};

struct Credentials {
    std::string user;
    std::shared_ptr<const PrivateKey> key;  // public-key auth with this key, if set
    bool use_agent = false;                 // public-key auth with ssh-agent's keys
    std::optional<Secret> password;         // password and keyboard-interactive auth
};

}  // namespace guardia::ssh
