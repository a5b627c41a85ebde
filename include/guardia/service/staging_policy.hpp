// The path form of staging (POST /api/tasks/{sr}/artifacts {"name", "path", "sha256"}): which
// files an API caller may make the service copy into a release, and what a refusal or a checksum
// mismatch may tell it (docs/SECURITY.md, "Inputs from API callers").
//
// Pure functions over the local file system (blocking: call them off the event loop).
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/service/service_error.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace guardia::service {

// Why the path form failed; staging_failure() turns each into a service error.
enum class staging_errc {
    disabled = 1,  // service.drop_dir is not set: 403 path_form_disabled
    refused,       // outside drop_dir, a symbolic link, not a regular file, hard-linked: 403
    not_found,     // inside drop_dir but absent: 400
    too_large,     // over service.max_artifact_bytes: 413
    mismatch,      // the file's sha256 is not the one given: 422, no digest in the message
};
const boost::system::error_category& staging_category() noexcept;
Error staging_error(staging_errc e, std::string message);

// Copies the file `path` names into `dest` (created, must not exist; the source's permission
// bits) if, and only if:
//   - drop_dir is set, and `path` is "<drop_dir>/<relative>" with no empty, "." or ".."
//     component (judged on the text: nothing outside drop_dir is ever looked at);
//   - every component below drop_dir is opened with openat(O_NOFOLLOW) from the one before:
//     a symbolic link anywhere below drop_dir is refused, and renaming or re-linking a component
//     after the check cannot redirect the read (drop_dir itself, the operator's, may be a link);
//   - the opened descriptor (fstat) is a regular file (the last open is O_NONBLOCK: a FIFO is
//     refused, never waited on) with exactly one link (a hard link can make any file of the same
//     file system appear inside drop_dir) and at most max_bytes bytes (also while reading);
//   - its sha256, computed while copying, is `expected_sha256`.
// Returns the number of bytes copied. On any error `dest` may exist and is the caller's to
// remove. Messages start with "path: " and never hold a digest of the file.
Result<std::int64_t> copy_from_drop_dir(const std::string& drop_dir, const std::string& path,
                                        std::uint64_t max_bytes,
                                        const std::string& expected_sha256,
                                        const std::string& dest);

// What a failed write of a staged artifact is, as a service error (the API maps it to HTTP with
// every other one): errors of staging_category by kind (disabled -> path_form_disabled,
// refused -> path_refused, not_found -> bad_request, too_large -> payload_too_large, mismatch ->
// checksum_mismatch); other errors whose message starts "path:" bad_request (the caller's
// path); the rest local_io_failed (the deploy host's own files).
ServiceError staging_failure(const Error& e);

}  // namespace guardia::service
