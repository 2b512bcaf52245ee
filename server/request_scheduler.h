#pragma once
// The core scheduler, independent of gRPC (Triton style: the front end validates, submits a Job
// and replies from its completion callback).
//
// Policy:
// - A bounded queue ordered by priority (higher first), then arrival. Full queue or draining:
//   UNAVAILABLE. A request that could not fit even alone on an idle server at the most pruning it
//   accepts: RESOURCE_EXHAUSTED at once.
// - The head of the queue runs when its batch fits the free memory budget (measured usage, plus
//   the reserved costs of batches not yet at their peak); otherwise it waits (no overtaking).
// - Several models (model_registry.h): each job names one (Job::model); each model has its
//   engine, its calibrated cost model and its AUTO throughput table; the budget is one, its
//   baseline every loaded model's weights. A batch never mixes models.
// - Batching: waiting requests compatible with the head (the same model, Engine::batchable,
//   same pruning mode) join its U-Net batch up to max_batch images; a batch that is not full waits
//   up to batch_window after the head's arrival for more.
// - AUTO (auto_level_policy.h): among the (batch, level) pairs that fit the free memory, the
//   lowest level whose measured throughput covers the recent arrival rate while the queue
//   drains; under a burst the fastest pair (the largest batch at the highest allowed level);
//   while saturated (an engine busy without a pause while requests wait, as under a closed
//   loop), one measurably faster level per decision.
//   Hysteresis: the level rises at once but falls only one grid step at a time, after
//   hysteresis_decisions consecutive decisions in which the lower level fits with a margin of
//   hysteresis_fraction of the budget.
// - The budget is a guarantee: costs are calibrated at every batch size up to max_batch, raised
//   at once by any batch that measured more, and a batch whose measured peak exceeded the budget
//   is counted (ldcp_budget_overruns_total).
// - OFF / FIXED: run at their schedule when it fits, otherwise wait.
// - Out of memory while running: an AUTO request is retried once at the next higher level
//   (alone); otherwise it fails with RESOURCE_EXHAUSTED. Other requests are unaffected.
// - Cancellation and deadlines are checked while queued, before starting and at every denoising
//   step; a request whose deadline has passed is never started.
//
// Threads: scheduling decisions run on a control thread (Boost.Asio io_context, timers for the
// batching window and queue sweeps); model work on its own executor (a thread pool of `workers`
// threads, one by default); completion callbacks on a small separate pool so that encoding
// responses never holds the model. submit() never blocks on model work.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include "model/pipelines/pipeline_stable_diffusion.h"
#include "server/auto_level_policy.h"
#include "server/cost_model.h"
#include "server/engine.h"
#include "server/memory_budget.h"

namespace ldcp::server {

class Metrics;
using Clock = std::chrono::steady_clock;

// gRPC-independent outcome codes (the service maps them to grpc::StatusCode).
enum class Status {
  kOk,
  kCancelled,
  kInvalidArgument,
  kDeadlineExceeded,
  kResourceExhausted,
  kInternal,
  kUnavailable,
};
// The gRPC code name: "OK", "CANCELLED", ...
const char* status_name(Status status);

struct PruningRequest {
  enum class Mode { kAuto, kOff, kFixed };
  Mode mode = Mode::kAuto;
  // kOff / kFixed: the schedule to run (kOff: PruningSchedule::off()).
  pruning::PruningSchedule schedule;
  // kAuto: the most pruning the caller accepts (the server's max_level caps it further).
  double max_level = 1.0;
};

struct JobOutcome {
  Status status = Status::kOk;
  std::string message;
  pipelines::GenerationResult result;  // kOk only
  double queue_seconds = 0;
  double level = 0;  // the highest level the request ran at
  int64_t batch_requests = 0;
  bool retried_after_oom = false;
  const char* level_reason = "";  // AUTO: what set the level (level_reason_name); else ""
};

struct Job {
  std::string id;
  std::string method;
  size_t model = 0;  // index into the scheduler's models (0: the first, the default)
  pipelines::GenerationParams params;  // validated; params.pruning is set by the scheduler
  PruningRequest pruning;
  int priority = 0;
  Clock::time_point arrival = Clock::now();
  std::optional<Clock::time_point> deadline;
  std::atomic<bool> cancelled{false};  // set by the front end when the client cancels

  // Model thread, after each denoising step of this request; `level` is that step's level.
  std::function<void(const pipelines::StepInfo& step, double level)> on_step;
  // Exactly once, on a completion thread (or inline in submit() for an immediate rejection).
  std::function<void(JobOutcome&& outcome)> on_done;

  // Scheduler state.
  uint64_t seq = 0;
  bool retried = false;
  double min_level = 0;  // after an OOM retry
  Clock::time_point started{};
};

struct SchedulerConfig {
  int64_t max_queue = 64;
  int64_t max_batch = 4;  // images per U-Net batch
  std::chrono::milliseconds batch_window{20};
  std::vector<double> levels = {0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7};  // AUTO's grid
  double max_level = 0.7;  // the most pruning the server applies to AUTO requests
  double hysteresis_fraction = 0.05;
  int hysteresis_decisions = 3;
  int workers = 1;  // batches running at once (model threads)
  std::chrono::milliseconds sweep_interval{50};
  // After this long with nothing queued or running, AUTO's held level steps one grid level down
  // (and again after each further interval): hysteresis damps flapping under load, but an idle
  // server should not keep reporting, and holding, the level of its last burst. 0: never.
  std::chrono::milliseconds idle_decay{10000};
  AutoLevelConfig auto_policy;
};

// One model the scheduler runs: its engine and its cost model (both outlive the scheduler).
struct ScheduledModel {
  Engine* engine = nullptr;
  CostModel* costs = nullptr;
};

class RequestScheduler {
 public:
  RequestScheduler(Engine& engine, MemoryBudget& budget, CostModel& costs, Metrics* metrics,
                   SchedulerConfig config);
  // Several models sharing the device and its budget (at least one).
  RequestScheduler(std::vector<ScheduledModel> models, MemoryBudget& budget, Metrics* metrics,
                   SchedulerConfig config);
  ~RequestScheduler();  // cancels what is left (UNAVAILABLE) and joins the threads
  RequestScheduler(const RequestScheduler&) = delete;
  RequestScheduler& operator=(const RequestScheduler&) = delete;

  void submit(std::shared_ptr<Job> job);

  // Stops accepting (new submissions get UNAVAILABLE); queued and running requests go on.
  void drain();
  // Waits until nothing is queued or running; false on timeout.
  bool wait_idle(std::chrono::milliseconds timeout);
  // Stops everything left: queued requests and running ones (at their next step) finish with
  // UNAVAILABLE.
  void abort_all(const std::string& reason);

  int64_t queue_depth() const;
  int64_t running_requests() const;
  double auto_level() const;  // AUTO's held level (the highest over the models)
  const SchedulerConfig& config() const { return config_; }
  // AUTO's throughput table and arrival rate of a model (main.cpp seeds it with the model's
  // calibration runs).
  AutoLevelPolicy& auto_policy(size_t model = 0) { return auto_.at(model)->policy; }
  size_t model_count() const { return models_.size(); }

 private:
  struct Batch;
  void dispatch();                             // control thread
  void execute(std::shared_ptr<Batch> batch);  // model thread
  void batch_finished(std::shared_ptr<Batch> batch);
  void decay_when_idle_locked();  // control thread (sweep)
  // The highest level of AUTO's grid below `level` and not below `floor` (`floor` if none).
  double grid_level_below(double level, double floor) const;
  void finish(const std::shared_ptr<Job>& job, JobOutcome&& outcome);
  std::optional<Batch> plan(const std::vector<std::shared_ptr<Job>>& candidates, int64_t free);
  std::optional<Batch> plan_auto(const std::vector<std::shared_ptr<Job>>& candidates, int64_t free);
  bool compatible(const Job& head, const Job& other) const;
  double allowed_max(const Job& job) const;      // the highest grid level the job may get
  int64_t job_cost_floor(const Job& job) const;  // cost alone at its most pruned level
  struct AutoState;
  double hysteresis(AutoState& state, double best, double allowed,
                    const std::function<int64_t(double)>& cost, int64_t free);
  void sweep_locked(std::vector<std::pair<std::shared_ptr<Job>, JobOutcome>>& finished);
  void update_gauges_locked();
  void arm_sweep();

  Engine& engine_of(const Job& job) const { return *models_[job.model].engine; }
  CostModel& costs_of(const Job& job) const { return *models_[job.model].costs; }

  std::vector<ScheduledModel> models_;
  MemoryBudget& budget_;
  Metrics* metrics_;
  SchedulerConfig config_;

  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  boost::asio::steady_timer window_timer_;
  boost::asio::steady_timer sweep_timer_;
  boost::asio::thread_pool model_pool_;
  boost::asio::thread_pool completion_pool_;
  std::thread control_thread_;

  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  std::vector<std::shared_ptr<Job>> queue_;  // sorted: priority desc, seq asc
  uint64_t next_seq_ = 0;
  int running_batches_ = 0;
  int64_t running_requests_ = 0;
  int64_t reserved_ = 0;
  bool draining_ = false;
  std::atomic<bool> aborting_{false};
  std::string abort_reason_;
  // AUTO per model: its throughput table and arrival rate, and the hysteresis' held level (a
  // model's memory pressure must not hold another model's level up).
  struct AutoState {
    explicit AutoState(const AutoLevelConfig& config) : policy(config) {}
    AutoLevelPolicy policy;
    double sticky_level = 0;
    LevelReason sticky_reason = LevelReason::kNone;
    int down_streak = 0;
    int running = 0;  // this model's batches running now
  };
  std::vector<std::unique_ptr<AutoState>> auto_;  // per model
  std::atomic<uint64_t> run_epoch_{0};            // engine runs started
  std::atomic<int> engine_runs_{0};               // batches inside engine_.run() now
  std::optional<std::chrono::steady_clock::time_point> idle_since_;  // control thread, under mu_
  int64_t pending_completions_ = 0;
};

}  // namespace ldcp::server
