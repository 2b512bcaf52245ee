#include "server/request_scheduler.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string_view>

#include <boost/asio/post.hpp>

#include "server/logging.h"
#include "server/metrics.h"
#include "server/scheduler_batch.h"

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

// The first line of an exception's message, bounded (c10::Error appends a backtrace).
std::string first_line(const char* what, size_t max_chars = 300) {
  std::string_view text(what ? what : "");
  text = text.substr(0, text.find_first_of("\r\n"));
  if (text.size() > max_chars) return std::string(text.substr(0, max_chars)) + "...";
  return std::string(text);
}

// gRPC cancels a call (OnCancel) when its deadline passes, so a cancellation at (about) the
// deadline is reported as DEADLINE_EXCEEDED.
bool deadline_passed(const Job& job, Clock::time_point now, bool cancelled) {
  if (!job.deadline) return false;
  return *job.deadline <= now + (cancelled ? std::chrono::milliseconds(250) : Clock::duration{});
}

}  // namespace

RequestScheduler::RequestScheduler(Engine& engine, MemoryBudget& budget, CostModel& costs,
                                   Metrics* metrics, SchedulerConfig config)
    : RequestScheduler(std::vector<ScheduledModel>{{&engine, &costs}}, budget, metrics,
                       std::move(config)) {}

RequestScheduler::RequestScheduler(std::vector<ScheduledModel> models, MemoryBudget& budget,
                                   Metrics* metrics, SchedulerConfig config)
    : models_(std::move(models)),
      budget_(budget),
      metrics_(metrics),
      config_(std::move(config)),
      work_(boost::asio::make_work_guard(io_)),
      window_timer_(io_),
      sweep_timer_(io_),
      model_pool_(static_cast<size_t>(std::max(1, config_.workers))),
      completion_pool_(2) {
  if (models_.empty()) throw std::invalid_argument("the scheduler needs at least one model");
  for (size_t i = 0; i < models_.size(); ++i) {
    auto_.push_back(std::make_unique<AutoState>(config_.auto_policy));
  }
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

void RequestScheduler::finish(const std::shared_ptr<Job>& job, JobOutcome&& outcome) {
  // A completion that throws (a metrics or logging failure) must not end the pool's thread,
  // which would std::terminate the server and lose every other request.
  try {
    if (job->on_done) job->on_done(std::move(outcome));
  } catch (const std::exception& e) {
    log_error("a request's completion failed: " + first_line(e.what()));
  } catch (...) {
    log_error("a request's completion failed");
  }
}

void RequestScheduler::submit(std::shared_ptr<Job> job) {
  std::optional<JobOutcome> reject;
  {
    std::lock_guard lock(mu_);
    const auto now = Clock::now();
    if (job->model >= models_.size()) {
      reject = failure(Status::kInvalidArgument, "model: no such model");
    } else if (draining_ || aborting_) {
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
        reject = failure(
            Status::kResourceExhausted,
            "the request needs about " + std::to_string(need) + " bytes even at pruning level " +
                level_label(job->pruning.mode == PruningRequest::Mode::kAuto ? allowed_max(*job)
                                                                             : peak_level(*job)) +
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
        // Every mode shares the model; each model has its own arrival rate.
        auto_[job->model]->policy.record_arrival(images_of(*job), now);
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
      ++auto_[head->model]->running;
      running_requests_ += static_cast<int64_t>(batch->jobs.size());
      batch->started = Clock::now();
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
    // With --workers > 1 the measured peak is the process's: a batch that overlapped another
    // measured both (and each start resets the peak), so only a batch that ran alone
    // teaches the cost model and the throughput table.
    const uint64_t epoch = ++run_epoch_;
    const bool started_alone = engine_runs_.fetch_add(1) == 0;
    struct RunningGuard {
      std::atomic<int>& n;
      ~RunningGuard() { n.fetch_sub(1); }
    } running_guard{engine_runs_};
    try {
      const auto run_start = Clock::now();
      auto results = engine_of(*batch->jobs.front()).run(params, callback);
      const double run_seconds = seconds_between(run_start, Clock::now());
      const bool ran_alone = started_alone && run_epoch_.load() == epoch;
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
      if (all_complete && !results.empty() && ran_alone) {
        const auto& first = outcomes[index[0]].result;
        // On CUDA the reserved peak can exceed the allocated one (fragmentation): the cost is
        // what the batch took from the budget, so it includes that excess.
        const int64_t peak = budget_.batch_peak_bytes(first.peak_memory_bytes);
        costs_of(*batch->jobs.front())
            .observe(batch->images, params[0].width, params[0].height, batch->memory_level,
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
          auto_[batch->jobs.front()->model]->policy.record_batch(
              batch->level, batch->images, pipelines::steps_run(params[0]), run_seconds, fixed,
              params[0].width * params[0].height);
        }
      }
    } catch (const OutOfMemory& e) {
      costs_of(*batch->jobs.front())
          .observe_oom(batch->images, params[0].width, params[0].height, batch->memory_level,
                       batch->free_at_start, batch->guided);
      log_warn(strf("out of memory in a batch of %zu request(s) at level %.2f: %s", params.size(),
                    batch->level, first_line(e.what()).c_str()));
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
          outcomes[i] =
              failure(Status::kResourceExhausted,
                      "out of memory at pruning level " + level_label(batch->level) +
                          (job.retried ? " after a retry" : "") + ": " + first_line(e.what()));
        }
      }
    } catch (const std::invalid_argument& e) {
      for (size_t i : index) outcomes[i] = failure(Status::kInvalidArgument, first_line(e.what()));
    } catch (const std::exception& e) {
      // libtorch's messages carry a native backtrace with paths and addresses: the log gets the
      // first line, the client a plain statement.
      log_error("batch failed: " + first_line(e.what()));
      for (size_t i : index) {
        outcomes[i] = failure(Status::kInternal,
                              "the model failed on this batch; the server log has the reason");
      }
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
    AutoState& st = *auto_[batch->jobs.front()->model];
    --st.running;
    st.policy.record_busy(batch->started, Clock::now(), batch->level);
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
    double level = 0;
    for (const auto& a : auto_) level = std::max(level, a->sticky_level);
    metrics_->set_auto_level(level);
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
  bool lowered = false;
  for (auto& a : auto_) {
    const double below = grid_level_below(a->sticky_level, 0.0);
    if (below < a->sticky_level) {
      a->sticky_level = below;
      a->down_streak = 0;
      lowered = true;
    }
  }
  if (lowered) update_gauges_locked();
}

void RequestScheduler::arm_sweep() {
  // Reading the device's memory can throw (a CUDA error): the sweep logs it and keeps going.
  try {
    if (metrics_) metrics_->set_memory(budget_.in_use_bytes(), budget_.budget_bytes());
  } catch (const std::exception& e) {
    log_error("reading the device memory failed: " + first_line(e.what()));
  }
  sweep_timer_.expires_after(config_.sweep_interval);
  sweep_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;
    try {
      bool any;
      {
        std::lock_guard lock(mu_);
        any = !queue_.empty();
        decay_when_idle_locked();
      }
      if (any) dispatch();
    } catch (const std::exception& e) {
      log_error("the scheduler's sweep failed: " + first_line(e.what()));
    }
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
  double level = 0;
  for (const auto& a : auto_) level = std::max(level, a->sticky_level);
  return level;
}

}  // namespace ldcp::server
