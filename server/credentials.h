#pragma once
// Transport security of ldcp-server: TLS, or mutual TLS, on the gRPC port, with certificates that
// gRPC re-reads when their files change (grpc::experimental::FileWatcherCertificateProvider:
// cert-manager and Kubernetes Secret volumes replace the files in place), and the plaintext
// health-only listener that the kubelet's native gRPC probes use (they cannot speak TLS).

#include <memory>
#include <string>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

namespace ldcp::server {

struct TlsOptions {
  std::string cert_file;          // PEM certificate chain; empty: plaintext
  std::string key_file;           // PEM private key of the first certificate
  std::string client_ca_file;     // PEM CA bundle: clients must present a certificate it signed
  unsigned refresh_seconds = 10;  // how often the files are checked for changes

  bool enabled() const { return !cert_file.empty(); }
  bool mutual() const { return !client_ca_file.empty(); }
};

// Checks the combination of options and that each file is readable PEM of the right kind.
// Throws std::invalid_argument naming the option and the file.
void check_tls_options(const TlsOptions& options);

// Plaintext credentials when TLS is off; TLS (or mTLS) ones watching the files otherwise.
std::shared_ptr<grpc::ServerCredentials> server_credentials(const TlsOptions& options);

// Leaves server reflection out of what `builder` builds. Linking grpc++_reflection registers its
// plugin for every server at static initialization, so not calling
// InitProtoReflectionServerBuilderPlugin() is not enough.
void disable_reflection(grpc::ServerBuilder& builder);

// One line for the start-up log: "plaintext", "TLS (...)", "mutual TLS (...)".
std::string describe(const TlsOptions& options);

// A plaintext gRPC server that serves only grpc.health.v1 (no application service, no
// reflection) on `address`, mirroring the serving status that the main server sets.
class HealthOnlyServer {
 public:
  // Throws std::runtime_error when it cannot listen.
  explicit HealthOnlyServer(const std::string& address);
  ~HealthOnlyServer();
  int port() const { return port_; }
  // The overall status ("") and that of each named service.
  void set_serving(bool serving);
  void set_serving(const std::string& service, bool serving);
  void shutdown();

 private:
  // Answers every other method UNIMPLEMENTED; it also gives gRPC the callback service it needs
  // before it adds the default health service.
  grpc::CallbackGenericService unimplemented_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace ldcp::server
