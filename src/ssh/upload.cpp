#include "detail/session_impl.hpp"
#include "guardia/core/artifact_bytes.hpp"
#include "guardia/core/digest.hpp"
#include "guardia/core/local_io.hpp"
#include "guardia/core/shell.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

namespace guardia::ssh {

namespace asio = boost::asio;

namespace {

// libssh2 splits a write into 30,000-byte SFTP packets and keeps all of one call in flight:
// multiples of 30,000 keep the pipe full (LIBSSH2-NOTES.md). 240 KB per chunk streams as fast as
// 960 KB here (measured) and keeps a fleet-wide rollout's memory down: an upload holds about two
// chunks, plus libssh2's copy of what is in flight.
constexpr std::size_t kChunk = 30000 * 8;

// The local file being sent. Touched only on the local-I/O pool, one job at a time.
struct LocalSource {
    std::string path;
    int fd = -1;
    std::uint64_t size = 0;
    std::uint64_t read = 0;
    StreamDigests digests;
    bool hashing = true;  // off when the caller already knows the sha256

    LocalSource() = default;
    LocalSource(const LocalSource&) = delete;
    LocalSource& operator=(const LocalSource&) = delete;
    ~LocalSource() {
        if (fd >= 0) ::close(fd);
    }

    Result<void> open() {
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return Error(errc::local_io_failed, "cannot open " + path + ": " + std::strerror(errno));
        struct stat st {};
        if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
            return Error(errc::local_io_failed, path + " is not a regular file");
        size = static_cast<std::uint64_t>(st.st_size);
        return {};
    }

    // Fills `buf` (up to its size) from the file and feeds the digests.
    Result<std::size_t> next(std::vector<char>& buf) {
        std::size_t got = 0;
        while (got < buf.size()) {
            ssize_t n = ::read(fd, buf.data() + got, buf.size() - got);
            if (n < 0) {
                if (errno == EINTR) continue;
                return Error(errc::local_io_failed, "reading " + path + ": " + std::strerror(errno));
            }
            if (n == 0) break;
            got += static_cast<std::size_t>(n);
        }
        if (hashing) digests.update(buf.data(), got);
        read += got;
        if (got < buf.size() && read != size)
            return Error(errc::local_io_failed, path + " changed size while being read (" +
                                                    std::to_string(size) + " bytes at start, " +
                                                    std::to_string(read) + " read)");
        return got;
    }
};

std::string random_suffix() {
    unsigned char r[6];
    if (RAND_bytes(r, sizeof r) != 1) {
        auto t = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count());
        std::memcpy(r, &t, sizeof r);
    }
    return to_hex(r, sizeof r);
}

std::string sftp_failure(Session::Impl& impl, LIBSSH2_SFTP* sftp, std::string_view what, long rc) {
    std::string msg = impl.peer + ": " + std::string(what) + " failed: ";
    if (rc == LIBSSH2_ERROR_SFTP_PROTOCOL && sftp != nullptr)
        msg += make_sftp_error(libssh2_sftp_last_error(sftp)).message();
    else
        msg += impl.last_error_text();
    if (is_transport_failure(rc)) {
        msg += " (connection lost)";
        impl.mark_broken(msg);
    }
    return msg;
}

// Unacknowledged data and the next chunks live in one buffer: libssh2 turns all it is given
// into SFTP WRITE packets at once and, on the next call, skips what it already packetized.
// Handing it the next chunk before the previous one is fully acknowledged keeps the pipe full
// (with one chunk at a time the pipe drained at every chunk boundary).
struct SlidingBuffer {
    // append() happens only when less than one chunk is pending, so two chunks always suffice.
    std::vector<char> bytes = std::vector<char>(2 * kChunk);
    std::size_t head = 0;  // first byte not yet acknowledged
    std::size_t tail = 0;  // end of data

    std::size_t pending() const noexcept { return tail - head; }
    void append(const char* data, std::size_t n) {
        if (bytes.size() - tail < n) {
            std::memmove(bytes.data(), bytes.data() + head, pending());
            tail -= head;
            head = 0;
        }
        std::memcpy(bytes.data() + tail, data, n);
        tail += n;
    }
};

// Bounds what one libssh2_sftp_write call may packetize when streaming from memory: libssh2
// copies all it is given into WRITE packets at once, so this is the memory an upload holds
// (as much as the file path's two chunks), whatever the artifact's size.
constexpr std::size_t kMemoryWindow = 2 * kChunk;

// Why a libssh2_sftp_write call returned without progress: interrupted (the whole deadline,
// a stall, or cancellation), failed, or the server accepted nothing.
Error write_failure(Session::Impl& impl, boost::system::error_code interrupted, bool stalled,
                    long n, const std::string& staging, std::chrono::milliseconds stall,
                    std::chrono::milliseconds limit) {
    if (interrupted) {
        if (interrupted == make_error_code(errc::timeout) && stalled)
            return impl.interrupted_error(interrupted, "upload (no progress)", stall);
        return impl.interrupted_error(interrupted, "upload", limit);
    }
    if (n < 0)
        return Error(errc::sftp_failed, sftp_failure(impl, impl.sftp.get(), "writing " + staging, n));
    return Error(errc::short_write, impl.peer + ": writing " + staging + ": server accepted 0 bytes");
}

struct WriteJob {
    Session::Impl* impl;
    LIBSSH2_SFTP_HANDLE* handle;
    SlidingBuffer* buffer;
    std::size_t keep_in_flight;  // return once fewer bytes than this are unacknowledged
    Clock::time_point deadline;
    std::chrono::milliseconds stall;
    std::chrono::milliseconds limit;
    std::string staging;
};

asio::awaitable<Result<void>> write_job(WriteJob job) {
    auto& impl = *job.impl;
    auto& buf = *job.buffer;
    while (buf.pending() > 0 && buf.pending() >= job.keep_in_flight) {
        const auto step_deadline = std::min(job.deadline, Clock::now() + job.stall);
        boost::system::error_code interrupted;
        long n = co_await impl.drive(
            [&] { return libssh2_sftp_write(job.handle, buf.bytes.data() + buf.head, buf.pending()); },
            step_deadline, interrupted);
        if (interrupted || n <= 0)
            co_return write_failure(impl, interrupted, step_deadline < job.deadline, n, job.staging,
                                    job.stall, job.limit);
        buf.head += static_cast<std::size_t>(n);
    }
    co_return Result<void>{};
}

// Streams shared in-memory bytes straight to the open staging file: no read, no copy, no
// buffer of ours. Each call hands libssh2 the bytes from the first unacknowledged one on
// (as it requires), at most kMemoryWindow of them, and it packetizes only what is new.
// `acked` counts what the server acknowledged, also when a failure ends the loop.
asio::awaitable<Result<void>> write_from_memory(Session::Impl& impl, LIBSSH2_SFTP_HANDLE* handle,
                                                const ArtifactBytes& bytes, std::uint64_t& acked,
                                                Clock::time_point deadline,
                                                const UploadOptions& opts,
                                                const std::string& staging) {
    while (acked < bytes.size()) {
        const char* from = bytes.data() + acked;
        const std::size_t window = std::min<std::size_t>(bytes.size() - acked, kMemoryWindow);
        const auto step_deadline = std::min(deadline, Clock::now() + opts.stall_timeout);
        boost::system::error_code interrupted;
        long n = co_await impl.drive([&] { return libssh2_sftp_write(handle, from, window); },
                                     step_deadline, interrupted);
        if (interrupted || n <= 0)
            co_return write_failure(impl, interrupted, step_deadline < deadline, n, staging,
                                    opts.stall_timeout, opts.timeout);
        acked += static_cast<std::uint64_t>(n);
        if (opts.on_progress) opts.on_progress(acked, bytes.size());
    }
    co_return Result<void>{};
}

std::string verify_command(const std::string& staging, const std::string& final_path,
                           const std::string& sha256, std::uint64_t bytes, const std::string* md5,
                           bool rename) {
    // One round trip: hash, compare, and only then rename (the mode was set over SFTP). A
    // mismatch removes the staging file. Hashing reads stdin (sha256sum escapes odd file names
    // in its output).
    std::string cmd = "s=" + shell_quote(staging) + "; " + remote_sha256_script("\"$s\"", "h", bytes) +
                      "if [ \"$h\" != " + sha256 + " ]; then rm -f -- \"$s\"; "
                      "echo \"remote sha256 $h\" >&2; exit 92; fi; ";
    if (md5 != nullptr)
        cmd += "d() { if command -v openssl >/dev/null 2>&1; then openssl dgst -$1 -r; "
               "else ${1}sum; fi; }; m=$(d md5 < \"$s\") || exit 91; m=${m%% *}; if [ \"$m\" != " + *md5 +
               " ]; then rm -f -- \"$s\"; echo \"remote md5 $m\" >&2; exit 93; fi; ";
    // -T: the file replaces the final name itself, never lands inside a directory of that name.
    if (rename) cmd += "mv -f -T -- \"$s\" " + shell_quote(final_path) + " || exit 94; ";
    cmd += "echo \"$h\"";
    return cmd;
}


// The body of both upload overloads. Exactly one source: `bytes` (in memory, shared) when it is
// set, else the file at `local_path`. The callers' frames own every argument.
asio::awaitable<Result<UploadResult>> upload_from(Session::Impl& impl, const std::string& local_path,
                                                  const std::shared_ptr<const ArtifactBytes>& bytes,
                                                  const std::string& remote_path,
                                                  const UploadOptions& opts) {
    BusyGuard busy(impl);
    if (!busy.acquired()) co_return busy_error(impl);
    if (impl.broken) co_return impl.unusable_error();
    if (remote_path.empty() || remote_path.back() == '/' ||
        remote_path.find_first_of(std::string_view("\0\n", 2)) != std::string::npos)
        co_return Error(errc::invalid_argument,
                        impl.peer + ": remote path '" + remote_path +
                            "' must name a file and hold no newline or NUL");
    // It is written into the verification command: only a digest may get there.
    if (!opts.expected_sha256.empty() &&
        (opts.expected_sha256.size() != 64 ||
         opts.expected_sha256.find_first_not_of("0123456789abcdef") != std::string::npos))
        co_return Error(errc::invalid_argument,
                        impl.peer + ": expected sha256 '" + opts.expected_sha256 +
                            "' is not 64 lowercase hex digits");
    if (!opts.verify_remotely && (opts.rename_into_place || opts.expected_sha256.empty()))
        co_return Error(errc::invalid_argument,
                        impl.peer + ": an upload not verified remotely needs an expected sha256 "
                                    "and must not be renamed into place");
    const std::string source_name = bytes ? "the in-memory artifact" : local_path;
    const auto started = Clock::now();
    const auto deadline = started + opts.timeout;
    const auto slash = remote_path.rfind('/');
    const std::string dir = slash == std::string::npos ? std::string() : remote_path.substr(0, slash + 1);
    const std::string base = slash == std::string::npos ? remote_path : remote_path.substr(slash + 1);
    UploadResult result;
    result.remote_path = remote_path;
    // A recognisable name, so a later run can clean up what a cut connection left behind.
    result.staging_path = dir + ".guardia-stage." + base + "." + random_suffix();
    const std::string& staging = result.staging_path;

    LocalSource src;
    src.path = local_path;
    src.hashing = opts.expected_sha256.empty();
    bool staging_created = false;
    detail::SftpFileHandle file;
    // An early return must not free a live SFTP handle (that sends FXP_CLOSE): park it.
    ParkOnExit park(impl.parked_files, file);

    // Removes the staging file when we fail after creating it (best effort, short grace).
    auto cleanup = [&]() -> asio::awaitable<void> {
        if (impl.broken) co_return;
        boost::system::error_code interrupted;
        const auto grace = Clock::now() + std::chrono::seconds(5);
        if (file) {
            long rc = co_await impl.drive([&] { return libssh2_sftp_close_handle(file.get()); },
                                          grace, interrupted);
            if (rc != LIBSSH2_ERROR_EAGAIN) (void)file.release();
        }
        if (staging_created && !interrupted && impl.sftp)
            co_await impl.drive(
                [&] {
                    return libssh2_sftp_unlink_ex(impl.sftp.get(), staging.c_str(),
                                                  static_cast<unsigned>(staging.size()));
                },
                grace, interrupted);
        // A clean-up call left half-done leaves libssh2 mid-packet: retire the session.
        if (interrupted) impl.mark_broken(impl.peer + ": cleaning up " + staging + " timed out");
    };

    try {
        if (!bytes) {
            auto opened = co_await run_blocking([&src] { return src.open(); });
            if (!opened)
                co_return Error(opened.error().code, impl.peer + ": " + opened.error().message);
        }

        boost::system::error_code interrupted;
        if (!impl.sftp) {
            LIBSSH2_SFTP* sftp = nullptr;
            long rc = co_await impl.drive(
                [&]() -> long {
                    sftp = libssh2_sftp_init(impl.session.get());
                    return sftp != nullptr ? 0 : impl.last_errno();
                },
                deadline, interrupted);
            if (interrupted) co_return impl.interrupted_error(interrupted, "starting SFTP", opts.timeout);
            if (rc != 0) co_return impl.fail(errc::sftp_failed, "starting SFTP", rc);
            impl.sftp.reset(sftp);
        }

        long rc = co_await impl.drive(
            [&]() -> long {
                file.reset(libssh2_sftp_open_ex(
                    impl.sftp.get(), staging.c_str(), static_cast<unsigned>(staging.size()),
                    LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC | LIBSSH2_FXF_EXCL,
                    static_cast<long>(opts.mode & 0777 & ~0022u) | 0600, LIBSSH2_SFTP_OPENFILE));
                return file ? 0 : impl.last_errno();
            },
            deadline, interrupted);
        if (interrupted)
            co_return impl.interrupted_error(interrupted, "creating " + staging, opts.timeout);
        if (rc != 0)
            co_return Error(errc::sftp_failed,
                            sftp_failure(impl, impl.sftp.get(), "creating " + staging, rc));
        staging_created = true;

        Error failure;
        std::uint64_t expected_bytes = 0;
        if (bytes) {
            expected_bytes = bytes->size();
            auto w = co_await write_from_memory(impl, file.get(), *bytes, result.bytes, deadline,
                                                opts, staging);
            if (!w) failure = w.error();
        } else {
            // While chunk k+1 is read (and hashed) on the local-I/O pool, the loop keeps
            // writing, leaving up to one chunk in flight when it comes back for the next.
            SlidingBuffer window;
            std::vector<char> incoming(kChunk);
            auto first = co_await run_blocking([&] { return src.next(incoming); });
            if (!first) failure = first.error();
            std::size_t incoming_len = first ? *first : 0;
            bool more = incoming_len == kChunk;
            if (first) window.append(incoming.data(), incoming_len);
            while (!failure.code && window.pending() > 0) {
                WriteJob job{&impl,    file.get(), &window,           more ? kChunk : 1,
                             deadline, opts.stall_timeout, opts.timeout, staging};
                if (more) {
                    auto [order, read_result, ex_write, write_result] =
                        co_await asio::experimental::make_parallel_group(
                            async_run_blocking([&src, &incoming] { return src.next(incoming); },
                                               asio::deferred),
                            asio::co_spawn(impl.executor, write_job(std::move(job)), asio::deferred))
                            .async_wait(asio::experimental::wait_for_all(), asio::use_awaitable);
                    (void)order;
                    if (ex_write) std::rethrow_exception(ex_write);
                    if (!write_result) {
                        failure = write_result.error();
                    } else if (!read_result) {
                        failure = read_result.error();
                    } else {
                        window.append(incoming.data(), *read_result);
                        more = *read_result == kChunk;
                        if (opts.on_progress) opts.on_progress(src.read - window.pending(), src.size);
                    }
                } else if (auto w = co_await write_job(std::move(job)); !w) {
                    failure = w.error();
                }
            }
            result.bytes = src.read - window.pending();
            expected_bytes = src.size;
        }
        if (!failure.code && result.bytes != expected_bytes)
            failure = Error(errc::short_write, impl.peer + ": sent " + std::to_string(result.bytes) +
                                                   " of " + std::to_string(expected_bytes) +
                                                   " bytes of " + source_name);
        if (failure.code) {
            if (failure.message.find(impl.peer) != 0)
                failure.message = impl.peer + ": " + failure.message;
            co_await cleanup();
            co_return failure;
        }
        // The digest the remote copy must have. In-memory bytes were hashed once when they
        // were read; an expected digest from the caller takes precedence (the remote check
        // then proves the bytes are the intended ones).
        bool md5_known = true;
        if (bytes) {
            result.sha256 = opts.expected_sha256.empty() ? bytes->sha256() : opts.expected_sha256;
            result.md5 = bytes->md5();
        } else if (src.hashing) {
            src.digests.finish(result.sha256, result.md5);
        } else {
            result.sha256 = opts.expected_sha256;  // verified remotely below, like a local hash
            md5_known = false;
        }

        // The exact mode (the open's was masked by the server's umask), set by the SFTP
        // server on the open handle: the node starts no chmod for it.
        LIBSSH2_SFTP_ATTRIBUTES attrs{};
        attrs.flags = LIBSSH2_SFTP_ATTR_PERMISSIONS;
        attrs.permissions = opts.mode & 07777u;
        rc = co_await impl.drive([&] { return libssh2_sftp_fsetstat(file.get(), &attrs); },
                                 deadline, interrupted);
        if (interrupted)
            co_return impl.interrupted_error(interrupted, "setting the mode of " + staging,
                                             opts.timeout);
        if (rc != 0) {
            auto msg = sftp_failure(impl, impl.sftp.get(), "setting the mode of " + staging, rc);
            co_await cleanup();
            co_return Error(errc::sftp_failed, std::move(msg));
        }

        rc = co_await impl.drive([&] { return libssh2_sftp_close_handle(file.get()); }, deadline,
                                 interrupted);
        if (interrupted)
            co_return impl.interrupted_error(interrupted, "closing " + staging, opts.timeout);
        (void)file.release();  // libssh2 freed it, whatever rc says
        if (rc != 0) {
            auto msg = sftp_failure(impl, impl.sftp.get(), "closing " + staging, rc);
            co_await cleanup();
            co_return Error(errc::sftp_failed, std::move(msg));
        }

        const auto transferred = Clock::now();
        result.transfer_duration =
            std::chrono::duration_cast<std::chrono::microseconds>(transferred - started);
        if (opts.before_verify) {
            // The hook may use this session (nothing of ours is in flight meanwhile).
            impl.busy = false;
            co_await opts.before_verify(staging);
            impl.busy = true;
        }

        if (!opts.verify_remotely) {
            // The caller verifies result.sha256 remotely before the file is used.
            result.duration =
                std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started);
            co_return result;
        }
        ExecOptions verify_opts;
        verify_opts.timeout = std::max<std::chrono::milliseconds>(
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()),
            std::chrono::seconds(5));
        const std::string verify = verify_command(staging, remote_path, result.sha256, result.bytes,
                                                  opts.verify_md5 && md5_known ? &result.md5 : nullptr,
                                                  opts.rename_into_place);
        // Not passed to the sanitizer: this is the SSH layer's own script, not operator text.
        // Every value in it is shell-quoted (the paths) or checked to be hex (the digests),
        // and it needs "$s" as the operand of rm and mv, which a fail-closed sanitizer refuses
        // in operator text (see Pipeline::run_script in node_pipeline.cpp).
        auto verified = co_await impl.run_command(verify, verify_opts);
        if (!verified) {
            co_await cleanup();
            co_return verified.error();
        }
        const int code = verified->exit_code;
        if (code == 92 || code == 93) {
            auto err = verified->err;
            while (!err.empty() && err.back() == '\n') err.pop_back();
            co_return Error(errc::checksum_mismatch,
                            impl.peer + ": " + (code == 92 ? "sha256" : "md5") + " mismatch for " +
                                staging + ": " + (bytes || src.hashing ? "local " : "expected ") +
                                (code == 92 ? result.sha256 : result.md5) + ", " + err +
                                "; staging file removed, " + remote_path + " untouched");
        }
        if (!verified->succeeded()) {
            co_await cleanup();
            co_return Error(errc::remote_command_failed,
                            impl.peer + ": verifying " + staging + " failed (exit " +
                                std::to_string(code) + "): " + verified->err_tail());
        }
        if (opts.rename_into_place) result.staging_path.clear();
        result.verify_duration =
            std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - transferred);
    } catch (const boost::system::system_error&) {
        co_return impl.interrupted_error(make_error_code(errc::cancelled), "upload", opts.timeout);
    }
    result.duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started);
    co_return result;
}

}  // namespace

asio::awaitable<Result<UploadResult>> Session::upload(std::string local_path,
                                                      std::string remote_path) {
    co_return co_await upload(std::move(local_path), std::move(remote_path), UploadOptions{});
}

asio::awaitable<Result<UploadResult>> Session::upload(std::string local_path,
                                                      std::string remote_path,
                                                      UploadOptions options) {
    co_return co_await upload_from(*impl_, local_path, nullptr, remote_path, options);
}

asio::awaitable<Result<UploadResult>> Session::upload(std::shared_ptr<const ArtifactBytes> bytes,
                                                      std::string remote_path) {
    co_return co_await upload(std::move(bytes), std::move(remote_path), UploadOptions{});
}

asio::awaitable<Result<UploadResult>> Session::upload(std::shared_ptr<const ArtifactBytes> bytes,
                                                      std::string remote_path,
                                                      UploadOptions options) {
    if (!bytes)
        co_return Error(errc::invalid_argument,
                        impl_->peer + ": upload of " + remote_path + " given no bytes");
    co_return co_await upload_from(*impl_, std::string(), bytes, remote_path, options);
}

}  // namespace guardia::ssh
