#include "detail/session_arena.hpp"

namespace guardia::ssh::detail {

void SessionArena::link(Header* h) noexcept {
    h->prev = &head_;
    h->next = head_.next;
    head_.next->prev = h;
    head_.next = h;
    ++live_;
}

void SessionArena::unlink(Header* h) noexcept {
    h->prev->next = h->next;
    h->next->prev = h->prev;
}

void* SessionArena::allocate(std::size_t size) noexcept {
    auto* h = static_cast<Header*>(std::malloc(sizeof(Header) + size));
    if (h == nullptr) return nullptr;
    link(h);
    return h + 1;
}

void* SessionArena::reallocate(void* block, std::size_t size) noexcept {
    if (block == nullptr) return allocate(size);
    Header* old = header_of(block);
    unlink(old);
    --live_;
    auto* h = static_cast<Header*>(std::realloc(old, sizeof(Header) + size));
    if (h == nullptr) {
        link(old);  // realloc failure leaves the old block intact
        return nullptr;
    }
    link(h);
    return h + 1;
}

void SessionArena::deallocate(void* block) noexcept {
    if (block == nullptr) return;
    Header* h = header_of(block);
    unlink(h);
    --live_;
    std::free(h);
}

void SessionArena::release_all() noexcept {
    while (head_.next != &head_) {
        Header* h = head_.next;
        unlink(h);
        std::free(h);
    }
    live_ = 0;
}

}  // namespace guardia::ssh::detail
