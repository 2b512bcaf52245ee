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

namespace ldcp::server {

RequestLimits RequestLimits::from(const ServerConfig& c, int64_t native_resolution) {
  RequestLimits l;
  l.min_size = c.min_size;
  l.max_size = c.max_size;
  l.default_size = c.default_size > 0 ? c.default_size : native_resolution;
  l.max_steps = c.max_steps;
  l.default_steps = c.default_steps;
  l.max_guidance = c.max_guidance;
  l.max_images = c.max_images;
  l.max_prompt_chars = c.max_prompt_chars;
  l.default_sampler = c.default_sampler;
  l.max_level = c.max_level;
  return l;
}

namespace {

std::string fmt_num(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
  return out;
}

bool is_level(double l) { return std::isfinite(l) && l >= 0.0 && l < 1.0; }

}  // namespace

std::string request_to_job(const v1::GenerateRequest& r, const RequestLimits& lim,
                           const Engine& engine, uint64_t random_seed, Job& job) {
  auto& p = job.params;
  if (static_cast<int64_t>(r.prompt().size()) > lim.max_prompt_chars) {
    return "prompt: at most " + std::to_string(lim.max_prompt_chars) + " bytes, got " +
           std::to_string(r.prompt().size());
  }
  if (static_cast<int64_t>(r.negative_prompt().size()) > lim.max_prompt_chars) {
    return "negative_prompt: at most " + std::to_string(lim.max_prompt_chars) + " bytes, got " +
           std::to_string(r.negative_prompt().size());
  }
  p.prompt = r.prompt();
  p.negative_prompt = r.negative_prompt();
  for (auto [name, value, out] :
       {std::tuple{"width", r.width(), &p.width}, std::tuple{"height", r.height(), &p.height}}) {
    const int64_t v = value == 0 ? lim.default_size : static_cast<int64_t>(value);
    if (v % 8 != 0 || v < lim.min_size || v > lim.max_size) {
      return std::string(name) + ": must be a multiple of 8 in [" + std::to_string(lim.min_size) +
             ", " + std::to_string(lim.max_size) + "] (0: default " +
             std::to_string(lim.default_size) + "), got " + std::to_string(value);
    }
    *out = v;
  }
  const int64_t steps = r.steps() == 0 ? lim.default_steps : static_cast<int64_t>(r.steps());
  if (steps < 1 || steps > lim.max_steps) {
    return "steps: must be in [1, " + std::to_string(lim.max_steps) + "] (0: default " +
           std::to_string(lim.default_steps) + "), got " + std::to_string(r.steps());
  }
  p.steps = steps;
  if (r.has_guidance_scale()) {
    const double g = r.guidance_scale();
    if (!std::isfinite(g) || g < 0.0 || g > lim.max_guidance) {
      return "guidance_scale: must be a finite number in [0, " + fmt_num(lim.max_guidance) +
             "], got " + fmt_num(g);
    }
    p.guidance_scale = g;
  } else {
    p.guidance_scale = 7.5;
  }
  if (!std::isfinite(r.guidance_rescale()) || r.guidance_rescale() < 0.0 ||
      r.guidance_rescale() > 1.0) {
    return "guidance_rescale: must be in [0, 1], got " + fmt_num(r.guidance_rescale());
  }
  p.guidance_rescale = r.guidance_rescale();
  p.sampler = r.sampler().empty() ? lim.default_sampler : r.sampler();
  const auto& names = schedulers::sampler_names();
  if (std::find(names.begin(), names.end(), p.sampler) == names.end()) {
    return "sampler: must be one of " + join(names) + ", got '" + r.sampler() + "'";
  }
  if (!std::isfinite(r.eta()) || r.eta() < 0.0 || r.eta() > 1.0) {
    return "eta: must be in [0, 1], got " + fmt_num(r.eta());
  }
  if (r.eta() != 0.0 && p.sampler != "ddim") {
    return "eta: only the ddim sampler takes eta (must be 0 for " + p.sampler + ")";
  }
  p.eta = r.eta();
  p.seed = r.has_seed() ? r.seed() : random_seed;
  const int64_t images = r.num_images() == 0 ? 1 : static_cast<int64_t>(r.num_images());
  if (images < 1 || images > lim.max_images) {
    return "num_images: must be in [1, " + std::to_string(lim.max_images) + "], got " +
           std::to_string(r.num_images());
  }
  p.num_images = images;

  const auto& pr = r.pruning();
  auto& pj = job.pruning;
  if (pr.has_max_level() && !is_level(pr.max_level())) {
    return "pruning.max_level: must be in [0, 1), got " + fmt_num(pr.max_level());
  }
  if (pr.has_flops_budget() && pr.mode() != v1::PRUNING_MODE_FIXED) {
    return "pruning.flops_budget: only allowed with mode FIXED";
  }
  switch (pr.mode()) {
    case v1::PRUNING_MODE_UNSPECIFIED:
    case v1::PRUNING_MODE_AUTO:
      if (pr.level() != 0.0 || pr.per_step_levels_size() > 0) {
        return "pruning.level / pruning.per_step_levels: only allowed with mode FIXED (AUTO "
               "takes max_level)";
      }
      pj.mode = PruningRequest::Mode::kAuto;
      pj.max_level = pr.has_max_level() ? pr.max_level() : lim.max_level;
      break;
    case v1::PRUNING_MODE_OFF:
      if (pr.level() != 0.0 || pr.per_step_levels_size() > 0) {
        return "pruning.level / pruning.per_step_levels: not allowed with mode OFF";
      }
      pj.mode = PruningRequest::Mode::kOff;
      pj.schedule = pruning::PruningSchedule::off();
      break;
    case v1::PRUNING_MODE_FIXED:
      pj.mode = PruningRequest::Mode::kFixed;
      if (pr.has_flops_budget()) {
        const double budget = pr.flops_budget();
        if (pr.level() != 0.0 || pr.per_step_levels_size() > 0) {
          return "pruning.flops_budget: not allowed with pruning.level or pruning.per_step_levels";
        }
        if (!(std::isfinite(budget) && budget > 0.0 && budget <= 1.0)) {
          return "pruning.flops_budget: must be a FLOPs fraction in (0, 1], got " + fmt_num(budget);
        }
        try {
          pj.schedule =
              pruning::PruningSchedule::steps(engine.budget_levels(budget, p.sampler, steps));
        } catch (const std::invalid_argument& e) {
          return std::string("pruning.flops_budget: ") + e.what();
        }
      } else if (pr.per_step_levels_size() > 0) {
        if (pr.per_step_levels_size() > steps) {
          return "pruning.per_step_levels: at most one level per step (" + std::to_string(steps) +
                 "), got " + std::to_string(pr.per_step_levels_size());
        }
        std::vector<double> levels;
        for (int i = 0; i < pr.per_step_levels_size(); ++i) {
          if (!is_level(pr.per_step_levels(i))) {
            return "pruning.per_step_levels[" + std::to_string(i) + "]: must be in [0, 1), got " +
                   fmt_num(pr.per_step_levels(i));
          }
          levels.push_back(pr.per_step_levels(i));
        }
        pj.schedule = pruning::PruningSchedule::steps(std::move(levels));
      } else {
        if (!is_level(pr.level())) {
          return "pruning.level: must be in [0, 1), got " + fmt_num(pr.level());
        }
        pj.schedule = pr.level() > 0 ? pruning::PruningSchedule::fixed(pr.level())
                                     : pruning::PruningSchedule::off();
      }
      if (pr.has_max_level() && pj.schedule.max_level() > pr.max_level()) {
        return "pruning.max_level: the FIXED schedule's highest level " +
               fmt_num(pj.schedule.max_level()) + " exceeds max_level " + fmt_num(pr.max_level());
      }
      break;
    default:
      return "pruning.mode: must be AUTO, OFF or FIXED, got " + std::to_string(pr.mode());
  }
  if (r.output_format() != v1::OUTPUT_FORMAT_UNSPECIFIED &&
      r.output_format() != v1::OUTPUT_FORMAT_PNG) {
    return "output_format: must be PNG, got " + std::to_string(r.output_format());
  }
  if (static_cast<int64_t>(r.request_id().size()) > lim.max_request_id_chars) {
    return "request_id: at most " + std::to_string(lim.max_request_id_chars) + " bytes, got " +
           std::to_string(r.request_id().size());
  }
  for (unsigned char ch : r.request_id()) {
    if (ch < 0x20 || ch == 0x7f) return "request_id: control characters are not allowed";
  }
  if (r.priority() < -1000 || r.priority() > 1000) {
    return "priority: must be in [-1000, 1000], got " + std::to_string(r.priority());
  }
  if (r.preview_every() > static_cast<uint32_t>(steps)) {
    return "preview_every: must be in [0, steps=" + std::to_string(steps) + "], got " +
           std::to_string(r.preview_every());
  }
  job.priority = r.priority();
  // The pipeline's own checks (the schedule included) as a backstop.
  try {
    auto check = p;
    if (pj.mode != PruningRequest::Mode::kAuto) check.pruning = pj.schedule;
    engine.validate(check);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  if (pj.mode != PruningRequest::Mode::kAuto) p.pruning = pj.schedule;
  return {};
}

// ---------------------------------------------------------------------------------------------

struct GenerationService::Shared {
  Shared(RequestScheduler& s, Engine& e, Metrics* m, RequestLimits l)
      : scheduler(s), engine(e), metrics(m), limits(std::move(l)) {}
  RequestScheduler& scheduler;
  Engine& engine;
  Metrics* metrics;
  RequestLimits limits;
  Authenticator* auth = nullptr;
  std::mutex rng_mu;
  std::mt19937_64 rng{std::random_device{}()};
  std::atomic<uint64_t> next_id{1};

  uint64_t random_seed() {
    std::lock_guard lock(rng_mu);
    // Seeds that fit a double exactly, so clients in any language read them back unchanged.
    return rng() & ((uint64_t{1} << 53) - 1);
  }
};

GenerationService::GenerationService(RequestScheduler& scheduler, Engine& engine, Metrics* metrics,
                                     RequestLimits limits)
    : shared_(std::make_shared<Shared>(scheduler, engine, metrics, std::move(limits))) {}

void GenerationService::set_authenticator(Authenticator* auth) { shared_->auth = auth; }

namespace {

grpc::StatusCode to_grpc(AuthCode c) {
  switch (c) {
    case AuthCode::kOk:
      return grpc::StatusCode::OK;
    case AuthCode::kUnauthenticated:
      return grpc::StatusCode::UNAUTHENTICATED;
    case AuthCode::kPermissionDenied:
      return grpc::StatusCode::PERMISSION_DENIED;
    case AuthCode::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
  }
  return grpc::StatusCode::UNKNOWN;
}

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
           const v1::GenerateRequest* request, const char* method)
      : shared_(std::move(shared)), ctx_(ctx), request_(request), method_(method) {}

  // Returns an error status when the request is rejected before submission.
  std::optional<grpc::Status> prepare() {
    job_ = std::make_shared<Job>();
    job_->arrival = arrival_;
    job_->method = method_;
    // The token first: a caller without one learns nothing about its request.
    if (auto denied = authenticate()) return denied;
    job_->id = request_->request_id().empty()
                   ? "req-" + std::to_string(shared_->next_id.fetch_add(1))
                   : request_->request_id();
    const std::string error =
        request_to_job(*request_, shared_->limits, shared_->engine, shared_->random_seed(), *job_);
    if (!error.empty()) {
      JobOutcome o;
      o.status = Status::kInvalidArgument;
      o.message = error;
      record(o);
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, error);
    }
    if (auto denied = admit()) return denied;
    const auto deadline = ctx_->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      job_->deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          deadline - std::chrono::system_clock::now());
    }
    return std::nullopt;
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
                                         identity_.client.empty() ? "anonymous" : identity_.client);
    }
    RequestLogLine line;
    line.id = job_ ? job_->id : request_->request_id();
    line.method = method_;
    line.status = status;
    line.message = o.message;
    if (job_) {
      line.width = job_->params.width;
      line.height = job_->params.height;
      line.steps = job_->params.steps;
      line.images = job_->params.num_images;
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
        img->set_data(pipelines::encode_png(u8[i].contiguous()));
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
    out->set_model(shared_->engine.model_name());
    out->set_request_id(job_->id);
    out->set_batch_size(static_cast<uint32_t>(o.batch_requests));
  }

  std::shared_ptr<GenerationService::Shared> shared_;
  grpc::CallbackServerContext* ctx_;
  const v1::GenerateRequest* request_;
  const char* method_;
  Clock::time_point arrival_ = Clock::now();
  std::shared_ptr<Job> job_;
  Identity identity_;
  std::shared_ptr<AdmissionTicket> ticket_;
};

class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(std::shared_ptr<GenerationService::Shared> shared, grpc::CallbackServerContext* ctx,
            const v1::GenerateRequest* request, v1::GenerateResponse* response)
      : core_(std::move(shared), ctx, request, "Generate"), response_(response) {
    if (auto error = core_.prepare()) {
      Finish(*error);
      return;
    }
    core_.job_->on_done = [this](JobOutcome&& o) {
      grpc::Status status(to_grpc(o.status), o.message);
      if (o.status == Status::kOk) {
        try {
          core_.fill(o, response_);
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
  v1::GenerateResponse* response_;
};

class StreamCall final : public grpc::ServerWriteReactor<v1::GenerateEvent> {
 public:
  StreamCall(std::shared_ptr<GenerationService::Shared> shared, grpc::CallbackServerContext* ctx,
             const v1::GenerateRequest* request)
      : core_(std::move(shared), ctx, request, "GenerateStream") {
    if (auto error = core_.prepare()) {
      finished_ = true;
      Finish(*error);
      return;
    }
    const uint32_t preview_every = request->preview_every();
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
      progress(std::move(ev));
    };
    core_.job_->on_done = [this](JobOutcome&& o) {
      std::optional<v1::GenerateEvent> result;
      grpc::Status status(to_grpc(o.status), o.message);
      if (o.status == Status::kOk) {
        try {
          result.emplace();
          core_.fill(o, result->mutable_result());
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
  void progress(v1::GenerateEvent&& ev) {
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
  v1::GenerateEvent current_;
  v1::GenerateEvent final_;
  std::optional<v1::GenerateEvent> pending_;
};

}  // namespace

grpc::ServerUnaryReactor* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                      const v1::GenerateRequest* request,
                                                      v1::GenerateResponse* response) {
  return new UnaryCall(shared_, context, request, response);
}

grpc::ServerWriteReactor<v1::GenerateEvent>* GenerationService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new StreamCall(shared_, context, request);
}

}  // namespace ldcp::server
