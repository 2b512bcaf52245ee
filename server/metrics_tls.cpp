#include "server/metrics_tls.h"

#include <stdexcept>

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <boost/asio/buffer.hpp>

namespace ldcp::server {

namespace ssl = boost::asio::ssl;

std::shared_ptr<ssl::context> metrics_tls_context(const std::string& cert_pem,
                                                  const std::string& key_pem,
                                                  const std::string& cert_path,
                                                  const std::string& key_path) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                   ssl::context::single_dh_use);
  // An encrypted key fails to load instead of OpenSSL asking for its passphrase on the terminal.
  ctx->set_password_callback([](size_t, ssl::context::password_purpose) { return std::string(); });
  boost::system::error_code ec;
  ctx->use_certificate_chain(boost::asio::buffer(cert_pem), ec);
  if (ec) {
    throw std::runtime_error("--metrics-tls-cert: no PEM certificate chain in " + cert_path + " (" +
                             ec.message() + ")");
  }
  ctx->use_private_key(boost::asio::buffer(key_pem), ssl::context::pem, ec);
  if (ec || SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    throw std::runtime_error("--metrics-tls-key: " + key_path +
                             " is not an unencrypted PEM key of the certificate " + cert_path);
  }
  return ctx;
}

std::string describe_certificate(const std::string& cert_pem) {
  BIO* bio = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  if (!bio) return "";
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (!cert) return "";
  std::string out;
  char subject[256];
  X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof subject);
  out = subject;
  if (BIO* text = BIO_new(BIO_s_mem())) {
    if (ASN1_TIME_print(text, X509_get0_notAfter(cert)) == 1) {
      char* data = nullptr;
      const long n = BIO_get_mem_data(text, &data);
      out += " until " + std::string(data, static_cast<size_t>(n));
    }
    BIO_free(text);
  }
  X509_free(cert);
  return out;
}

}  // namespace ldcp::server
