#include "guardia/ssh/credentials.hpp"

#include "detail/key_signer.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace guardia::ssh {

Result<std::shared_ptr<const PrivateKey>> PrivateKey::load(const std::string& path,
                                                           Secret passphrase) {
    // Read straight into the string that becomes the Secret: no stream buffer keeps a copy.
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in)
        return Error(errc::local_io_failed,
                     "cannot read private key " + path + ": " + std::strerror(errno));
    const auto size = static_cast<std::size_t>(in.tellg());
    if (size > (1u << 20))
        return Error(errc::invalid_argument, "private key " + path + " is larger than 1 MiB");
    std::string text(size, '\0');
    in.seekg(0);
    in.read(text.data(), static_cast<std::streamsize>(size));
    if (text.find("PRIVATE KEY-----") == std::string::npos) {
        Secret discard(std::move(text));  // wiped on the way out
        return Error(errc::invalid_argument,
                     "private key " + path + " is not a PEM or OpenSSH private key file");
    }
    auto key = std::make_shared<PrivateKey>();
    key->path = path;
    key->contents = Secret(std::move(text));
    key->passphrase = std::move(passphrase);
    key->type = detail::private_key_type(key->contents.reveal());
    if (auto signer = detail::KeySigner::parse(key->contents.reveal(), key->passphrase.reveal()))
        key->signer = std::move(*signer);
    return std::shared_ptr<const PrivateKey>(std::move(key));
}

}  // namespace guardia::ssh
