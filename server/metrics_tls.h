#pragma once
// TLS for the metrics endpoint (metrics_http.h): an OpenSSL server context, through Boost.Asio,
// from a PEM certificate chain and its key. The endpoint re-reads the files while it runs
// (watched_files.h) and makes a new context when they change: new connections get the new
// certificate, open ones keep theirs.

#include <memory>
#include <string>

#include <boost/asio/ssl/context.hpp>

namespace ldcp::server {

// TLS 1.2 and 1.3 only. Throws std::runtime_error naming the option and the file when the chain
// or the key does not parse or the key is not the first certificate's.
std::shared_ptr<boost::asio::ssl::context> metrics_tls_context(const std::string& cert_pem,
                                                               const std::string& key_pem,
                                                               const std::string& cert_path,
                                                               const std::string& key_path);

// The first certificate's subject and expiry, for the log ("CN=... until Mar  1 12:00:00 2027
// GMT"); "" when it cannot be read.
std::string describe_certificate(const std::string& cert_pem);

}  // namespace ldcp::server
