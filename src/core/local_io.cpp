#include "guardia/core/local_io.hpp"

namespace guardia {

boost::asio::thread_pool& local_io_pool() {
    static boost::asio::thread_pool pool(2);
    return pool;
}

void stop_local_io_pool() {
    local_io_pool().stop();
    local_io_pool().join();
}

}  // namespace guardia
