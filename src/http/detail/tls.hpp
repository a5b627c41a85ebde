// What the TLS clients (webhooks, HTTPS health probes) share: how a client stream is told
// whom it talks to, and how a failed handshake is described.
#pragma once

#include "guardia/core/error.hpp"

#include <boost/system/error_code.hpp>

#include <string>

#include <openssl/ssl.h>

namespace guardia::http::detail {

// SNI for a name (never for a literal address, RFC 6066) and the name, or the address, the
// peer's certificate must carry. Errors: errc::invalid_argument naming what was refused.
Result<void> expect_peer(SSL* ssl, const std::string& name);

// "TLS handshake failed: certificate rejected: self-signed certificate in certificate chain"
// when verification failed, else the handshake's own error.
std::string tls_failure(const boost::system::error_code& ec, SSL* ssl);

}  // namespace guardia::http::detail
