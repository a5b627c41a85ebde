// Blocking local work (reading artifact files, hashing them) runs here, never on the event
// loop. The result comes back on the awaiting coroutine's own executor.
#pragma once

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <type_traits>
#include <utility>

namespace guardia {

// Process-wide pool of two threads for blocking local I/O.
boost::asio::thread_pool& local_io_pool();

// Ends the pool's threads; call once, when no work is left, before main returns. Joining them
// at static destruction would be after OpenSSL's atexit clean-up, which then can no longer free
// the per-thread state (error queue) its digests left on those threads: a leak LSan reports.
void stop_local_io_pool();

// Runs `fn()` on local_io_pool() and completes with its result (signature void(R)) on the
// handler's executor. Deliberately not cancellable: the work is short and touches memory the
// caller owns, so the caller must wait for it anyway. (A co_spawn onto the pool is not used:
// Boost 1.81's co_spawn entry point throws, outside any handler, when cancelled just as it
// starts, which terminates the pool thread.)
template <class Fn, class Token>
auto async_run_blocking(Fn fn, Token&& token) {
    using R = std::invoke_result_t<Fn&>;
    return boost::asio::async_initiate<Token, void(R)>(
        [](auto handler, Fn work_fn) {
            auto work = boost::asio::make_work_guard(boost::asio::get_associated_executor(handler));
            boost::asio::post(
                local_io_pool(), [handler = std::move(handler), work = std::move(work),
                                  work_fn = std::move(work_fn)]() mutable {
                    R result = work_fn();
                    auto ex = work.get_executor();
                    boost::asio::dispatch(
                        ex, [handler = std::move(handler), result = std::move(result)]() mutable {
                            std::move(handler)(std::move(result));
                        });
                });
        },
        token, std::move(fn));
}

// Awaitable form: co_await run_blocking([&] { return read_file(); });
// Deliberately not a coroutine itself: GCC 12 destroys a closure passed by value to a
// coroutine twice when its captures own memory (a captured std::string or shared_ptr).
template <class Fn>
boost::asio::awaitable<std::invoke_result_t<Fn&>> run_blocking(Fn fn) {
    return async_run_blocking(std::move(fn), boost::asio::use_awaitable);
}

}  // namespace guardia
