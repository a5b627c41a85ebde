// One SSH connection to one node, driven by libssh2 in non-blocking mode on an Asio executor.
//
// Every operation is an awaitable with a deadline and honours Asio cancellation. A Session
// runs one operation at a time (libssh2 sessions are not re-entrant); many Sessions share
// one io_context. When a libssh2 call that carries protocol state is interrupted (deadline
// or cancellation) the session is marked unusable and later operations fail fast with
// errc::session_unusable: it must be dropped, never reused.
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/ssh/credentials.hpp"
#include "guardia/ssh/known_hosts.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace guardia {
class ArtifactBytes;
}

namespace guardia::ssh {

using namespace std::chrono_literals;

// The option structs have a user-declared constructor on purpose: GCC 12 miscompiles a braced
// aggregate temporary passed by value to a coroutine (it copies it bitwise into the frame, so a
// std::string member ends up pointing into the caller's object; found with ASan).
struct ConnectOptions {
    ConnectOptions() noexcept {}
    std::string host;
    std::uint16_t port = 22;
    Credentials credentials;
    std::shared_ptr<KnownHosts> known_hosts;  // required
    HostKeyPolicy host_key_policy = HostKeyPolicy::strict;
    // Covers TCP connect, SSH handshake, host-key check and authentication.
    std::chrono::milliseconds timeout = 10s;
    std::shared_ptr<spdlog::logger> logger;  // optional; never receives secrets
};

struct ExecOptions {
    ExecOptions() noexcept {}
    std::chrono::milliseconds timeout = 60s;
    std::size_t max_stdout = 1 << 20;  // bytes kept; the rest is read and counted, not kept
    std::size_t max_stderr = 64 << 10;
    // Shown instead of the command in error messages (and so in logs): set it when the
    // command carries something that must not be repeated. Empty: the command itself.
    std::string display;
    // Called on the loop each time stdout grows, with the stdout kept so far: lets a caller
    // follow a composed command's progress markers as they arrive. A returned duration starts
    // a new deadline of that length from now (the next phase's own budget) in place of the
    // current one; nullopt keeps the current deadline.
    std::function<std::optional<std::chrono::milliseconds>(const std::string& out)> on_stdout;
};

struct ExecResult {
    int exit_code = -1;       // -1 when the command died by a signal
    std::string exit_signal;  // e.g. "TERM"; empty when it exited normally
    std::string out;
    std::string err;
    bool out_truncated = false;
    bool err_truncated = false;
    std::uint64_t out_bytes = 0;  // total produced, kept or not
    std::uint64_t err_bytes = 0;
    std::chrono::microseconds duration{0};

    bool succeeded() const noexcept { return exit_signal.empty() && exit_code == 0; }
    // The last `max` bytes of stderr, for error messages.
    std::string err_tail(std::size_t max = 512) const;
};

struct UploadOptions {
    UploadOptions() noexcept {}
    unsigned mode = 0644;
    std::chrono::milliseconds timeout = 30min;        // the whole upload
    std::chrono::milliseconds stall_timeout = 60s;    // no progress at all for this long
    bool verify_md5 = false;                          // also check md5sum remotely
    // The sha256 (64 lowercase hex digits) the remote copy must have, when the caller knows it
    // (a rollout hashes each artifact once for all nodes). Uploading a file: local hashing is
    // skipped (MD5 is then not computed) and a local file that changed since is caught as a
    // mismatch. Uploading ArtifactBytes: checked instead of the digest they carry.
    std::string expected_sha256;
    // true: rename the verified staging file onto the remote path.
    // false: leave the verified file under its staging name (UploadResult::staging_path)
    //        for the caller to move into place later.
    bool rename_into_place = true;
    // false: no remote verification at all. The staging file is left unverified under its
    // staging name (rename_into_place must be false) and UploadResult::sha256 is the digest it
    // must have: the caller verifies it remotely before using it (the node pipeline does so in
    // its activation command, saving a remote command per node).
    bool verify_remotely = true;
    // Called after the staging file is written and closed, before remote verification.
    // Lets tests tamper with the staging file; production code leaves it empty.
    std::function<boost::asio::awaitable<void>(const std::string& staging_path)> before_verify;
    // Called on the loop as the server acknowledges bytes (acknowledged so far, total size).
    // For the crash tests' "mid-transfer" failpoint; production code leaves it empty.
    std::function<void(std::uint64_t acked, std::uint64_t total)> on_progress;
};

struct UploadResult {
    std::string remote_path;
    std::string staging_path;
    std::uint64_t bytes = 0;
    std::string sha256;  // lowercase hex, verified remotely: computed while streaming, or the
                         // expected one, or the one the ArtifactBytes carry
    std::string md5;     // lowercase hex when known (not for a file with expected_sha256);
                         // verified remotely if asked
    std::chrono::microseconds duration{0};           // the whole upload
    std::chrono::microseconds transfer_duration{0};  // until the staging file was closed
    std::chrono::microseconds verify_duration{0};    // remote checksum (+ rename)
};

// What a connection negotiated, for audit and for checking that the cheap secure methods win.
struct NegotiatedMethods {
    std::string kex;
    std::string host_key;
    std::string cipher_out;  // client to server, e.g. "aes128-ctr"
    std::string cipher_in;   // server to client
    std::string mac_out;     // e.g. "hmac-sha2-256"; with AES-GCM the cipher authenticates
    std::string mac_in;
};

// Overloads rather than defaulted option arguments: see the note on the option structs.
class Session {
public:
    // Connects, checks the host key, authenticates. Errors name the host and the step.
    static boost::asio::awaitable<Result<std::unique_ptr<Session>>> connect(
        boost::asio::any_io_executor executor, ConnectOptions options);

    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // Runs one command on its own channel. A non-zero exit is a successful exec with
    // ExecResult::exit_code set; only transport problems and the deadline are errors.
    boost::asio::awaitable<Result<ExecResult>> exec(std::string command, ExecOptions options);
    boost::asio::awaitable<Result<ExecResult>> exec(std::string command);

    // Like exec, but a non-zero exit or a signal is an errc::remote_command_failed error
    // whose message carries the exit status and the stderr tail.
    boost::asio::awaitable<Result<ExecResult>> exec_checked(std::string command,
                                                            ExecOptions options);
    boost::asio::awaitable<Result<ExecResult>> exec_checked(std::string command);

    // Streams a local file to `remote_path` over SFTP through a staging name beside it,
    // hashing while streaming; see UploadOptions. Leaves nothing under the final name unless
    // the remote sha256 matched.
    boost::asio::awaitable<Result<UploadResult>> upload(std::string local_path,
                                                        std::string remote_path,
                                                        UploadOptions options);
    boost::asio::awaitable<Result<UploadResult>> upload(std::string local_path,
                                                        std::string remote_path);
    // The same from bytes already in memory, shared read-only (one buffer serves every session
    // of a rollout): nothing is read from disk, copied or hashed per upload; libssh2 is handed
    // the buffer itself. The remote copy is verified against options.expected_sha256 when set,
    // else against bytes->sha256(). `bytes` must stay unmodified (it is const) and non-null.
    boost::asio::awaitable<Result<UploadResult>> upload(std::shared_ptr<const ArtifactBytes> bytes,
                                                        std::string remote_path,
                                                        UploadOptions options);
    boost::asio::awaitable<Result<UploadResult>> upload(std::shared_ptr<const ArtifactBytes> bytes,
                                                        std::string remote_path);

    // Small file operations on the SFTP channel an upload opened (they start none of their
    // own: sftp_started() says whether one is open). Each is a few SFTP requests answered by
    // the node's sftp server, which already runs: no shell, no process. For work that would
    // otherwise cost the node a remote command (releasing the deploy lock).
    bool sftp_started() const noexcept;
    // The whole file if it holds at most `max_bytes` (else errc::invalid_argument). For a file
    // that does not exist `missing` is set (and an errc::sftp_failed error returned).
    boost::asio::awaitable<Result<std::string>> sftp_read(std::string path, std::size_t max_bytes,
                                                          std::chrono::milliseconds timeout,
                                                          bool& missing);
    boost::asio::awaitable<Result<void>> sftp_unlink(std::string path,
                                                     std::chrono::milliseconds timeout);
    boost::asio::awaitable<Result<void>> sftp_rmdir(std::string path,
                                                    std::chrono::milliseconds timeout);

    // Orderly goodbye (SSH disconnect), bounded by `grace`. Never fails; the session is
    // unusable afterwards. Destroying a Session without it only frees resources.
    boost::asio::awaitable<void> disconnect(std::chrono::milliseconds grace);
    boost::asio::awaitable<void> disconnect();

    bool usable() const noexcept;
    // "user@host:port", for messages.
    const std::string& peer() const noexcept;
    // The verified host key (type and SHA256 fingerprint), for audit.
    const HostKey& host_key() const noexcept;
    // The algorithms the handshake settled on (empty strings once the session is freed).
    NegotiatedMethods negotiated() const;

    struct Impl;

private:
    explicit Session(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// Sessions currently alive in this process (for metrics and leak tests).
std::size_t open_session_count() noexcept;
// The libssh2 version the process runs with (libssh2_version), e.g. "1.10.0".
const char* library_version() noexcept;

}  // namespace guardia::ssh
