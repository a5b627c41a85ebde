// Blocking local work (reading artifact files, hashing them) runs here, never on the event
// loop. Coroutines hop onto this pool with run_blocking() and resume on their own executor.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <type_traits>
#include <utility>

namespace guardia {

// Process-wide pool of two threads for blocking local I/O.
boost::asio::thread_pool& local_io_pool();

// Runs `fn()` on local_io_pool() and returns its result to the awaiting coroutine.
template <class Fn>
boost::asio::awaitable<std::invoke_result_t<Fn&>> run_blocking(Fn fn) {
    using R = std::invoke_result_t<Fn&>;
    co_return co_await boost::asio::co_spawn(
        local_io_pool(),
        [fn = std::move(fn)]() mutable -> boost::asio::awaitable<R> { co_return fn(); },
        boost::asio::use_awaitable);
}

}  // namespace guardia
