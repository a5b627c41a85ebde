#include "detail/tls.hpp"

#include <boost/asio/ip/address.hpp>

#include <openssl/x509v3.h>

namespace guardia::http::detail {

Result<void> expect_peer(SSL* ssl, const std::string& name) {
    boost::system::error_code ec;
    (void)boost::asio::ip::make_address(name, ec);
    const bool numeric = !ec;
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (numeric) {
        if (X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str()) != 1)
            return Error(errc::invalid_argument, "cannot verify address " + name);
        return {};
    }
    // SSL_set_tlsext_host_name() is a macro with a C cast; this is what it expands to.
    if (SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                 const_cast<char*>(name.c_str())) != 1 ||
        X509_VERIFY_PARAM_set1_host(param, name.c_str(), 0) != 1)
        return Error(errc::invalid_argument, "cannot verify host name " + name);
    return {};
}

std::string tls_failure(const boost::system::error_code& ec, SSL* ssl) {
    const long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK)
        return std::string("TLS handshake failed: certificate rejected: ") +
               X509_verify_cert_error_string(verify);
    return "TLS handshake failed: " + ec.message();
}

}  // namespace guardia::http::detail
