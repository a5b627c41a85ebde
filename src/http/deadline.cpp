#include "detail/deadline.hpp"

#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>

namespace guardia::http::detail {

namespace asio = boost::asio;
using asio::ip::tcp;

bool is_cancelled(const asio::cancellation_state& cs) {
    return cs.cancelled() != asio::cancellation_type::none;
}

std::string format_duration(std::chrono::milliseconds d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g s", static_cast<double>(d.count()) / 1000.0);
    return buf;
}

// Resolver operations ignore per-operation cancellation in Boost 1.81, so the timer's
// completion cancels the resolver: otherwise a hung getaddrinfo would be waited for however
// late.
asio::awaitable<Result<std::vector<tcp::endpoint>>> resolve_before(
    const std::string& host, std::uint16_t port, std::chrono::steady_clock::time_point deadline,
    std::chrono::milliseconds limit) {
    using asio::experimental::make_parallel_group;
    using asio::experimental::wait_for_one;
    std::vector<tcp::endpoint> endpoints;
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(host, ec);
    if (!ec) {
        endpoints.emplace_back(address, port);
        co_return endpoints;
    }
    auto ex = co_await asio::this_coro::executor;
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    tcp::resolver resolver(ex);
    asio::steady_timer timer(ex);
    timer.expires_at(deadline);
    auto [order, e_r, results, e_t] =
        co_await make_parallel_group(
            resolver.async_resolve(host, std::to_string(port), asio::deferred),
            timer.async_wait(asio::deferred([&resolver](boost::system::error_code e) {
                resolver.cancel();
                return asio::deferred.values(e);
            })))
            .async_wait(wait_for_one(), asio::use_awaitable);
    if (is_cancelled(cs)) co_return Error(errc::cancelled, "cancelled");
    if (order[0] == 1 && !e_t)
        co_return Error(errc::timeout,
                        "cannot resolve " + host + " within " + format_duration(limit));
    if (e_r) co_return Error(errc::connect_failed, "cannot resolve " + host + ": " + e_r.message());
    for (const auto& r : results) endpoints.push_back(r.endpoint());
    if (endpoints.empty())
        co_return Error(errc::connect_failed, "cannot resolve " + host + ": no address");
    co_return endpoints;
}

}  // namespace guardia::http::detail

namespace guardia::http {

bool is_header_name(std::string_view s) {
    static constexpr std::string_view extra = "!#$%&'*+-.^_`|~";
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) ||
               extra.find(c) != std::string_view::npos;
    });
}

bool is_header_value(std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u == '\t' || (u >= 0x20 && u != 0x7f);
    });
}

}  // namespace guardia::http
