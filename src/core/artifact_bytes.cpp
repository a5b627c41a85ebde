#include "guardia/core/artifact_bytes.hpp"

#include "guardia/core/digest.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace guardia {

namespace {

// Closes the descriptor on every path out of read_file.
struct FileDescriptor {
    int fd;
    explicit FileDescriptor(int f) : fd(f) {}
    ~FileDescriptor() {
        if (fd >= 0) ::close(fd);
    }
    FileDescriptor(const FileDescriptor&) = delete;
    FileDescriptor& operator=(const FileDescriptor&) = delete;
};

}  // namespace

ArtifactBytes::ArtifactBytes(std::vector<char> bytes, unsigned mode)
    : bytes_(std::move(bytes)), mode_(mode & 07777u) {
    StreamDigests digests;
    digests.update(bytes_.data(), bytes_.size());
    digests.finish(sha256_, md5_);
}

std::shared_ptr<const ArtifactBytes> ArtifactBytes::from_bytes(std::vector<char> bytes,
                                                               unsigned mode) {
    return std::shared_ptr<const ArtifactBytes>(new ArtifactBytes(std::move(bytes), mode));
}

Result<std::shared_ptr<const ArtifactBytes>> ArtifactBytes::read_file(const std::string& path) {
    FileDescriptor file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (file.fd < 0)
        return Error(errc::local_io_failed, "cannot open " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(file.fd, &st) != 0 || !S_ISREG(st.st_mode))
        return Error(errc::local_io_failed, path + " is not a regular file");
    const auto expected = static_cast<std::size_t>(st.st_size);
    // One extra byte: reading it tells a file that grew from one that did not.
    std::vector<char> bytes(expected + 1);
    std::size_t got = 0;
    while (got < bytes.size()) {
        ssize_t n = ::read(file.fd, bytes.data() + got, bytes.size() - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            return Error(errc::local_io_failed, "reading " + path + ": " + std::strerror(errno));
        }
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    if (got != expected)
        return Error(errc::local_io_failed, path + " changed size while being read (" +
                                                std::to_string(expected) + " bytes at start, " +
                                                (got > expected ? "more" : std::to_string(got)) +
                                                " read)");
    bytes.pop_back();
    return std::shared_ptr<const ArtifactBytes>(
        new ArtifactBytes(std::move(bytes), static_cast<unsigned>(st.st_mode)));
}

}  // namespace guardia
