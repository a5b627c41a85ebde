// The server's set-up of a request parser, apart from server.cpp so that the fuzz target of the
// request head links it without the server's sockets and coroutines.
#include "guardia/http/server.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace guardia::http {

void prepare_request_parser(beast_http::request_parser<beast_http::string_body>& parser,
                            const ServerOptions& options) {
    parser.header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(
        options.max_header_bytes, std::numeric_limits<std::uint32_t>::max())));
    parser.body_limit(boost::none);  // decided once the head is known
}

bool head_too_large(std::size_t head_bytes, const ServerOptions& options) {
    return head_bytes > options.max_header_bytes;
}

}  // namespace guardia::http
