// Per-session memory for libssh2.
//
// libssh2 1.10 abandons memory when a connection dies at the wrong moment: an SFTP handle
// whose FXP_CLOSE cannot be sent is never freed, nor are its queued WRITE packets. Every
// libssh2 allocation of a session therefore goes through this arena, which links its blocks
// together; after libssh2_session_free() whatever libssh2 left behind is released at once.
// A long-running service that loses thousands of connections keeps a flat footprint.
#pragma once

#include <cstddef>
#include <cstdlib>

namespace guardia::ssh::detail {

class SessionArena {
public:
    SessionArena() = default;
    SessionArena(const SessionArena&) = delete;
    SessionArena& operator=(const SessionArena&) = delete;
    ~SessionArena() { release_all(); }

    void* allocate(std::size_t size) noexcept;
    void* reallocate(void* block, std::size_t size) noexcept;
    void deallocate(void* block) noexcept;
    // Frees every block still live. Only once libssh2 no longer refers to any of them.
    void release_all() noexcept;
    std::size_t live_blocks() const noexcept { return live_; }

private:
    struct alignas(16) Header {
        Header* prev;
        Header* next;
    };
    static Header* header_of(void* block) noexcept { return static_cast<Header*>(block) - 1; }
    void link(Header* h) noexcept;
    static void unlink(Header* h) noexcept;

    Header head_{&head_, &head_};
    std::size_t live_ = 0;
};

}  // namespace guardia::ssh::detail
