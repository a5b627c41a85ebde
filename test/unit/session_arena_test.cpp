#include "../../src/ssh/detail/session_arena.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>

using guardia::ssh::detail::SessionArena;

TEST_CASE("the session arena tracks, resizes and releases libssh2's blocks") {
    SessionArena arena;
    void* a = arena.allocate(10);
    void* b = arena.allocate(100);
    void* c = arena.allocate(0);
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    CHECK(arena.live_blocks() == 3);
    CHECK(reinterpret_cast<std::uintptr_t>(b) % 16 == 0);  // malloc's alignment is kept

    std::memset(b, 'x', 100);
    b = arena.reallocate(b, 100000);
    REQUIRE(b != nullptr);
    CHECK(static_cast<char*>(b)[99] == 'x');  // contents survive the move
    CHECK(arena.live_blocks() == 3);

    arena.deallocate(a);
    arena.deallocate(nullptr);
    CHECK(arena.live_blocks() == 2);
    void* d = arena.reallocate(nullptr, 8);  // realloc(nullptr) allocates
    CHECK(arena.live_blocks() == 3);
    (void)c;
    (void)d;
    // What the library "forgot" is freed here (LeakSanitizer checks that nothing remains).
    arena.release_all();
    CHECK(arena.live_blocks() == 0);
}
