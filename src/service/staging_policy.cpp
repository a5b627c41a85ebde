#include "guardia/service/staging_policy.hpp"

#include "guardia/core/digest.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace guardia::service {

namespace {

class StagingCategory final : public boost::system::error_category {
  public:
    const char* name() const noexcept override { return "guardia.staging"; }
    std::string message(int ev) const override {
        switch (static_cast<staging_errc>(ev)) {
            case staging_errc::disabled: return "path form disabled";
            case staging_errc::refused: return "path refused";
            case staging_errc::not_found: return "no such file";
            case staging_errc::too_large: return "file too large";
            case staging_errc::mismatch: return "checksum mismatch";
        }
        return "staging error";
    }
};

// A file descriptor closed on every path out.
struct Fd {
    int fd = -1;
    explicit Fd(int f) : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
    Fd& operator=(Fd&& o) noexcept {
        std::swap(fd, o.fd);
        return *this;
    }
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

Error refused(const std::string& path, const std::string& why) {
    return staging_error(staging_errc::refused, "path: '" + path + "' " + why);
}

Error open_failed(const std::string& path, const std::string& comp, int err, bool last) {
    if (err == ELOOP || (err == ENOTDIR && !last))
        return refused(path, "is refused: '" + comp +
                                 "' is a symbolic link (or not a directory); the path form "
                                 "follows no link below service.drop_dir");
    if (err == ENOENT || err == ENOTDIR)
        return staging_error(staging_errc::not_found, "path: '" + path + "': no such file");
    if (err == EACCES || err == EPERM)
        return staging_error(staging_errc::not_found,
                             "path: '" + path + "': the service may not read it");
    return Error(errc::local_io_failed, "path: '" + path + "': cannot open: " + std::strerror(err));
}

}  // namespace

const boost::system::error_category& staging_category() noexcept {
    static const StagingCategory c;
    return c;
}

Error staging_error(staging_errc e, std::string message) {
    return Error(boost::system::error_code(static_cast<int>(e), staging_category()),
                 std::move(message));
}

Result<std::int64_t> copy_from_drop_dir(const std::string& drop_dir, const std::string& path,
                                        std::uint64_t max_bytes,
                                        const std::string& expected_sha256,
                                        const std::string& dest) {
    if (drop_dir.empty())
        return staging_error(staging_errc::disabled,
                             "path form disabled: set service.drop_dir to the directory the "
                             "service may copy artifacts from, or upload the bytes with PUT "
                             "/api/tasks/{sr_id}/artifacts/{name}");
    std::string root = drop_dir;
    while (root.size() > 1 && root.back() == '/') root.pop_back();
    const std::string prefix = root == "/" ? "/" : root + "/";
    if (path.size() <= prefix.size() || path.compare(0, prefix.size(), prefix) != 0)
        return refused(path, "is not inside service.drop_dir (" + root + ")");
    std::vector<std::string> comps;
    const std::string rel = path.substr(prefix.size());
    for (std::size_t i = 0;;) {
        const auto slash = rel.find('/', i);
        comps.push_back(rel.substr(i, slash == std::string::npos ? std::string::npos : slash - i));
        const auto& c = comps.back();
        if (c.empty() || c == "." || c == "..")
            return refused(path, "is refused: only a normal path below service.drop_dir (" + root +
                                     ") is read (no '//', '.' or '..')");
        if (slash == std::string::npos) break;
        i = slash + 1;
    }

    Fd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir.fd < 0)
        return Error(errc::local_io_failed, "path: service.drop_dir " + root +
                                                " cannot be opened: " + std::strerror(errno));
    for (std::size_t i = 0; i + 1 < comps.size(); ++i) {
        Fd next(::openat(dir.fd, comps[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (next.fd < 0) return open_failed(path, comps[i], errno, false);
        dir = std::move(next);
    }
    Fd in(::openat(dir.fd, comps.back().c_str(),
                   O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (in.fd < 0) return open_failed(path, comps.back(), errno, true);
    struct stat st {};
    if (::fstat(in.fd, &st) != 0)
        return Error(errc::local_io_failed, "path: '" + path + "': cannot stat: " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return refused(path, "is not a regular file");
    if (st.st_nlink != 1)
        return refused(path, "has " + std::to_string(st.st_nlink) +
                                 " hard links: only a file with one link is read (a hard link can "
                                 "bring any file of the file system into service.drop_dir)");
    if (static_cast<std::uint64_t>(st.st_size) > max_bytes)
        return staging_error(staging_errc::too_large,
                             "path: '" + path + "' is " + std::to_string(st.st_size) +
                                 " bytes, over service.max_artifact_bytes (" +
                                 std::to_string(max_bytes) + ")");

    Fd out(::open(dest.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (out.fd < 0)
        return Error(errc::local_io_failed, "cannot create " + dest + ": " + std::strerror(errno));
    StreamDigests digests;
    std::vector<char> buf(1 << 20);
    std::uint64_t total = 0;
    for (;;) {
        const ssize_t n = ::read(in.fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
            return Error(errc::local_io_failed, "path: '" + path + "': read failed: " + std::strerror(errno));
        if (n == 0) break;
        total += static_cast<std::uint64_t>(n);
        if (total > max_bytes)
            return staging_error(staging_errc::too_large,
                                 "path: '" + path + "' grew over service.max_artifact_bytes (" +
                                     std::to_string(max_bytes) + ") while it was read");
        digests.update(buf.data(), static_cast<std::size_t>(n));
        for (ssize_t done = 0; done < n;) {
            const ssize_t w = ::write(out.fd, buf.data() + done, static_cast<std::size_t>(n - done));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0)
                return Error(errc::local_io_failed, "cannot write " + dest + ": " + std::strerror(errno));
            done += w;
        }
    }
    const bool mode_set = ::fchmod(out.fd, st.st_mode & 0777) == 0;
    const int fd = out.fd;
    out.fd = -1;
    if (::close(fd) != 0 || !mode_set)
        return Error(errc::local_io_failed, "cannot write " + dest + ": " + std::strerror(errno));
    std::string sha, md5;
    digests.finish(sha, md5);
    if (sha != expected_sha256)
        return staging_error(staging_errc::mismatch,
                             "path: the file's sha256 does not match " + expected_sha256 +
                                 ": nothing staged");
    return static_cast<std::int64_t>(total);
}

ServiceError staging_failure(const Error& e) {
    if (e.code.category() == staging_category()) {
        switch (static_cast<staging_errc>(e.code.value())) {
            case staging_errc::disabled:
                return ServiceError(ServiceErrc::path_form_disabled, e.message);
            case staging_errc::refused:
                return ServiceError(ServiceErrc::path_refused, e.message);
            case staging_errc::not_found:
                return ServiceError(ServiceErrc::bad_request, e.message);
            case staging_errc::too_large:
                return ServiceError(ServiceErrc::payload_too_large, e.message);
            case staging_errc::mismatch:
                return ServiceError(ServiceErrc::checksum_mismatch, e.message);
        }
    }
    if (e.message.rfind("path:", 0) == 0) return ServiceError(ServiceErrc::bad_request, e.message);
    return ServiceError(ServiceErrc::local_io_failed, e.message);
}

}  // namespace guardia::service
