#include "server/credentials.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

namespace ldcp::server {
namespace {

std::string read_file(const std::string& option, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::invalid_argument(option + ": cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  if (s.str().empty()) throw std::invalid_argument(option + ": " + path + " is empty");
  return s.str();
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioDeleter>;
using Cert = std::unique_ptr<X509, X509Deleter>;
using Key = std::unique_ptr<EVP_PKEY, KeyDeleter>;

Bio memory_bio(const std::string& pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The first certificate of a PEM file (the leaf of a chain); throws when there is none.
Cert first_certificate(const std::string& option, const std::string& path) {
  const auto pem = read_file(option, path);
  auto bio = memory_bio(pem);
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) throw std::invalid_argument(option + ": no PEM certificate in " + path);
  return cert;
}

// Removes the reflection plugin from a builder's plugins when the server is built.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(
        std::remove_if(plugins->begin(), plugins->end(),
                       [](const auto& p) { return p->name() == "proto_server_reflection"; }),
        plugins->end());
  }
};

}  // namespace

void disable_reflection(grpc::ServerBuilder& builder) {
  builder.SetOption(std::make_unique<WithoutReflection>());
}

void check_tls_options(const TlsOptions& o) {
  if (o.cert_file.empty() != o.key_file.empty()) {
    throw std::invalid_argument("--tls-cert and --tls-key: give both or neither");
  }
  if (!o.enabled()) {
    if (o.mutual()) throw std::invalid_argument("--tls-client-ca needs --tls-cert and --tls-key");
    return;
  }
  if (o.refresh_seconds < 1) throw std::invalid_argument("--tls-refresh: at least 1 second");
  const auto cert = first_certificate("--tls-cert", o.cert_file);
  const auto key_pem = read_file("--tls-key", o.key_file);
  auto bio = memory_bio(key_pem);
  Key key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    throw std::invalid_argument("--tls-key: no unencrypted PEM private key in " + o.key_file);
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    throw std::invalid_argument("--tls-key: " + o.key_file + " is not the key of the certificate " +
                                o.cert_file);
  }
  if (o.mutual()) first_certificate("--tls-client-ca", o.client_ca_file);
}

std::shared_ptr<grpc::ServerCredentials> server_credentials(const TlsOptions& o) {
  check_tls_options(o);
  if (!o.enabled()) return grpc::InsecureServerCredentials();
  // The provider polls the files every refresh_seconds and swaps in a new key/certificate pair
  // (or CA bundle) when it reads a consistent one; a half-written pair keeps the old one.
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      o.key_file, o.cert_file, o.client_ca_file, o.refresh_seconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (o.mutual()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  auto creds = grpc::experimental::TlsServerCredentials(options);
  if (!creds) throw std::runtime_error("gRPC could not make TLS server credentials");
  return creds;
}

std::string describe(const TlsOptions& o) {
  if (!o.enabled()) return "plaintext";
  std::string s =
      o.mutual() ? "mutual TLS (client certificates signed by " + o.client_ca_file + " required)"
                 : std::string("TLS");
  return s + ", certificate " + o.cert_file + " re-read every " +
         std::to_string(o.refresh_seconds) + " s";
}

HealthOnlyServer::HealthOnlyServer(const std::string& address) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  disable_reflection(builder);
  builder.RegisterCallbackGenericService(&unimplemented_);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
  // Health requests are tiny; nothing else is served here.
  builder.SetMaxReceiveMessageSize(4096);
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0)
    throw std::runtime_error("--health-listen: cannot listen on " + address);
  // Not serving until the main server says so (the default service starts SERVING).
  set_serving(false);
}

HealthOnlyServer::~HealthOnlyServer() { shutdown(); }

void HealthOnlyServer::set_serving(bool serving) {
  if (auto* h = server_ ? server_->GetHealthCheckService() : nullptr) h->SetServingStatus(serving);
}

void HealthOnlyServer::set_serving(const std::string& service, bool serving) {
  if (auto* h = server_ ? server_->GetHealthCheckService() : nullptr) {
    h->SetServingStatus(service, serving);
  }
}

void HealthOnlyServer::shutdown() {
  if (!server_) return;
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  server_.reset();
}

}  // namespace ldcp::server
