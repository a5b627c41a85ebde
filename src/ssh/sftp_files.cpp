// Small file operations on a session's open SFTP channel (Session::sftp_read, sftp_unlink,
// sftp_rmdir): each is a handful of SFTP requests the node's running sftp server answers.
#include "detail/session_impl.hpp"

#include <libssh2_sftp.h>

#include <array>

namespace guardia::ssh {

namespace asio = boost::asio;

namespace {

// An SFTP request failed: the server's status when it sent one, else libssh2's own error
// (which, for a transport failure, retires the session).
Error sftp_error(Session::Impl& impl, std::string_view what, long rc, bool* missing = nullptr) {
    std::string msg = impl.peer + ": " + std::string(what) + " failed: ";
    if (rc == LIBSSH2_ERROR_SFTP_PROTOCOL) {
        const unsigned long status = libssh2_sftp_last_error(impl.sftp.get());
        if (missing != nullptr && status == LIBSSH2_FX_NO_SUCH_FILE) *missing = true;
        msg += make_sftp_error(status).message();
        return Error(errc::sftp_failed, std::move(msg));
    }
    return impl.fail(errc::sftp_failed, what, rc);
}

// The checks every operation starts with: one operation at a time, a usable session, an open
// SFTP channel, a path that can be sent as is.
std::optional<Error> refuse(Session::Impl& impl, const std::string& path) {
    if (impl.broken) return impl.unusable_error();
    if (!impl.sftp)
        return Error(errc::invalid_argument, impl.peer + ": no SFTP channel is open on this session");
    if (path.empty() || path.find('\0') != std::string::npos)
        return Error(errc::invalid_argument, impl.peer + ": SFTP path must be non-empty, without NUL");
    return std::nullopt;
}

// One SFTP REMOVE (a file) or RMDIR (a directory): sftp_unlink, sftp_rmdir.
asio::awaitable<Result<void>> remove_path(Session::Impl& impl, const std::string& path,
                                          std::chrono::milliseconds timeout, bool directory) {
    BusyGuard busy(impl);
    if (!busy.acquired()) co_return busy_error(impl);
    if (auto no = refuse(impl, path)) co_return *no;
    std::string what = directory ? "removing directory " : "removing ";
    what += path;
    boost::system::error_code interrupted;
    const long rc = co_await impl.drive(
        [&] {
            const auto len = static_cast<unsigned>(path.size());
            return directory ? libssh2_sftp_rmdir_ex(impl.sftp.get(), path.c_str(), len)
                             : libssh2_sftp_unlink_ex(impl.sftp.get(), path.c_str(), len);
        },
        Clock::now() + timeout, interrupted);
    if (interrupted) co_return impl.interrupted_error(interrupted, what, timeout);
    if (rc != 0) co_return sftp_error(impl, what, rc);
    co_return Result<void>{};
}

}  // namespace

bool Session::sftp_started() const noexcept { return impl_->sftp != nullptr && !impl_->broken; }

asio::awaitable<Result<std::string>> Session::sftp_read(std::string path, std::size_t max_bytes,
                                                        std::chrono::milliseconds timeout,
                                                        bool& missing) {
    Impl& impl = *impl_;
    missing = false;
    BusyGuard busy(impl);
    if (!busy.acquired()) co_return busy_error(impl);
    if (auto no = refuse(impl, path)) co_return *no;
    const auto deadline = Clock::now() + timeout;
    boost::system::error_code interrupted;
    detail::SftpFileHandle file;
    ParkOnExit park(impl.parked_files, file);  // an early return never frees a live handle
    long rc = co_await impl.drive(
        [&]() -> long {
            file.reset(libssh2_sftp_open_ex(impl.sftp.get(), path.c_str(),
                                            static_cast<unsigned>(path.size()), LIBSSH2_FXF_READ, 0,
                                            LIBSSH2_SFTP_OPENFILE));
            return file ? 0 : impl.last_errno();
        },
        deadline, interrupted);
    if (interrupted) co_return impl.interrupted_error(interrupted, "opening " + path, timeout);
    if (rc != 0) co_return sftp_error(impl, "opening " + path, rc, &missing);
    std::string text;
    std::array<char, 4096> buf{};
    for (;;) {
        rc = co_await impl.drive([&] { return libssh2_sftp_read(file.get(), buf.data(), buf.size()); },
                                 deadline, interrupted);
        if (interrupted) co_return impl.interrupted_error(interrupted, "reading " + path, timeout);
        if (rc < 0) co_return sftp_error(impl, "reading " + path, rc);
        if (rc == 0) break;
        if (text.size() + static_cast<std::size_t>(rc) > max_bytes)
            co_return Error(errc::invalid_argument,
                            impl.peer + ": " + path + " is larger than " + std::to_string(max_bytes) +
                                " bytes");
        text.append(buf.data(), static_cast<std::size_t>(rc));
    }
    rc = co_await impl.drive([&] { return libssh2_sftp_close_handle(file.get()); }, deadline,
                             interrupted);
    if (interrupted) co_return impl.interrupted_error(interrupted, "closing " + path, timeout);
    (void)file.release();  // libssh2 freed it, whatever rc says
    if (rc != 0) co_return sftp_error(impl, "closing " + path, rc);
    co_return text;
}

asio::awaitable<Result<void>> Session::sftp_unlink(std::string path,
                                                   std::chrono::milliseconds timeout) {
    co_return co_await remove_path(*impl_, path, timeout, false);
}

asio::awaitable<Result<void>> Session::sftp_rmdir(std::string path,
                                                  std::chrono::milliseconds timeout) {
    co_return co_await remove_path(*impl_, path, timeout, true);
}

}  // namespace guardia::ssh
