#include "guardia/ssh/credentials.hpp"

#include "detail/key_signer.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace guardia::ssh {

Result<std::shared_ptr<const PrivateKey>> PrivateKey::load(const std::string& path,
                                                           Secret passphrase) {
    // One descriptor for the mode check and the read: the file checked is the file read.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return Error(errc::local_io_failed,
                     "cannot read private key " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        const int e = errno;
        ::close(fd);
        return Error(errc::local_io_failed,
                     "cannot read private key " + path + ": " + std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        return Error(errc::invalid_argument, "private key " + path + " is not a regular file");
    }
    // As OpenSSH (sshkey_perm_ok): a key others may read is no longer private, and using it
    // anyway would hide that. Refused before anything is sent; the owner fixes the mode.
    if ((st.st_mode & 077) != 0) {
        ::close(fd);
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
        return Error(errc::invalid_argument,
                     "UNPROTECTED PRIVATE KEY FILE: permissions " + std::string(mode) + " for '" +
                         path +
                         "' are too open: a private key must not be accessible by group or "
                         "others (chmod 600 it)");
    }
    if (static_cast<std::uint64_t>(st.st_size) > (1u << 20)) {
        ::close(fd);
        return Error(errc::invalid_argument, "private key " + path + " is larger than 1 MiB");
    }
    // Read straight into the string that becomes the Secret: no stream buffer keeps a copy.
    std::string text(static_cast<std::size_t>(st.st_size), '\0');
    std::size_t got = 0;
    int read_errno = 0;
    while (got < text.size()) {
        const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) read_errno = errno;
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    ::close(fd);
    if (got != text.size()) {
        Secret discard(std::move(text));  // wiped on the way out
        return Error(errc::local_io_failed,
                     "cannot read private key " + path + ": " +
                         (read_errno != 0 ? std::strerror(read_errno) : "it shrank while read"));
    }
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
