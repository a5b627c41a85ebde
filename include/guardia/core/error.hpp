// Guardia's error vocabulary.
//
// Failure of a node is normal, so it is a value: an error_code (what kind of failure, for
// programs) plus a message (what happened, for people: names the node, step and cause).
// Exceptions are reserved for programming errors and start-up failures.
#pragma once

#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

#include <string>
#include <system_error>
#include <type_traits>

namespace guardia {

enum class errc {
    ok = 0,
    timeout = 1,              // an operation exceeded its deadline
    cancelled,                // an operation was cancelled by its owner
    connect_failed,           // TCP connect or name resolution failed
    handshake_failed,         // SSH protocol handshake failed
    connection_lost,          // the connection dropped mid-operation (worth a retry)
    host_key_unknown,         // host not in known_hosts under the strict policy
    host_key_changed,         // host presented a key different from known_hosts
    host_key_revoked,         // host key is marked @revoked in known_hosts
    auth_failed,              // every configured authentication method was refused
    session_unusable,         // an earlier interrupted libssh2 call left the session unusable
    channel_failed,           // opening or driving an SSH channel failed
    remote_command_failed,    // a remote command exited non-zero or by a signal
    checksum_mismatch,        // remote checksum differs from the local one
    short_write,              // fewer bytes reached the remote file than were sent
    sftp_failed,              // an SFTP operation failed
    local_io_failed,          // reading a local file failed
    invalid_argument,         // a caller passed a value that cannot be used
    security_violation,       // a command was refused by the command sanitizer
    precheck_failed,          // a node failed its pre-check (disk, paths, scripts)
    node_locked,              // another rollout holds the node's deploy lock
    audit_unavailable,        // the audit log cannot be written: the step was not started
};

const boost::system::error_category& guardia_category() noexcept;

inline boost::system::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), guardia_category()};
}

// libssh2's own (negative) error codes, LIBSSH2_ERROR_*.
const boost::system::error_category& libssh2_category() noexcept;
inline boost::system::error_code make_libssh2_error(int rc) noexcept {
    return {rc, libssh2_category()};
}

// SFTP status codes, LIBSSH2_FX_*.
const boost::system::error_category& sftp_category() noexcept;
inline boost::system::error_code make_sftp_error(unsigned long status) noexcept {
    return {static_cast<int>(status), sftp_category()};
}

// A failure as a value: the code says what kind, the message says what happened.
struct Error {
    boost::system::error_code code;
    std::string message;

    Error() = default;
    Error(boost::system::error_code c, std::string m) : code(c), message(std::move(m)) {}
    Error(errc c, std::string m) : code(make_error_code(c)), message(std::move(m)) {}

    // "message (category:value text)" for humans and logs.
    std::string describe() const;
};

[[noreturn]] void throw_exception_from_error(const Error& e, const boost::source_location& loc);

template <class T>
using Result = boost::system::result<T, Error>;

}  // namespace guardia

namespace boost::system {
template <>
struct is_error_code_enum<guardia::errc> : std::true_type {};
}  // namespace boost::system
