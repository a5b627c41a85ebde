// What the HTTP clients (health probes, webhooks) share: the cancellation check, the way a
// limit is written in messages, name resolution under a deadline.
#pragma once

#include "guardia/core/error.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::http::detail {

// Not a coroutine on purpose: co_await on a nested awaitable throws once cancelled, while
// the state handle (taken once per coroutine) can be asked at any time.
bool is_cancelled(const boost::asio::cancellation_state& cs);

std::string format_duration(std::chrono::milliseconds d);  // "2.5 s"

// The endpoints of host:port (a numeric address without a lookup), or errc::timeout /
// connect_failed / cancelled with "cannot resolve <host> ..." by `deadline`. `limit` is the
// time granted, for the message.
boost::asio::awaitable<Result<std::vector<boost::asio::ip::tcp::endpoint>>> resolve_before(
    const std::string& host, std::uint16_t port, std::chrono::steady_clock::time_point deadline,
    std::chrono::milliseconds limit);

}  // namespace guardia::http::detail
