#include "guardia/core/error.hpp"

#include <libssh2.h>
#include <libssh2_sftp.h>

#include <stdexcept>

namespace guardia {
namespace {

class GuardiaCategory final : public boost::system::error_category {
public:
    const char* name() const noexcept override { return "guardia"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::ok: return "success";
            case errc::timeout: return "deadline exceeded";
            case errc::cancelled: return "operation cancelled";
            case errc::connect_failed: return "connection failed";
            case errc::handshake_failed: return "SSH handshake failed";
            case errc::connection_lost: return "connection lost";
            case errc::host_key_unknown: return "host key not known";
            case errc::host_key_changed: return "host key changed";
            case errc::host_key_revoked: return "host key revoked";
            case errc::auth_failed: return "authentication failed";
            case errc::session_unusable: return "SSH session unusable";
            case errc::channel_failed: return "SSH channel failed";
            case errc::remote_command_failed: return "remote command failed";
            case errc::checksum_mismatch: return "checksum mismatch";
            case errc::short_write: return "short write";
            case errc::sftp_failed: return "SFTP operation failed";
            case errc::local_io_failed: return "local I/O failed";
            case errc::invalid_argument: return "invalid argument";
            case errc::security_violation: return "security violation";
            case errc::precheck_failed: return "pre-check failed";
            case errc::node_locked: return "node locked by another rollout";
            case errc::audit_unavailable: return "audit log unavailable";
        }
        return "unknown guardia error";
    }
};

class Libssh2Category final : public boost::system::error_category {
public:
    const char* name() const noexcept override { return "libssh2"; }
    std::string message(int ev) const override {
        switch (ev) {
            case LIBSSH2_ERROR_NONE: return "no error";
            case LIBSSH2_ERROR_SOCKET_NONE: return "socket error";
            case LIBSSH2_ERROR_BANNER_RECV: return "failed to receive banner";
            case LIBSSH2_ERROR_BANNER_SEND: return "failed to send banner";
            case LIBSSH2_ERROR_INVALID_MAC: return "invalid MAC";
            case LIBSSH2_ERROR_KEX_FAILURE: return "key exchange failed";
            case LIBSSH2_ERROR_ALLOC: return "allocation failed";
            case LIBSSH2_ERROR_SOCKET_SEND: return "socket send failed";
            case LIBSSH2_ERROR_KEY_EXCHANGE_FAILURE: return "key exchange failure";
            case LIBSSH2_ERROR_TIMEOUT: return "timeout";
            case LIBSSH2_ERROR_HOSTKEY_INIT: return "host key init failed";
            case LIBSSH2_ERROR_HOSTKEY_SIGN: return "host key signature failed";
            case LIBSSH2_ERROR_DECRYPT: return "decryption failed";
            case LIBSSH2_ERROR_SOCKET_DISCONNECT: return "peer disconnected";
            case LIBSSH2_ERROR_PROTO: return "protocol error";
            case LIBSSH2_ERROR_PASSWORD_EXPIRED: return "password expired";
            case LIBSSH2_ERROR_FILE: return "file error";
            case LIBSSH2_ERROR_METHOD_NONE: return "no common method";
            case LIBSSH2_ERROR_AUTHENTICATION_FAILED: return "authentication failed";
            case LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED: return "public key unverified";
            case LIBSSH2_ERROR_CHANNEL_OUTOFORDER: return "channel out of order";
            case LIBSSH2_ERROR_CHANNEL_FAILURE: return "channel failure";
            case LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED: return "channel request denied";
            case LIBSSH2_ERROR_CHANNEL_UNKNOWN: return "unknown channel";
            case LIBSSH2_ERROR_CHANNEL_WINDOW_EXCEEDED: return "channel window exceeded";
            case LIBSSH2_ERROR_CHANNEL_PACKET_EXCEEDED: return "channel packet exceeded";
            case LIBSSH2_ERROR_CHANNEL_CLOSED: return "channel closed";
            case LIBSSH2_ERROR_CHANNEL_EOF_SENT: return "channel EOF already sent";
            case LIBSSH2_ERROR_SCP_PROTOCOL: return "SCP protocol error";
            case LIBSSH2_ERROR_ZLIB: return "zlib error";
            case LIBSSH2_ERROR_SOCKET_TIMEOUT: return "socket timeout";
            case LIBSSH2_ERROR_SFTP_PROTOCOL: return "SFTP protocol error";
            case LIBSSH2_ERROR_REQUEST_DENIED: return "request denied";
            case LIBSSH2_ERROR_METHOD_NOT_SUPPORTED: return "method not supported";
            case LIBSSH2_ERROR_INVAL: return "invalid argument";
            case LIBSSH2_ERROR_INVALID_POLL_TYPE: return "invalid poll type";
            case LIBSSH2_ERROR_PUBLICKEY_PROTOCOL: return "publickey protocol error";
            case LIBSSH2_ERROR_EAGAIN: return "would block";
            case LIBSSH2_ERROR_BUFFER_TOO_SMALL: return "buffer too small";
            case LIBSSH2_ERROR_BAD_USE: return "bad use";
            case LIBSSH2_ERROR_COMPRESS: return "compression error";
            case LIBSSH2_ERROR_OUT_OF_BOUNDARY: return "out of boundary";
            case LIBSSH2_ERROR_AGENT_PROTOCOL: return "agent protocol error";
            case LIBSSH2_ERROR_SOCKET_RECV: return "socket receive failed";
            case LIBSSH2_ERROR_ENCRYPT: return "encryption failed";
            case LIBSSH2_ERROR_BAD_SOCKET: return "bad socket";
            case LIBSSH2_ERROR_KNOWN_HOSTS: return "known hosts error";
            case LIBSSH2_ERROR_CHANNEL_WINDOW_FULL: return "channel window full";
            case LIBSSH2_ERROR_KEYFILE_AUTH_FAILED: return "key file authentication failed";
        }
        return "libssh2 error " + std::to_string(ev);
    }
};

class SftpCategory final : public boost::system::error_category {
public:
    const char* name() const noexcept override { return "sftp"; }
    std::string message(int ev) const override {
        switch (static_cast<unsigned long>(ev)) {
            case LIBSSH2_FX_OK: return "ok";
            case LIBSSH2_FX_EOF: return "end of file";
            case LIBSSH2_FX_NO_SUCH_FILE: return "no such file";
            case LIBSSH2_FX_PERMISSION_DENIED: return "permission denied";
            case LIBSSH2_FX_FAILURE: return "failure";
            case LIBSSH2_FX_BAD_MESSAGE: return "bad message";
            case LIBSSH2_FX_NO_CONNECTION: return "no connection";
            case LIBSSH2_FX_CONNECTION_LOST: return "connection lost";
            case LIBSSH2_FX_OP_UNSUPPORTED: return "operation unsupported";
            case LIBSSH2_FX_INVALID_HANDLE: return "invalid handle";
            case LIBSSH2_FX_NO_SUCH_PATH: return "no such path";
            case LIBSSH2_FX_FILE_ALREADY_EXISTS: return "file already exists";
            case LIBSSH2_FX_WRITE_PROTECT: return "write protected";
            case LIBSSH2_FX_NO_MEDIA: return "no media";
            case LIBSSH2_FX_NO_SPACE_ON_FILESYSTEM: return "no space on filesystem";
            case LIBSSH2_FX_QUOTA_EXCEEDED: return "quota exceeded";
            case LIBSSH2_FX_UNKNOWN_PRINCIPAL: return "unknown principal";
            case LIBSSH2_FX_LOCK_CONFLICT: return "lock conflict";
            case LIBSSH2_FX_DIR_NOT_EMPTY: return "directory not empty";
            case LIBSSH2_FX_NOT_A_DIRECTORY: return "not a directory";
            case LIBSSH2_FX_INVALID_FILENAME: return "invalid filename";
            case LIBSSH2_FX_LINK_LOOP: return "link loop";
        }
        return "sftp status " + std::to_string(ev);
    }
};

}  // namespace

const boost::system::error_category& guardia_category() noexcept {
    static const GuardiaCategory category;
    return category;
}

const boost::system::error_category& libssh2_category() noexcept {
    static const Libssh2Category category;
    return category;
}

const boost::system::error_category& sftp_category() noexcept {
    static const SftpCategory category;
    return category;
}

std::string Error::describe() const {
    std::string out = message.empty() ? code.message() : message;
    if (code) {
        out += " (";
        out += code.category().name();
        out += ':';
        out += std::to_string(code.value());
        out += ')';
    }
    return out;
}

void throw_exception_from_error(const Error& e, const boost::source_location&) {
    throw std::runtime_error(e.describe());
}

}  // namespace guardia
