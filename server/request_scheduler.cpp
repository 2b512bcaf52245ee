#include "server/request_scheduler.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>

#include <boost/asio/post.hpp>

#include "server/logging.h"
#include "server/metrics.h"

namespace ldcp::server {

const char* status_name(Status status) {
  switch (status) {
    case Status::kOk:
      return "OK";
    case Status::kCancelled:
      return "CANCELLED";
    case Status::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case Status::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case Status::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case Status::kInternal:
      return "INTERNAL";
    case Status::kUnavailable:
      return "UNAVAILABLE";
  }
  return "UNKNOWN";
}

namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

JobOutcome failure(Status status, std::string message) {
  JobOutcome o;
  o.status = status;
  o.message = std::move(message);
  return o;
}

int64_t images_of(const Job& job) { return std::max<int64_t>(1, job.params.num_images); }
// Classifier-free guidance doubles the U-Net rows; costs are kept apart (cost_model.h).
bool guided(const Job& job) { return job.params.guidance_scale > 1.0; }

// gRPC cancels a call (OnCancel) when its deadline passes, so a cancellation at (about) the
// deadline is reported as DEADLINE_EXCEEDED.
bool deadline_passed(const Job& job, Clock::time_point now, bool cancelled) {
  if (!job.deadline) return false;
  return *job.deadline <= now + (cancelled ? std::chrono::milliseconds(250) : Clock::duration{});
}

}  // namespace

struct RequestScheduler::Batch {
  std::vector<std::shared_ptr<Job>> jobs;
  pruning::PruningSchedule schedule;
  double level = 0;         // the schedule's highest level
  double memory_level = 0;  // its least pruned step's, which sets the peak (costs are per level)
  int64_t images = 0;
  int64_t reserved = 0;
  int64_t free_at_start = 0;
  bool guided = true;
  std::optional<LevelReason> reason;  // AUTO only
};

RequestScheduler::RequestScheduler(Engine& engine, MemoryBudget& budget, CostModel& costs,
                                   Metrics* metrics, SchedulerConfig config)
    : engine_(engine),
      budget_(budget),
      costs_(costs),
      metrics_(metrics),
      config_(std::move(config)),
      work_(boost::asio::make_work_guard(io_)),
      window_timer_(io_),
      sweep_timer_(io_),
      model_pool_(static_cast<size_t>(std::max(1, config_.workers))),
      completion_pool_(2),
      policy_(config_.auto_policy) {
  auto& levels = config_.levels;
  levels.push_back(0.0);
  std::sort(levels.begin(), levels.end());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  levels.erase(
      std::remove_if(levels.begin(), levels.end(), [](double l) { return !(l >= 0.0 && l < 1.0); }),
      levels.end());
  config_.max_batch = std::max<int64_t>(1, config_.max_batch);
  control_thread_ = std::thread([this] { io_.run(); });
  boost::asio::post(io_, [this] { arm_sweep(); });
}

RequestScheduler::~RequestScheduler() {
  abort_all("server shutting down");
  wait_idle(std::chrono::seconds(30));
  model_pool_.join();
  {
    // Wait for completion callbacks that are still running.
    std::unique_lock lock(mu_);
    idle_cv_.wait_for(lock, std::chrono::seconds(30), [&] { return pending_completions_ == 0; });
  }
  completion_pool_.join();
  work_.reset();
  boost::asio::post(io_, [this] {
    window_timer_.cancel();
    sweep_timer_.cancel();
    io_.stop();
  });
  control_thread_.join();
}

namespace {

// The level of a schedule's least pruned step: what its memory peak is costed at (a per-step
// schedule peaks at its lowest level, not its highest).
double peak_level(const pruning::PruningSchedule& schedule) {
  switch (schedule.mode) {
    case pruning::PruningSchedule::Mode::kOff:
      return 0.0;
    case pruning::PruningSchedule::Mode::kFixed:
      return schedule.below_timestep ? 0.0 : schedule.level;
    case pruning::PruningSchedule::Mode::kPerStep:
      return schedule.per_step.empty()
                 ? 0.0
                 : *std::min_element(schedule.per_step.begin(), schedule.per_step.end());
  }
  return 0.0;
}

}  // namespace

double RequestScheduler::allowed_max(const Job& job) const {
  if (job.pruning.mode != PruningRequest::Mode::kAuto) return job.pruning.schedule.max_level();
  const double cap = std::min(config_.max_level, job.pruning.max_level);
  double best = 0.0;
  for (double l : config_.levels) {
    if (l <= cap + 1e-12) best = l;
  }
  return best;
}

int64_t RequestScheduler::job_cost_floor(const Job& job) const {
  const double level = job.pruning.mode == PruningRequest::Mode::kAuto
                           ? allowed_max(job)
                           : peak_level(job.pruning.schedule);
  return costs_.estimate(images_of(job), job.params.width, job.params.height, level, guided(job));
}

bool RequestScheduler::compatible(const Job& head, const Job& other) const {
  const bool head_auto = head.pruning.mode == PruningRequest::Mode::kAuto;
  const bool other_auto = other.pruning.mode == PruningRequest::Mode::kAuto;
  if (head_auto != other_auto) return false;
  return engine_.batchable(head.params, other.params);
}

void RequestScheduler::finish(const std::shared_ptr<Job>& job, JobOutcome&& outcome) {
  if (job->on_done) job->on_done(std::move(outcome));
}

void RequestScheduler::submit(std::shared_ptr<Job> job) {
  std::optional<JobOutcome> reject;
  {
    std::lock_guard lock(mu_);
    const auto now = Clock::now();
    if (draining_ || aborting_) {
      reject =
          failure(Status::kUnavailable, "the server is shutting down; retry on another replica");
    } else if (job->deadline && *job->deadline <= now) {
      reject = failure(Status::kDeadlineExceeded, "the deadline passed before the request started");
    } else if (static_cast<int64_t>(queue_.size()) >= config_.max_queue) {
      reject = failure(Status::kUnavailable, "the queue is full (" + std::to_string(queue_.size()) +
                                                 " requests waiting); retry with backoff");
    } else {
      int64_t need = 0;
      try {
        need = job_cost_floor(*job);
      } catch (const std::exception& e) {
        need = std::numeric_limits<int64_t>::max();
      }
      const int64_t capacity = budget_.capacity_bytes();
      if (need > capacity) {
        reject = failure(Status::kResourceExhausted,
                         "the request needs about " + std::to_string(need) +
                             " bytes even at pruning level " +
                             level_label(job->pruning.mode == PruningRequest::Mode::kAuto
                                             ? allowed_max(*job)
                                             : peak_level(job->pruning.schedule)) +
                             " (the most it accepts), more than the " + std::to_string(capacity) +
                             " bytes the memory budget allows");
      } else {
        job->seq = next_seq_++;
        auto pos =
            std::upper_bound(queue_.begin(), queue_.end(), job, [](const auto& a, const auto& b) {
              if (a->priority != b->priority) return a->priority > b->priority;
              return a->seq < b->seq;
            });
        queue_.insert(pos, job);
        policy_.record_arrival(images_of(*job), now);  // every mode shares the model
        update_gauges_locked();
      }
    }
  }
  if (reject) {
    finish(job, std::move(*reject));
    return;
  }
  boost::asio::post(io_, [this] { dispatch(); });
}

void RequestScheduler::sweep_locked(
    std::vector<std::pair<std::shared_ptr<Job>, JobOutcome>>& finished) {
  const auto now = Clock::now();
  for (auto it = queue_.begin(); it != queue_.end();) {
    const auto& job = *it;
    if (aborting_) {
      finished.emplace_back(job, failure(Status::kUnavailable, abort_reason_));
    } else if (deadline_passed(*job, now, job->cancelled)) {
      finished.emplace_back(job,
                            failure(Status::kDeadlineExceeded, "the deadline passed while queued"));
    } else if (job->cancelled) {
      finished.emplace_back(job,
                            failure(Status::kCancelled, "cancelled by the client while queued"));
    } else {
      ++it;
      continue;
    }
    finished.back().second.queue_seconds = seconds_between(job->arrival, now);
    it = queue_.erase(it);
  }
}

double RequestScheduler::grid_level_below(double level, double floor) const {
  double below = floor;
  for (double l : config_.levels) {
    if (l < level - 1e-12 && l >= floor) below = std::max(below, l);
  }
  return below;
}

double RequestScheduler::hysteresis(double best, double allowed,
                                    const std::function<int64_t(double)>& cost, int64_t free) {
  if (best >= sticky_level_) {
    sticky_level_ = best;
    down_streak_ = 0;
    return best;
  }
  // The next grid level below the current one (but not below what fits best).
  const double below = grid_level_below(sticky_level_, best);
  const auto margin = static_cast<int64_t>(config_.hysteresis_fraction *
                                           static_cast<double>(budget_.budget_bytes()));
  if (cost(below) + margin <= free) {
    ++down_streak_;
  } else {
    down_streak_ = 0;
  }
  if (down_streak_ >= config_.hysteresis_decisions) {
    sticky_level_ = below;
    down_streak_ = 0;
  }
  return std::max(best, std::min(sticky_level_, allowed));
}

std::optional<RequestScheduler::Batch> RequestScheduler::plan(
    const std::vector<std::shared_ptr<Job>>& candidates, int64_t free) {
  const Job& head = *candidates.front();
  if (head.pruning.mode == PruningRequest::Mode::kAuto) return plan_auto(candidates, free);
  const int64_t w = head.params.width, h = head.params.height;
  for (size_t n = candidates.size(); n >= 1; --n) {
    Batch b;
    b.jobs.assign(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(n));
    for (const auto& j : b.jobs) b.images += images_of(*j);
    b.free_at_start = free;
    b.guided = guided(head);
    b.schedule = head.pruning.schedule;
    b.level = b.schedule.max_level();
    b.memory_level = peak_level(b.schedule);
    b.reserved = costs_.estimate(b.images, w, h, b.memory_level, b.guided);
    if (b.reserved <= free) return b;
  }
  return std::nullopt;
}

std::optional<RequestScheduler::Batch> RequestScheduler::plan_auto(
    const std::vector<std::shared_ptr<Job>>& candidates, int64_t free) {
  const Job& head = *candidates.front();
  const int64_t w = head.params.width, h = head.params.height;
  const bool is_guided = guided(head);
  // Every (batch prefix, level) that fits, within the levels all of its requests allow.
  std::vector<AutoLevelPolicy::Option> fitting;
  std::vector<double> allowed_of(candidates.size() + 1, 1.0), floor_of(candidates.size() + 1, 0);
  int64_t images = 0;
  for (size_t n = 1; n <= candidates.size(); ++n) {
    const Job& j = *candidates[n - 1];
    images += images_of(j);
    allowed_of[n] = std::min(allowed_of[n - 1], allowed_max(j));
    floor_of[n] = std::max(floor_of[n - 1], j.min_level);
    for (double l : config_.levels) {
      if (l > allowed_of[n] + 1e-12) break;
      if (l + 1e-12 < floor_of[n]) continue;
      if (costs_.estimate(images, w, h, l, is_guided) <= free) fitting.push_back({n, images, l});
    }
  }
  int64_t queued_images = 0;
  for (const auto& j : queue_) queued_images += images_of(*j);
  const auto choice =
      policy_.choose(fitting, allowed_of[1], head.params.steps, queued_images, Clock::now());
  if (!choice) return std::nullopt;
  const size_t n = choice->option.requests;
  Batch b;
  b.jobs.assign(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(n));
  b.images = choice->option.images;
  b.free_at_start = free;
  b.guided = is_guided;
  auto cost = [&](double l) { return costs_.estimate(b.images, w, h, l, is_guided); };
  if (floor_of[n] > 0) {
    b.level = choice->option.level;  // an out-of-memory retry: no hysteresis
    b.reason = LevelReason::kMemory;
  } else {
    if (choice->option.level >= sticky_level_) sticky_reason_ = choice->reason;
    b.level = hysteresis(choice->option.level, allowed_of[n], cost, free);
    // Held above the policy's choice by the hysteresis: what set the held level.
    b.reason = b.level > choice->option.level + 1e-12 ? sticky_reason_ : choice->reason;
  }
  b.schedule =
      b.level > 0 ? pruning::PruningSchedule::fixed(b.level) : pruning::PruningSchedule::off();
  b.memory_level = b.level;
  b.reserved = cost(b.level);
  if (metrics_) metrics_->auto_level_decision(level_reason_name(*b.reason));
  return b;
}

void RequestScheduler::dispatch() {
  std::vector<std::pair<std::shared_ptr<Job>, JobOutcome>> finished;
  {
    std::lock_guard lock(mu_);
    sweep_locked(finished);
    const auto now = Clock::now();
    while (running_batches_ < std::max(1, config_.workers) && !queue_.empty() && !aborting_) {
      const auto head = queue_.front();
      std::vector<std::shared_ptr<Job>> candidates{head};
      int64_t images = images_of(*head);
      for (size_t i = 1; i < queue_.size() && images < config_.max_batch; ++i) {
        const auto& j = queue_[i];
        if (images + images_of(*j) > config_.max_batch || !compatible(*head, *j)) continue;
        candidates.push_back(j);
        images += images_of(*j);
      }
      const auto window_end = head->arrival + config_.batch_window;
      if (images < config_.max_batch && now < window_end && !draining_) {
        window_timer_.expires_at(window_end);
        window_timer_.async_wait([this](const boost::system::error_code& ec) {
          if (!ec) dispatch();
        });
        break;
      }
      const int64_t free = budget_.free_bytes(reserved_);
      auto batch = plan(candidates, free);
      if (!batch) {
        if (running_batches_ == 0) {
          // Nothing else holds memory, so it will never fit: do not block the queue.
          finished.emplace_back(
              head, failure(Status::kResourceExhausted,
                            "no pruning level within the request's max_level fits the free "
                            "memory (" +
                                std::to_string(free) + " bytes)"));
          queue_.erase(queue_.begin());
          continue;
        }
        break;  // wait for memory
      }
      for (const auto& j : batch->jobs) {
        queue_.erase(std::find(queue_.begin(), queue_.end(), j));
      }
      reserved_ += batch->reserved;
      ++running_batches_;
      running_requests_ += static_cast<int64_t>(batch->jobs.size());
      auto shared = std::make_shared<Batch>(std::move(*batch));
      boost::asio::post(model_pool_, [this, shared] { execute(shared); });
    }
    update_gauges_locked();
    if (!finished.empty()) pending_completions_ += static_cast<int64_t>(finished.size());
  }
  for (auto& [job, outcome] : finished) {
    boost::asio::post(completion_pool_, [this, job, o = std::move(outcome)]() mutable {
      finish(job, std::move(o));
      std::lock_guard lock(mu_);
      --pending_completions_;
      idle_cv_.notify_all();
    });
  }
}

void RequestScheduler::execute(std::shared_ptr<Batch> batch) {
  const auto start = Clock::now();
  const size_t n = batch->jobs.size();
  std::vector<JobOutcome> outcomes(n);
  std::vector<bool> active(n, true);
  std::vector<pipelines::GenerationParams> params;
  std::vector<size_t> index;  // engine request -> batch position
  for (size_t i = 0; i < n; ++i) {
    auto& job = *batch->jobs[i];
    job.started = start;
    outcomes[i].queue_seconds = seconds_between(job.arrival, start);
    outcomes[i].level = batch->level;
    outcomes[i].retried_after_oom = job.retried;
    if (batch->reason) outcomes[i].level_reason = level_reason_name(*batch->reason);
    if (metrics_) metrics_->queue_wait(outcomes[i].queue_seconds);
    // Never start a request that is already cancelled or past its deadline.
    if (aborting_) {
      outcomes[i] = failure(Status::kUnavailable, abort_reason_);
    } else if (deadline_passed(job, start, job.cancelled)) {
      outcomes[i] = failure(Status::kDeadlineExceeded, "the deadline passed before it started");
    } else if (job.cancelled) {
      outcomes[i] = failure(Status::kCancelled, "cancelled by the client before it started");
    } else {
      auto p = job.params;
      p.pruning = batch->schedule;
      params.push_back(std::move(p));
      index.push_back(i);
      continue;
    }
    active[i] = false;
  }

  std::vector<Job*> retry;
  if (!params.empty()) {
    if (metrics_) metrics_->batch_started(static_cast<int64_t>(params.size()), batch->images);
    int64_t last_step = -1;
    auto last_mark = Clock::now();
    auto callback = [&](size_t r, const pipelines::StepInfo& info) -> bool {
      const size_t i = index[r];
      Job& job = *batch->jobs[i];
      if (aborting_) {
        outcomes[i] = failure(Status::kUnavailable, abort_reason_);
        return false;
      }
      const auto now = Clock::now();
      const bool cancelled = job.cancelled;
      if (deadline_passed(job, now, cancelled)) {
        outcomes[i] = failure(Status::kDeadlineExceeded,
                              "the deadline passed at step " + std::to_string(info.step + 1) +
                                  " of " + std::to_string(info.num_steps));
        return false;
      }
      if (cancelled) {
        outcomes[i] = failure(Status::kCancelled,
                              "cancelled by the client at step " + std::to_string(info.step + 1));
        return false;
      }
      if (info.step > last_step) {
        if (metrics_) metrics_->denoising_step(seconds_between(last_mark, now));
        last_mark = now;
        last_step = info.step;
      }
      if (job.on_step) job.on_step(info, batch->schedule.level_at(info.step, info.timestep));
      return true;
    };
    try {
      const auto run_start = Clock::now();
      auto results = engine_.run(params, callback);
      const double run_seconds = seconds_between(run_start, Clock::now());
      bool all_complete = true;
      for (size_t r = 0; r < results.size() && r < index.size(); ++r) {
        const size_t i = index[r];
        if (results[r].stopped) {
          all_complete = false;
          if (outcomes[i].status == Status::kOk) {
            outcomes[i] = failure(Status::kCancelled, "stopped");
          }
          continue;
        }
        outcomes[i].status = Status::kOk;
        outcomes[i].batch_requests = static_cast<int64_t>(params.size());
        double level = 0;
        for (double l : results[r].step_levels) level = std::max(level, l);
        outcomes[i].level = level;
        outcomes[i].result = std::move(results[r]);
      }
      if (all_complete && !results.empty()) {
        const auto& first = outcomes[index[0]].result;
        // On CUDA the reserved peak can exceed the allocated one (fragmentation): the cost is
        // what the batch took from the budget, so it includes that excess.
        const int64_t peak = budget_.batch_peak_bytes(first.peak_memory_bytes);
        costs_.observe(batch->images, params[0].width, params[0].height, batch->memory_level,
                       first.peak_memory_above_weights_bytes + (peak - first.peak_memory_bytes),
                       batch->guided);
        if (peak > budget_.budget_bytes()) {
          if (metrics_) metrics_->budget_overrun();
          log_warn(
              strf("budget overrun: a batch of %lld image(s) at level %.2f peaked at %lld "
                   "bytes, above the %lld-byte budget (estimated %lld above the baseline); "
                   "its cost is raised",
                   static_cast<long long>(batch->images), batch->level,
                   static_cast<long long>(peak), static_cast<long long>(budget_.budget_bytes()),
                   static_cast<long long>(batch->reserved)));
        }
        // Throughput at a uniform level only (a per-step schedule has no single level).
        if (batch->memory_level == batch->level) {
          const auto& t = first.timings;
          const double fixed = t.total_s > 0 ? std::max(0.0, t.total_s - t.denoising_s) : 0.0;
          policy_.record_batch(batch->level, batch->images, params[0].steps, run_seconds, fixed);
        }
      }
    } catch (const OutOfMemory& e) {
      costs_.observe_oom(batch->images, params[0].width, params[0].height, batch->memory_level,
                         batch->free_at_start, batch->guided);
      log_warn(strf("out of memory in a batch of %zu request(s) at level %.2f: %s", params.size(),
                    batch->level, e.what()));
      for (size_t i : index) {
        Job& job = *batch->jobs[i];
        double next = -1;
        if (job.pruning.mode == PruningRequest::Mode::kAuto && !job.retried) {
          for (double l : config_.levels) {
            if (l > batch->level + 1e-12 && l <= allowed_max(job) + 1e-12) {
              next = l;
              break;
            }
          }
        }
        if (next >= 0) {
          job.retried = true;
          job.min_level = next;
          retry.push_back(&job);
        } else {
          outcomes[i] = failure(Status::kResourceExhausted,
                                "out of memory at pruning level " + level_label(batch->level) +
                                    (job.retried ? " after a retry" : "") + ": " + e.what());
        }
      }
    } catch (const std::invalid_argument& e) {
      for (size_t i : index) outcomes[i] = failure(Status::kInvalidArgument, e.what());
    } catch (const std::exception& e) {
      log_error(std::string("batch failed: ") + e.what());
      for (size_t i : index) outcomes[i] = failure(Status::kInternal, e.what());
    }
  }

  if (metrics_) {
    for (size_t i = 0; i < n; ++i) {
      if (outcomes[i].status != Status::kOk) continue;
      const auto& r = outcomes[i].result;
      metrics_->request_served(r.peak_memory_bytes, r.pruned_flops_fraction, outcomes[i].level,
                               r.images.defined() ? r.images.size(0) : 0);
    }
  }

  std::vector<std::pair<std::shared_ptr<Job>, JobOutcome>> done;
  std::vector<std::shared_ptr<Job>> requeue;
  for (size_t i = 0; i < n; ++i) {
    auto& job = batch->jobs[i];
    if (std::find(retry.begin(), retry.end(), job.get()) != retry.end()) {
      requeue.push_back(job);
    } else {
      done.emplace_back(job, std::move(outcomes[i]));
    }
  }
  {
    std::lock_guard lock(mu_);
    reserved_ -= batch->reserved;
    --running_batches_;
    running_requests_ -= static_cast<int64_t>(n);
    for (auto& job : requeue) {
      if (metrics_) metrics_->oom_retry();
      auto pos =
          std::upper_bound(queue_.begin(), queue_.end(), job, [](const auto& a, const auto& b) {
            if (a->priority != b->priority) return a->priority > b->priority;
            return a->seq < b->seq;
          });
      queue_.insert(pos, job);
    }
    pending_completions_ += static_cast<int64_t>(done.size());
    update_gauges_locked();
  }
  for (auto& [job, outcome] : done) {
    boost::asio::post(completion_pool_, [this, job, o = std::move(outcome)]() mutable {
      finish(job, std::move(o));
      std::lock_guard lock(mu_);
      --pending_completions_;
      idle_cv_.notify_all();
    });
  }
  boost::asio::post(io_, [this] { dispatch(); });
}

void RequestScheduler::update_gauges_locked() {
  if (metrics_) {
    metrics_->set_queue_depth(static_cast<int64_t>(queue_.size()));
    metrics_->set_in_flight(running_requests_);
    metrics_->set_auto_level(sticky_level_);
  }
  if (queue_.empty() && running_batches_ == 0) idle_cv_.notify_all();
}

void RequestScheduler::decay_when_idle_locked() {
  if (!queue_.empty() || running_batches_ > 0) {
    idle_since_.reset();
    return;
  }
  const auto now = Clock::now();
  if (!idle_since_) idle_since_ = now;
  if (config_.idle_decay.count() <= 0 || now - *idle_since_ < config_.idle_decay) return;
  idle_since_ = now;
  const double below = grid_level_below(sticky_level_, 0.0);
  if (below < sticky_level_) {
    sticky_level_ = below;
    down_streak_ = 0;
    update_gauges_locked();
  }
}

void RequestScheduler::arm_sweep() {
  if (metrics_) metrics_->set_memory(budget_.in_use_bytes(), budget_.budget_bytes());
  sweep_timer_.expires_after(config_.sweep_interval);
  sweep_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;
    bool any;
    {
      std::lock_guard lock(mu_);
      any = !queue_.empty();
      decay_when_idle_locked();
    }
    if (any) dispatch();
    arm_sweep();
  });
}

void RequestScheduler::drain() {
  std::lock_guard lock(mu_);
  draining_ = true;
}

bool RequestScheduler::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return idle_cv_.wait_for(lock, timeout, [&] {
    return queue_.empty() && running_batches_ == 0 && pending_completions_ == 0;
  });
}

void RequestScheduler::abort_all(const std::string& reason) {
  {
    std::lock_guard lock(mu_);
    draining_ = true;
    if (aborting_) return;
    abort_reason_ = reason;
    aborting_ = true;
  }
  boost::asio::post(io_, [this] { dispatch(); });
}

int64_t RequestScheduler::queue_depth() const {
  std::lock_guard lock(mu_);
  return static_cast<int64_t>(queue_.size());
}

int64_t RequestScheduler::running_requests() const {
  std::lock_guard lock(mu_);
  return running_requests_;
}

double RequestScheduler::auto_level() const {
  std::lock_guard lock(mu_);
  return sticky_level_;
}

}  // namespace ldcp::server
