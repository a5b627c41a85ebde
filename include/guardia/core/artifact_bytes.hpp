// An artifact's bytes read into memory once, with their digests, shared read-only by every
// upload of a rollout: a thousand sessions stream from one buffer instead of reading (and
// holding a copy of) the file a thousand times.
#pragma once

#include "guardia/core/error.hpp"

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace guardia {

class ArtifactBytes {
public:
    // Reads the whole regular file at `path` and hashes it (blocking: off the event loop).
    // Fails with errc::local_io_failed naming the file if it cannot be opened or read, is not
    // a regular file, or changes size while being read.
    static Result<std::shared_ptr<const ArtifactBytes>> read_file(const std::string& path);
    // Takes bytes the caller already holds, hashing them. `mode`: the permission bits a
    // deployed copy should get.
    static std::shared_ptr<const ArtifactBytes> from_bytes(std::vector<char> bytes,
                                                           unsigned mode = 0644);

    const char* data() const noexcept { return bytes_.data(); }
    std::size_t size() const noexcept { return bytes_.size(); }
    const std::string& sha256() const noexcept { return sha256_; }  // lowercase hex
    const std::string& md5() const noexcept { return md5_; }        // lowercase hex
    // Permission bits of the file it was read from (or as given to from_bytes).
    unsigned mode() const noexcept { return mode_; }

    ArtifactBytes(const ArtifactBytes&) = delete;
    ArtifactBytes& operator=(const ArtifactBytes&) = delete;

private:
    ArtifactBytes(std::vector<char> bytes, unsigned mode);

    std::vector<char> bytes_;
    std::string sha256_;
    std::string md5_;
    unsigned mode_;
};

}  // namespace guardia
