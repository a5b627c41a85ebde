// Webhook signatures (guardia/service/webhook_signature.hpp): the HMAC against a published
// test vector, the header's exact format, and the receiver-side check refusing a tampered
// body, a wrong secret, a replay with an old timestamp and malformed headers.
#include "guardia/service/webhook_signature.hpp"

#include <doctest/doctest.h>

#include <string>

using namespace guardia::service;

TEST_CASE("hmac_sha256_hex: RFC 4231 test cases 1 and 2") {
    CHECK(hmac_sha256_hex("Jefe", "what do ya want for nothing?") ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    const std::string key(20, '\x0b');
    CHECK(hmac_sha256_hex(key, "Hi There") ==
          "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    // An empty key is a key (HMAC pads it): the value from Python's hmac module.
    CHECK(hmac_sha256_hex("", "") ==
          "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

TEST_CASE("webhook_signature: sha256=<hex of HMAC(secret, \"<timestamp>.<body>\")>") {
    const std::string body = R"({"event":"rollout_started","sr_id":"SR-1"})";
    const std::string sig = webhook_signature("s3cret", 1700000000, body);
    CHECK(sig == "sha256=" + hmac_sha256_hex("s3cret", "1700000000." + body));
    CHECK(sig.size() == 7 + 64);
    CHECK(sig.find_first_not_of("0123456789abcdef", 7) == std::string::npos);
    // The timestamp is part of what is signed.
    CHECK(sig != webhook_signature("s3cret", 1700000001, body));
}

TEST_CASE("verify_webhook_signature: what a receiver accepts and refuses") {
    const std::string body = R"({"event":"gate_tripped","reason":"safety gate"})";
    const std::int64_t ts = 1700000000;
    const std::string sig = webhook_signature("s3cret", ts, body);
    const std::string tsh = std::to_string(ts);
    CHECK(verify_webhook_signature("s3cret", tsh, sig, body, ts + 10, 300) ==
          SignatureCheck::valid);
    // A tampered body, one byte changed or appended.
    std::string tampered = body;
    tampered[2] = 'E';
    CHECK(verify_webhook_signature("s3cret", tsh, sig, tampered, ts, 300) ==
          SignatureCheck::mismatch);
    CHECK(verify_webhook_signature("s3cret", tsh, sig, body + " ", ts, 300) ==
          SignatureCheck::mismatch);
    // A wrong secret.
    CHECK(verify_webhook_signature("s3cret2", tsh, sig, body, ts, 300) ==
          SignatureCheck::mismatch);
    // The timestamp header changed to look fresh: the signature no longer matches.
    CHECK(verify_webhook_signature("s3cret", std::to_string(ts + 3600), sig, body, ts + 3600,
                                   300) == SignatureCheck::mismatch);
    // A replay of a genuine delivery an hour later, or from the future.
    CHECK(verify_webhook_signature("s3cret", tsh, sig, body, ts + 3600, 300) ==
          SignatureCheck::stale);
    CHECK(verify_webhook_signature("s3cret", tsh, sig, body, ts - 301, 300) ==
          SignatureCheck::stale);
    // Malformed headers.
    CHECK(verify_webhook_signature("s3cret", "", sig, body, ts, 300) == SignatureCheck::malformed);
    CHECK(verify_webhook_signature("s3cret", "17e8", sig, body, ts, 300) ==
          SignatureCheck::malformed);
    CHECK(verify_webhook_signature("s3cret", tsh, sig.substr(7), body, ts, 300) ==
          SignatureCheck::malformed);
    CHECK(verify_webhook_signature("s3cret", tsh, "sha1=" + sig.substr(7), body, ts, 300) ==
          SignatureCheck::malformed);
    CHECK(verify_webhook_signature("s3cret", tsh, sig.substr(0, 40), body, ts, 300) ==
          SignatureCheck::mismatch);
}
