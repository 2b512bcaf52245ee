// ldcp-client: calls ldcp-server.
//   ldcp-client generate --target ADDR --prompt TEXT --out FILE.png [request fields]
//   ldcp-client health --target ADDR [--service NAME]
//   ldcp-client list-models --target ADDR [--json]
// `generate` streams progress (a bar on a terminal) from GenerateStream, or calls the unary
// Generate with --unary. Errors print the gRPC status and message and exit non-zero (the exit
// code is 10 + the gRPC status code). Retries on UNAVAILABLE with backoff (service config).
// TLS: --tls (system roots) or --tls-ca; mutual TLS adds --tls-cert and --tls-key; a bearer token
// comes from --token-file or $LDCP_TOKEN (never from the command line, which others can read).

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <CLI/CLI.hpp>

#include "cli/progress.h"
#include "client/service_config.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "ldcp/v1/ldcp.grpc.pb.h"
#include "model/lora/lora_spec.h"

namespace {

const char* code_name(grpc::StatusCode c) {
  switch (c) {
    case grpc::OK:
      return "OK";
    case grpc::CANCELLED:
      return "CANCELLED";
    case grpc::UNKNOWN:
      return "UNKNOWN";
    case grpc::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::ABORTED:
      return "ABORTED";
    case grpc::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::INTERNAL:
      return "INTERNAL";
    case grpc::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "?";
  }
}

int fail(const grpc::Status& s) {
  std::cerr << "ldcp-client: " << code_name(s.error_code()) << ": " << s.error_message() << "\n";
  return 10 + static_cast<int>(s.error_code());
}

// How to reach the server: transport security and the bearer token.
struct Connection {
  std::string target = "127.0.0.1:50051";
  bool tls = false;
  std::string tls_ca, tls_cert, tls_key, tls_server_name, token_file;
};

void add_connection_options(CLI::App* cmd, Connection& c) {
  cmd->add_option("--target", c.target, "Server address")
      ->envname("LDCP_TARGET")
      ->capture_default_str();
  cmd->add_flag("--tls", c.tls, "Use TLS, verifying the server against the system's CAs")
      ->envname("LDCP_TLS");
  cmd->add_option("--tls-ca", c.tls_ca, "PEM CA bundle to verify the server with (implies --tls)")
      ->envname("LDCP_TLS_CA");
  cmd->add_option("--tls-cert", c.tls_cert, "PEM client certificate, for mutual TLS")
      ->envname("LDCP_TLS_CERT");
  cmd->add_option("--tls-key", c.tls_key, "PEM private key of --tls-cert")->envname("LDCP_TLS_KEY");
  cmd->add_option("--tls-server-name", c.tls_server_name,
                  "Name to verify the server certificate against (default: the target's host)")
      ->envname("LDCP_TLS_SERVER_NAME");
  cmd->add_option("--token-file", c.token_file,
                  "File whose first line is the bearer token (else $LDCP_TOKEN, if set)")
      ->envname("LDCP_TOKEN_FILE");
}

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// Throws std::invalid_argument naming the option.
std::shared_ptr<grpc::ChannelCredentials> channel_credentials(const Connection& c) {
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    throw std::invalid_argument("--tls-cert and --tls-key: give both or neither");
  }
  if (!c.tls && c.tls_ca.empty() && c.tls_cert.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions o;
  for (auto [option, path, out] : {std::tuple{"--tls-ca", &c.tls_ca, &o.pem_root_certs},
                                   std::tuple{"--tls-cert", &c.tls_cert, &o.pem_cert_chain},
                                   std::tuple{"--tls-key", &c.tls_key, &o.pem_private_key}}) {
    if (path->empty()) continue;
    auto text = read_file(*path);
    if (!text) throw std::invalid_argument(std::string(option) + ": cannot read " + *path);
    *out = std::move(*text);
  }
  return grpc::SslCredentials(o);
}

// The token, trimmed, or empty. Throws std::invalid_argument when --token-file is unreadable.
std::string bearer_token(const Connection& c) {
  std::string token;
  if (!c.token_file.empty()) {
    auto text = read_file(c.token_file);
    if (!text) throw std::invalid_argument("--token-file: cannot read " + c.token_file);
    token = text->substr(0, text->find('\n'));
  } else if (const char* env = std::getenv("LDCP_TOKEN")) {
    token = env;
  }
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  return token;
}

void authorize(grpc::ClientContext& ctx, const std::string& token) {
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
}

std::shared_ptr<grpc::Channel> make_channel(const Connection& c, int64_t max_bytes, bool retries) {
  grpc::ChannelArguments args;
  if (!c.tls_server_name.empty()) args.SetSslTargetNameOverride(c.tls_server_name);
  args.SetMaxReceiveMessageSize(static_cast<int>(max_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(max_bytes));
  if (retries) {
    args.SetServiceConfigJSON(ldcp::client::kServiceConfigJson);
  } else {
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  }
  return grpc::CreateCustomChannel(c.target, channel_credentials(c), args);
}

std::vector<double> parse_list(const std::string& text) {
  std::vector<double> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(std::stod(item));
  }
  return out;
}

// FILE.png for one image, FILE-0.png, FILE-1.png, ... for several.
std::filesystem::path image_path(const std::filesystem::path& out, size_t i, size_t n) {
  if (n == 1) return out;
  auto p = out;
  p.replace_filename(out.stem().string() + "-" + std::to_string(i) + out.extension().string());
  return p;
}

bool write_file(const std::filesystem::path& path, const std::string& bytes) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f) return false;
  }
  std::filesystem::rename(tmp, path);
  return true;
}

// An ImageGeneration stub on a channel to the server and a call's context with the bearer token
// and the deadline; null (after saying why) for bad connection options.
struct Call {
  std::unique_ptr<ldcp::v1::ImageGeneration::Stub> stub;
  grpc::ClientContext ctx;
};

std::unique_ptr<Call> open_call(const Connection& connection, int64_t max_message_bytes, bool retry,
                                double timeout_s) {
  auto call = std::make_unique<Call>();
  try {
    call->stub =
        ldcp::v1::ImageGeneration::NewStub(make_channel(connection, max_message_bytes, retry));
    authorize(call->ctx, bearer_token(connection));
  } catch (const std::invalid_argument& e) {
    std::cerr << "ldcp-client: " << e.what() << "\n";
    return nullptr;
  }
  call->ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  return call;
}

struct GenerateOptions {
  Connection connection;
  std::string out = "out.png";
  std::string prompt, negative_prompt, sampler, request_id, pruning = "auto", per_step_levels;
  std::string model;  // empty: the server's default model
  uint32_t width = 0, height = 0, steps = 0, num_images = 0, preview_every = 0;
  std::optional<double> guidance, level, max_level, flops_budget, strength;
  std::string init_image, mask;  // img2img / inpainting: image files sent as they are
  std::string prompt_syntax = "plain";
  uint32_t clip_skip = 0;
  std::vector<std::string> loras;  // --lora NAME:WEIGHT
  double eta = 0, guidance_rescale = 0;
  std::optional<uint64_t> seed;
  int32_t priority = 0;
  double timeout_s = 600;
  bool unary = false, no_retry = false, quiet = false;
  int64_t max_message_bytes = 64LL << 20;
};

int generate(const GenerateOptions& o) {
  ldcp::v1::GenerateRequest req;
  req.set_prompt(o.prompt);
  req.set_negative_prompt(o.negative_prompt);
  req.set_width(o.width);
  req.set_height(o.height);
  req.set_steps(o.steps);
  if (o.guidance) req.set_guidance_scale(*o.guidance);
  req.set_sampler(o.sampler);
  req.set_eta(o.eta);
  req.set_guidance_rescale(o.guidance_rescale);
  if (o.seed) req.set_seed(*o.seed);
  req.set_num_images(o.num_images);
  req.set_request_id(o.request_id);
  req.set_priority(o.priority);
  req.set_preview_every(o.preview_every);
  req.set_output_format(ldcp::v1::OUTPUT_FORMAT_PNG);
  req.set_model(o.model);
  // --init-image, --mask: the files' bytes as they are (the server decodes and bounds them).
  for (auto [flag, path, field] :
       {std::tuple{"--init-image", &o.init_image, req.mutable_init_image()},
        std::tuple{"--mask", &o.mask, req.mutable_mask_image()}}) {
    if (path->empty()) continue;
    auto bytes = read_file(*path);
    if (!bytes) {
      std::cerr << "ldcp-client: " << flag << ": cannot read " << *path << "\n";
      return 2;
    }
    *field = std::move(*bytes);
  }
  if (o.strength) req.set_strength(*o.strength);
  req.set_prompt_syntax(o.prompt_syntax == "a1111" ? ldcp::v1::PROMPT_SYNTAX_A1111
                                                   : ldcp::v1::PROMPT_SYNTAX_PLAIN);
  req.set_clip_skip(o.clip_skip);
  for (const auto& text : o.loras) {
    try {
      const auto spec = ldcp::lora::parse_lora_option(text);
      auto* lora = req.add_loras();
      lora->set_name(spec.name);
      lora->set_weight(spec.weight);
    } catch (const std::invalid_argument& e) {
      std::cerr << "ldcp-client: " << e.what() << "\n";
      return 2;
    }
  }
  auto* pr = req.mutable_pruning();
  if (o.pruning == "auto") pr->set_mode(ldcp::v1::PRUNING_MODE_AUTO);
  if (o.pruning == "off") pr->set_mode(ldcp::v1::PRUNING_MODE_OFF);
  if (o.pruning == "fixed") pr->set_mode(ldcp::v1::PRUNING_MODE_FIXED);
  if (o.level) pr->set_level(*o.level);
  if (o.max_level) pr->set_max_level(*o.max_level);
  if (o.flops_budget) pr->set_flops_budget(*o.flops_budget);
  try {
    for (double l : parse_list(o.per_step_levels)) pr->add_per_step_levels(l);
  } catch (const std::exception&) {
    std::cerr << "ldcp-client: --per-step-levels: not a comma-separated list of numbers\n";
    return 2;
  }

  const auto call = open_call(o.connection, o.max_message_bytes, !o.no_retry, o.timeout_s);
  if (!call) return 2;
  auto& stub = call->stub;
  auto& ctx = call->ctx;
  ldcp::v1::GenerateResponse result;
  if (o.unary) {
    auto status = stub->Generate(&ctx, req, &result);
    if (!status.ok()) return fail(status);
  } else {
    auto reader = stub->GenerateStream(&ctx, req);
    ldcp::v1::GenerateEvent ev;
    std::optional<ldcp::cli::Progress> bar;
    bool got_result = false;
    while (reader->Read(&ev)) {
      if (ev.has_progress()) {
        const auto& p = ev.progress();
        if (o.quiet) continue;
        if (!bar) bar.emplace("generate", p.num_steps());
        char detail[64];
        std::snprintf(detail, sizeof detail, "level %.2f", p.level());
        bar->update(p.step(), detail, p.elapsed_seconds());
        if (p.has_preview() && !p.preview().data().empty()) {
          auto path = std::filesystem::path(o.out);
          path.replace_filename(path.stem().string() + "-preview.png");
          write_file(path, p.preview().data());
        }
      } else if (ev.has_result()) {
        result = ev.result();
        got_result = true;
      }
    }
    if (bar) bar->finish();
    auto status = reader->Finish();
    if (!status.ok()) return fail(status);
    if (!got_result) {
      return fail(grpc::Status(grpc::StatusCode::INTERNAL, "the stream ended without a result"));
    }
  }
  const size_t n = static_cast<size_t>(result.images_size());
  for (size_t i = 0; i < n; ++i) {
    const auto path = image_path(o.out, i, n);
    if (!write_file(path, result.images(static_cast<int>(i)).data())) {
      std::cerr << "ldcp-client: cannot write " << path << "\n";
      return 1;
    }
    std::cout << "wrote " << path.string() << "\n";
  }
  double max_level = 0;
  for (double l : result.step_levels()) max_level = std::max(max_level, l);
  const auto& t = result.timings();
  std::printf(
      "request %s: model %s, seed %llu, max level %.2f, pruning ratio %.3f, batch %u, peak memory "
      "%lld bytes\ntimings: queue %.3f s, text encoding %.3f s, denoising %.3f s, decoding %.3f "
      "s, total %.3f s\n",
      result.request_id().c_str(), result.model().c_str(),
      static_cast<unsigned long long>(result.seed()), max_level, result.pruning_ratio(),
      result.batch_size(), static_cast<long long>(result.peak_memory_bytes()), t.queue_seconds(),
      t.text_encoding_seconds(), t.denoising_seconds(), t.decoding_seconds(), t.total_seconds());
  return 0;
}

int health(const Connection& connection, const std::string& service, double timeout_s) {
  std::shared_ptr<grpc::Channel> channel;
  try {
    channel = make_channel(connection, 4 << 20, false);
  } catch (const std::invalid_argument& e) {
    std::cerr << "ldcp-client: " << e.what() << "\n";
    return 2;
  }
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  auto status = stub->Check(&ctx, req, &resp);
  if (!status.ok()) return fail(status);
  const auto name = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
  std::cout << name << "\n";
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

// ListModels: one line per model (the first is the default), or the response as JSON.
int list_models(const Connection& connection, bool json, double timeout_s) {
  const auto call = open_call(connection, 4 << 20, true, timeout_s);
  if (!call) return 2;
  ldcp::v1::ListModelsResponse resp;
  auto status = call->stub->ListModels(&call->ctx, ldcp::v1::ListModelsRequest(), &resp);
  if (!status.ok()) return fail(status);
  if (json) {
    std::string text;
    google::protobuf::util::JsonPrintOptions options;
    options.always_print_primitive_fields = true;
    options.preserve_proto_field_names = true;
    if (!google::protobuf::util::MessageToJsonString(resp, &text, options).ok()) return 1;
    std::cout << text << "\n";
    return 0;
  }
  for (const auto& m : resp.models()) {
    std::string loras, budgets;
    for (const auto& l : m.loaded_loras()) loras += (loras.empty() ? "" : ",") + l;
    for (double b : m.flops_budgets()) {
      std::ostringstream s;
      s << b;
      budgets += (budgets.empty() ? "" : ",") + s.str();
    }
    std::printf(
        "%s%s: %s, native %ux%u, scores %s%s%s%s, loaded LoRAs %s, weights %lld bytes%s%s\n",
        m.name().c_str(), m.is_default() ? " (default)" : "", m.architecture().c_str(),
        m.native_size(), m.native_size(), m.gate_scores().c_str(),
        m.gates_file().empty() ? "" : (" from " + m.gates_file()).c_str(),
        budgets.empty() ? "" : ", FLOPs budgets ", budgets.c_str(),
        loras.empty() ? "none" : loras.c_str(), static_cast<long long>(m.weights_bytes()),
        m.hash().empty() ? "" : ", hash ", m.hash().c_str());
  }
  std::printf("memory budget %lld bytes, weights %lld bytes\n",
              static_cast<long long>(resp.memory_budget_bytes()),
              static_cast<long long>(resp.weights_bytes()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "ldcp-client: generate images with ldcp-server, list its models, or check its health"};
  app.require_subcommand(1);
  GenerateOptions g;
  auto* gen = app.add_subcommand("generate", "Generate images (progress from GenerateStream)");
  add_connection_options(gen, g.connection);
  gen->add_option("--prompt", g.prompt, "Prompt")->required();
  gen->add_option("--negative-prompt", g.negative_prompt, "Negative prompt");
  gen->add_option("--out", g.out, "Output PNG (several images: FILE-0.png, FILE-1.png, ...)")
      ->capture_default_str();
  gen->add_option("--width", g.width, "Pixels, multiple of 8 (0: the server's default)");
  gen->add_option("--height", g.height, "Pixels, multiple of 8 (0: the server's default)");
  gen->add_option("--steps", g.steps, "Denoising steps (0: the server's default)");
  gen->add_option("--guidance", g.guidance, "Guidance scale (default 7.5)");
  gen->add_option("--sampler", g.sampler,
                  "pndm, ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras (default: the server's)");
  gen->add_option("--eta", g.eta, "DDIM eta, in [0, 1]");
  gen->add_option("--guidance-rescale", g.guidance_rescale, "Guidance rescale, in [0, 1]");
  gen->add_option("--seed", g.seed, "Seed (default: random, chosen by the server and printed)");
  gen->add_option("--num-images", g.num_images, "Images for this prompt");
  gen->add_option("--pruning", g.pruning, "auto, off or fixed")
      ->check(CLI::IsMember({"auto", "off", "fixed"}))
      ->capture_default_str();
  gen->add_option("--level", g.level, "fixed: the pruning level, in [0, 1)");
  gen->add_option("--per-step-levels", g.per_step_levels, "fixed: one level per step, a,b,c");
  gen->add_option("--max-level", g.max_level, "auto: the most pruning accepted, in [0, 1)");
  gen->add_option("--flops-budget", g.flops_budget,
                  "fixed: mean U-Net FLOPs fraction in (0, 1]; the server's learned per-step "
                  "schedule for it");
  gen->add_option("--init-image", g.init_image,
                  "img2img: a PNG or JPEG to start from (width x height; not resized)");
  gen->add_option(
      "--strength", g.strength,
      "With --init-image: how much to re-noise, in (0, 1] (default 0.8; 1.0 with --mask)");
  gen->add_option("--mask", g.mask, "Inpainting: PNG or JPEG mask, white repainted");
  gen->add_option("--prompt-syntax", g.prompt_syntax,
                  "plain (as diffusers) or a1111 (A1111's attention syntax, 75-token chunks)")
      ->check(CLI::IsMember({"plain", "a1111"}));
  gen->add_option("--clip-skip", g.clip_skip,
                  "0/1: the text encoder's last layer; N: N - 1 layers before it");
  gen->add_option("--model", g.model,
                  "The server's model to use (ldcp-client list-models; default: its first)");
  gen->add_option("--lora", g.loras,
                  "NAME:WEIGHT (repeatable): a LoRA of the server's --lora-dir at that weight");
  gen->add_option("--request-id", g.request_id, "Request id (echoed and logged)");
  gen->add_option("--priority", g.priority, "Higher runs first");
  gen->add_option("--preview-every", g.preview_every,
                  "Write a small preview (OUT-preview.png) every N steps");
  gen->add_option("--timeout", g.timeout_s, "Deadline in seconds")->capture_default_str();
  gen->add_option("--max-message-bytes", g.max_message_bytes, "Largest response accepted")
      ->capture_default_str();
  gen->add_flag("--unary", g.unary, "Call the unary Generate (no progress)");
  gen->add_flag("--no-retry", g.no_retry, "Do not retry UNAVAILABLE");
  gen->add_flag("--quiet", g.quiet, "No progress output");

  Connection h_connection;
  std::string h_service;
  double h_timeout = 5;
  auto* hc = app.add_subcommand("health",
                                "grpc.health.v1 Check: prints the status, exit 0 "
                                "when SERVING");
  add_connection_options(hc, h_connection);
  hc->add_option("--service", h_service, "Service name (empty: the whole server)");
  hc->add_option("--timeout", h_timeout, "Deadline in seconds")->capture_default_str();

  Connection l_connection;
  bool l_json = false;
  double l_timeout = 10;
  auto* lm = app.add_subcommand("list-models",
                                "ListModels: the server's models (name, architecture, native size, "
                                "pruning scores, loaded LoRAs)");
  add_connection_options(lm, l_connection);
  lm->add_flag("--json", l_json, "Print the response as JSON");
  lm->add_option("--timeout", l_timeout, "Deadline in seconds")->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  if (gen->parsed()) return generate(g);
  if (lm->parsed()) return list_models(l_connection, l_json, l_timeout);
  return health(h_connection, h_service, h_timeout);
}
