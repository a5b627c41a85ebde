// Owners of libssh2 handles. The deleters only free: orderly shutdown (channel close,
// disconnect) is an explicit awaitable done before, never I/O in a destructor.
#pragma once

#include <libssh2.h>
#include <libssh2_sftp.h>

#include <memory>

namespace guardia::ssh::detail {

struct SessionFree {
    void operator()(LIBSSH2_SESSION* s) const noexcept { libssh2_session_free(s); }
};
struct ChannelFree {
    void operator()(LIBSSH2_CHANNEL* c) const noexcept { libssh2_channel_free(c); }
};
struct SftpFree {
    void operator()(LIBSSH2_SFTP* s) const noexcept { libssh2_sftp_shutdown(s); }
};
struct SftpHandleFree {
    void operator()(LIBSSH2_SFTP_HANDLE* h) const noexcept { libssh2_sftp_close_handle(h); }
};

using SessionHandle = std::unique_ptr<LIBSSH2_SESSION, SessionFree>;
using ChannelHandle = std::unique_ptr<LIBSSH2_CHANNEL, ChannelFree>;
using SftpHandle = std::unique_ptr<LIBSSH2_SFTP, SftpFree>;
using SftpFileHandle = std::unique_ptr<LIBSSH2_SFTP_HANDLE, SftpHandleFree>;

}  // namespace guardia::ssh::detail
