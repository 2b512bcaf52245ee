#include "server/service.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include <torch/torch.h>

#include "model/pipelines/image_io.h"
#include "model/schedulers/scheduler.h"
#include "server/auth.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/model_specs.h"
#include "server/service_shared.h"

namespace ldcp::server {

// ---------------------------------------------------------------------------------------------

GenerationService::GenerationService(RequestScheduler& scheduler, std::vector<ServiceModel> models,
                                     Metrics* metrics, RequestLimits limits,
                                     const MemoryBudget* budget)
    : shared_(std::make_shared<Shared>(scheduler, std::move(models), metrics, std::move(limits),
                                       budget)) {
  if (shared_->models.empty()) throw std::invalid_argument("the service needs a model");
  shared_->limits.samplers = schedulers::sampler_names();
}

void GenerationService::set_authenticator(Authenticator* auth) { shared_->auth = auth; }

namespace {

grpc::StatusCode to_grpc(Status s) {
  switch (s) {
    case Status::kOk:
      return grpc::StatusCode::OK;
    case Status::kCancelled:
      return grpc::StatusCode::CANCELLED;
    case Status::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case Status::kDeadlineExceeded:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case Status::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case Status::kInternal:
      return grpc::StatusCode::INTERNAL;
    case Status::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
  }
  return grpc::StatusCode::UNKNOWN;
}

// A message as gRPC sends it (the methods are raw: service.h).
template <class Message>
grpc::ByteBuffer serialize(const Message& message) {
  grpc::ByteBuffer out;
  bool own = false;
  const auto status = grpc::SerializationTraits<Message>::Serialize(message, &out, &own);
  if (!status.ok()) throw std::runtime_error("serializing: " + status.error_message());
  return out;
}

// SD latent space -> approximate RGB, a linear map widely used for previews.
v1::Image latent_preview(const at::Tensor& latents) {
  static const float kFactors[4][3] = {{0.298f, 0.207f, 0.208f},
                                       {0.187f, 0.286f, 0.173f},
                                       {-0.158f, 0.189f, 0.264f},
                                       {-0.184f, -0.271f, -0.473f}};
  auto lat = latents.dim() == 4 ? latents[0] : latents;
  lat = lat.detach().to(torch::kCPU, torch::kFloat);
  auto m = torch::from_blob(const_cast<float*>(&kFactors[0][0]), {4, 3}, torch::kFloat);
  const int64_t c = std::min<int64_t>(lat.size(0), 4);
  auto rgb = torch::einsum("chw,cr->hwr", {lat.slice(0, 0, c), m.slice(0, 0, c)});
  rgb = ((rgb + 1.0) * 127.5).round().clamp(0, 255).to(torch::kUInt8).contiguous();
  v1::Image img;
  img.set_data(pipelines::encode_png(rgb));
  img.set_mime_type("image/png");
  img.set_width(static_cast<uint32_t>(rgb.size(1)));
  img.set_height(static_cast<uint32_t>(rgb.size(0)));
  return img;
}

// One RPC of either kind: validation, submission, the result, the log line and metrics.
class CallCore {
 public:
  CallCore(std::shared_ptr<GenerationService::Shared> shared, grpc::CallbackServerContext* ctx,
           const grpc::ByteBuffer* bytes, const char* method)
      : shared_(std::move(shared)), ctx_(ctx), bytes_(bytes), method_(method) {}

  // Returns an error status when the request is rejected before submission.
  std::optional<grpc::Status> prepare() {
    job_ = std::make_shared<Job>();
    job_->arrival = arrival_;
    job_->method = method_;
    // The token first: a caller without one learns nothing about its request.
    if (auto denied = authenticate()) return denied;
    if (auto rejected = parse()) return rejected;
    job_->id = request_->request_id().empty()
                   ? "req-" + std::to_string(shared_->next_id.fetch_add(1))
                   : request_->request_id();
    const std::string error =
        request_to_job(*request_, shared_->limits, shared_->engines, shared_->random_seed(), *job_);
    if (!error.empty()) {
      JobOutcome o;
      o.status = Status::kInvalidArgument;
      o.message = error;
      record(o);
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, error);
    }
    validated_ = true;
    if (auto denied = admit()) return denied;
    set_deadline();
    return std::nullopt;
  }

  // The request's bytes into parsed_: a request over --max-receive-bytes or one protobuf cannot
  // parse is rejected, counted and logged like any other.
  std::optional<grpc::Status> parse() {
    const size_t size = bytes_ ? bytes_->Length() : 0;
    std::string error;
    auto code = grpc::StatusCode::INVALID_ARGUMENT;
    if (static_cast<int64_t>(size) > shared_->limits.max_receive_bytes) {
      code = grpc::StatusCode::RESOURCE_EXHAUSTED;
      error = "request is " + std::to_string(size) + " bytes, more than --max-receive-bytes (" +
              std::to_string(shared_->limits.max_receive_bytes) + ")";
    } else {
      std::string data;
      std::vector<grpc::Slice> slices;
      if (bytes_ && bytes_->Dump(&slices).ok()) {
        data.reserve(size);
        for (const auto& slice : slices) {
          data.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
        }
      }
      if (parse_request(data, parsed_, error)) {
        parsed_ok_ = true;
        // The metrics' model label, also for a request rejected for another field.
        size_t model = 0;
        if (resolve_model(parsed_, shared_->limits, model).empty()) {
          model_label_ = shared_->models[model].name;
        }
        return std::nullopt;
      }
    }
    parsed_.Clear();
    job_->id = "req-" + std::to_string(shared_->next_id.fetch_add(1));
    JobOutcome o;
    o.status = code == grpc::StatusCode::INVALID_ARGUMENT ? Status::kInvalidArgument
                                                          : Status::kResourceExhausted;
    o.message = error;
    record(o);
    return grpc::Status(code, error);
  }

  // The client's deadline, capped by --max-deadline (which requests without one get).
  void set_deadline() {
    std::optional<Clock::time_point> d;
    const auto deadline = ctx_->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      d = Clock::now() +
          std::chrono::duration_cast<Clock::duration>(deadline - std::chrono::system_clock::now());
    }
    const double cap_s = shared_->limits.max_deadline_s;
    if (cap_s > 0) {
      const auto cap = arrival_ + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(cap_s));
      if (!d || cap < *d) {
        d = cap;
        deadline_capped_ = true;
      }
    }
    job_->deadline = d;
  }

  // Every outcome before it is sent: a deadline the server set says so.
  void explain(JobOutcome& o) const {
    if (o.status == Status::kDeadlineExceeded && deadline_capped_) {
      std::ostringstream m;
      m << o.message << " (the server's --max-deadline of " << shared_->limits.max_deadline_s
        << " s)";
      o.message = m.str();
    }
  }

  // Authentication and authorization (server/auth.h): the token before validation, the client's
  // permissions, priority clamp and limits after it.
  std::optional<grpc::Status> authenticate() {
    if (!shared_->auth) return std::nullopt;
    const auto& md = ctx_->client_metadata();
    const auto it = md.find("authorization");
    identity_ = shared_->auth->authenticate(
        it == md.end() ? std::string_view()
                       : std::string_view(it->second.data(), it->second.size()));
    if (identity_.code == AuthCode::kOk) return std::nullopt;
    return deny(identity_.code, identity_.message);
  }
  std::optional<grpc::Status> admit() {
    if (!shared_->auth) return std::nullopt;
    const auto mode = job_->pruning.mode;
    const PruningKind kind = mode == PruningRequest::Mode::kAuto  ? PruningKind::kAuto
                             : mode == PruningRequest::Mode::kOff ? PruningKind::kOff
                                                                  : PruningKind::kFixed;
    auto a = shared_->auth->admit(identity_, method_, kind, job_->priority);
    if (a.code != AuthCode::kOk) return deny(a.code, a.message);
    job_->priority = a.priority;
    ticket_ = std::move(a.ticket);
    return std::nullopt;
  }
  grpc::Status deny(AuthCode code, const std::string& message) {
    if (job_->id.empty()) job_->id = "req-" + std::to_string(shared_->next_id.fetch_add(1));
    JobOutcome o;
    o.message = message;
    record(o, auth_code_name(code));
    return grpc::Status(to_grpc(code), message);
  }
  // Submits the job; with a client's ticket, its first denoising step takes it off the client's
  // queued count.
  void submit() {
    if (ticket_) {
      job_->on_step = [inner = std::move(job_->on_step), t = ticket_](
                          const pipelines::StepInfo& info, double level) {
        t->started();
        if (inner) inner(info, level);
      };
    }
    shared_->scheduler.submit(job_);
  }

  double elapsed() const { return std::chrono::duration<double>(Clock::now() - arrival_).count(); }

  // Metrics and the log line for a finished request (`status`: the code name when not o.status).
  void record(const JobOutcome& o, const char* status = nullptr) const {
    const double total = elapsed();
    if (ticket_) ticket_->release();
    if (!status) status = status_name(o.status);
    if (shared_->metrics) {
      shared_->metrics->request_finished(method_, status, total,
                                         identity_.client.empty() ? "anonymous" : identity_.client,
                                         model_label_);
    }
    RequestLogLine line;
    line.id = job_ ? job_->id : request_->request_id();  // logging.h bounds and escapes it
    line.method = method_;
    line.status = status;
    line.client = identity_.client;  // empty without authentication
    line.message = o.message;
    if (validated_) {
      line.width = job_->params.width;
      line.height = job_->params.height;
      line.steps = job_->params.steps;
      line.images = job_->params.num_images;
    } else if (parsed_ok_) {
      // Rejected: what it asked for (zeros when it did not parse).
      const auto asked = asked_shape(*request_, shared_->limits);
      line.width = asked.width;
      line.height = asked.height;
      line.steps = asked.steps;
      line.images = asked.images;
    }
    if (o.status == Status::kOk && validated_ && shared_->metrics &&
        job_->pruning.mode == PruningRequest::Mode::kAuto) {
      shared_->metrics->auto_request_served(o.result.pruned_flops_fraction);
    }
    line.batch = o.batch_requests;
    line.level = o.level;
    line.pruning_ratio = o.result.pruned_flops_fraction;
    line.queue_s = o.queue_seconds;
    line.text_encoding_s = o.result.timings.text_encoding_s;
    line.denoising_s = o.result.timings.denoising_s;
    line.decoding_s = o.result.timings.decoding_s;
    line.total_s = total;
    line.peak_memory_bytes = o.result.peak_memory_bytes;
    line.retried_after_oom = o.retried_after_oom;
    line.level_reason = o.level_reason;
    log_request(line);
  }

  void fill(const JobOutcome& o, v1::GenerateResponse* out) const {
    const auto& r = o.result;
    if (r.images.defined() && r.images.numel() > 0) {
      const auto u8 = pipelines::to_uint8(r.images);
      for (int64_t i = 0; i < u8.size(0); ++i) {
        auto* img = out->add_images();
        std::vector<pipelines::PngText> text;
        if (const auto& model = shared_->models[job_->model].png) {
          text.push_back({"parameters", pipelines::png_parameters(job_->params, r, i, *model)});
        }
        img->set_data(pipelines::encode_png(u8[i].contiguous(), text));
        img->set_mime_type("image/png");
        img->set_width(static_cast<uint32_t>(u8.size(2)));
        img->set_height(static_cast<uint32_t>(u8.size(1)));
      }
    }
    out->set_seed(job_->params.seed);
    for (double l : r.step_levels) out->add_step_levels(l);
    out->set_pruning_ratio(r.pruned_flops_fraction);
    out->set_pruned_channel_fraction(r.pruned_channel_fraction);
    auto* t = out->mutable_timings();
    t->set_queue_seconds(o.queue_seconds);
    t->set_text_encoding_seconds(r.timings.text_encoding_s);
    t->set_denoising_seconds(r.timings.denoising_s);
    t->set_decoding_seconds(r.timings.decoding_s);
    t->set_total_seconds(elapsed());
    out->set_peak_memory_bytes(r.peak_memory_bytes);
    out->set_model(shared_->models[job_->model].name);
    out->set_request_id(job_->id);
    out->set_batch_size(static_cast<uint32_t>(o.batch_requests));
  }

  std::shared_ptr<GenerationService::Shared> shared_;
  grpc::CallbackServerContext* ctx_;
  const grpc::ByteBuffer* bytes_;
  v1::GenerateRequest parsed_;
  const v1::GenerateRequest* request_ = &parsed_;
  bool parsed_ok_ = false;
  bool validated_ = false;
  bool deadline_capped_ = false;
  const char* method_;
  std::string model_label_ = kNoModelLabel;  // the request's model once it parsed and resolved
  Clock::time_point arrival_ = Clock::now();
  std::shared_ptr<Job> job_;
  Identity identity_;
  std::shared_ptr<AdmissionTicket> ticket_;
};

class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(std::shared_ptr<GenerationService::Shared> shared, grpc::CallbackServerContext* ctx,
            const grpc::ByteBuffer* request, grpc::ByteBuffer* response)
      : core_(std::move(shared), ctx, request, "Generate"), response_(response) {
    if (auto error = core_.prepare()) {
      Finish(*error);
      return;
    }
    core_.job_->on_done = [this](JobOutcome&& o) {
      core_.explain(o);
      grpc::Status status(to_grpc(o.status), o.message);
      if (o.status == Status::kOk) {
        try {
          v1::GenerateResponse response;
          core_.fill(o, &response);
          *response_ = serialize(response);
        } catch (const std::exception& e) {
          o.status = Status::kInternal;
          o.message = std::string("encoding the response: ") + e.what();
          status = grpc::Status(grpc::StatusCode::INTERNAL, o.message);
        }
      }
      core_.record(o);
      Finish(status);
    };
    core_.submit();
  }
  void OnCancel() override {
    if (core_.job_) core_.job_->cancelled = true;
  }
  void OnDone() override { delete this; }

 private:
  CallCore core_;
  grpc::ByteBuffer* response_;
};

class StreamCall final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  StreamCall(std::shared_ptr<GenerationService::Shared> shared, grpc::CallbackServerContext* ctx,
             const grpc::ByteBuffer* request)
      : core_(std::move(shared), ctx, request, "GenerateStream") {
    if (auto error = core_.prepare()) {
      finished_ = true;
      Finish(*error);
      return;
    }
    const uint32_t preview_every = core_.request_->preview_every();
    core_.job_->on_step = [this, preview_every](const pipelines::StepInfo& info, double level) {
      v1::GenerateEvent ev;
      auto* p = ev.mutable_progress();
      p->set_step(static_cast<uint32_t>(info.step + 1));
      p->set_num_steps(static_cast<uint32_t>(info.num_steps));
      p->set_timestep(info.timestep);
      p->set_level(level);
      p->set_elapsed_seconds(
          std::chrono::duration<double>(Clock::now() - core_.job_->started).count());
      if (preview_every > 0 && info.latents && (info.step + 1) % preview_every == 0) {
        try {
          *p->mutable_preview() = latent_preview(*info.latents);
        } catch (const std::exception& e) {
          log_debug(std::string("preview failed: ") + e.what());
        }
      }
      progress(serialize(ev));
    };
    core_.job_->on_done = [this](JobOutcome&& o) {
      core_.explain(o);
      std::optional<grpc::ByteBuffer> result;
      grpc::Status status(to_grpc(o.status), o.message);
      if (o.status == Status::kOk) {
        try {
          v1::GenerateEvent event;
          core_.fill(o, event.mutable_result());
          result = serialize(event);
        } catch (const std::exception& e) {
          result.reset();
          o.status = Status::kInternal;
          o.message = std::string("encoding the response: ") + e.what();
          status = grpc::Status(grpc::StatusCode::INTERNAL, o.message);
        }
      }
      core_.record(o);
      Action action = Action::kNone;
      {
        std::lock_guard lock(mu_);
        final_ready_ = true;
        final_status_ = status;
        if (result) final_ = std::move(*result);
        has_final_event_ = result.has_value();
        if (!writing_) action = decide_finish_locked();
      }
      act(action);  // may end the call (and delete this): nothing may follow
    };
    core_.submit();
  }

  void OnWriteDone(bool ok) override {
    Action action = Action::kNone;
    {
      std::lock_guard lock(mu_);
      writing_ = false;
      if (finished_) return;
      if (!ok && core_.job_) core_.job_->cancelled = true;  // the client is gone
      if (final_ready_) {
        action = decide_finish_locked();
      } else if (pending_ && ok) {
        current_ = std::move(*pending_);
        pending_.reset();
        writing_ = true;
        StartWrite(&current_);
      }
    }
    act(action);
  }
  void OnCancel() override {
    if (core_.job_) core_.job_->cancelled = true;
  }
  void OnDone() override { delete this; }

 private:
  void progress(grpc::ByteBuffer&& ev) {
    std::lock_guard lock(mu_);
    if (finished_ || final_ready_) return;
    if (writing_) {
      pending_ = std::move(ev);  // keep only the latest while a write is in flight
      return;
    }
    current_ = std::move(ev);
    writing_ = true;
    StartWrite(&current_);
  }
  enum class Action { kNone, kWriteFinal, kFinish };
  // Decided under the lock, done after it: finishing may delete this object at once.
  Action decide_finish_locked() {
    if (finished_) return Action::kNone;
    finished_ = true;
    return has_final_event_ && final_status_.ok() ? Action::kWriteFinal : Action::kFinish;
  }
  void act(Action action) {
    if (action == Action::kWriteFinal) {
      StartWriteAndFinish(&final_, grpc::WriteOptions(), grpc::Status::OK);
    } else if (action == Action::kFinish) {
      Finish(final_status_);
    }
  }

  CallCore core_;
  std::mutex mu_;
  bool writing_ = false;
  bool finished_ = false;
  bool final_ready_ = false;
  bool has_final_event_ = false;
  grpc::Status final_status_;
  grpc::ByteBuffer current_;
  grpc::ByteBuffer final_;
  std::optional<grpc::ByteBuffer> pending_;
};

}  // namespace

grpc::ServerUnaryReactor* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  return new UnaryCall(shared_, context, request, response);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::GenerateStream(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return new StreamCall(shared_, context, request);
}

}  // namespace ldcp::server
