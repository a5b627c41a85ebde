// Signed webhook deliveries (docs/OPERATIONS.md, "Notifications", signatures).
//
// A webhook with a secret gets two headers on every attempt:
//   X-Guardia-Timestamp: <unix time of the attempt, decimal seconds>
//   X-Guardia-Signature: sha256=<lower-case hex of HMAC-SHA256(secret, "<timestamp>.<body>")>
// where <body> is the exact bytes of the request body. The receiver recomputes the HMAC over
// the timestamp header, a dot and the raw body, compares in constant time, and refuses a
// timestamp too far from its clock (a replayed delivery). Pure code: no I/O.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace guardia::service {

inline constexpr std::string_view signature_header_name = "X-Guardia-Signature";
inline constexpr std::string_view timestamp_header_name = "X-Guardia-Timestamp";

// Lower-case hex of HMAC-SHA256(key, data).
std::string hmac_sha256_hex(std::string_view key, std::string_view data);

// The X-Guardia-Signature value for `body` sent at `timestamp_s`: "sha256=<hex>".
std::string webhook_signature(std::string_view secret, std::int64_t timestamp_s,
                              std::string_view body);

enum class SignatureCheck { valid, malformed, mismatch, stale };

// The receiver's side, as documented: the headers as received, the raw body, the receiver's
// clock and how far (either way) a timestamp may be from it.
SignatureCheck verify_webhook_signature(std::string_view secret, std::string_view timestamp_header,
                                        std::string_view signature_header, std::string_view body,
                                        std::int64_t now_s, std::int64_t tolerance_s);

}  // namespace guardia::service
