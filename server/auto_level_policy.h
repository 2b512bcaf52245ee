#pragma once
// AUTO's level choice: the least pruning that keeps up. Among the (batch, level) options that fit
// the free memory, the lowest level whose measured throughput covers the recent arrival rate plus
// draining the queue in time (AutoLevelConfig); when no level covers it (a burst), the option with
// the highest throughput, which under memory pressure is the largest batch at the highest allowed
// level. Throughput is measured (images per second per denoising step count, from calibration
// runs and served batches), never assumed. Hysteresis stays in the scheduler.

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

namespace ldcp::server {

// What set an AUTO batch's level (the label values of ldcp_auto_level_decisions_total).
enum class LevelReason {
  kNone,        // level 0: nothing required pruning
  kMemory,      // the lowest level that fits the free memory
  kThroughput,  // a milder level fits but would not keep up with the arrivals
  kRequestCap,  // no level keeps up; the most pruning allowed (request or server max_level)
};
const char* level_reason_name(LevelReason reason);

struct AutoLevelConfig {
  // Arrivals are counted over rate_window, or over the last rate_min_arrivals arrivals where
  // those span longer (at most rate_max_window): at a few requests a second 10 s hold only a
  // handful, and a rate from so few swings by half, above a level's throughput on noise alone
  // (measured: AUTO averaged level 0.65 at 0.9x OFF's capacity with the 10 s window alone).
  std::chrono::milliseconds rate_window{10000};
  int64_t rate_min_arrivals = 16;
  std::chrono::milliseconds rate_max_window{300000};
  // The queue should empty within drain_seconds, or within drain_batches of the option's own
  // batches where those take longer: on a model whose batch outlasts drain_seconds (an SD1.5
  // image on a CPU takes ~20 s), one queued request would otherwise always force pruning, and
  // near capacity (little slack) a short horizon prunes for any queue at all.
  double drain_seconds = 10;
  double drain_batches = 16;
  // Saturation: a closed loop (clients that resubmit as soon as they are answered) makes the
  // arrival rate equal to whatever the chosen level serves, so by the rate every level keeps up
  // (measured: AUTO stayed at 0.40, 1.12x OFF, under 4 such clients). Its signature is an engine
  // that never pauses while requests wait: busy without a break longer than saturation_gap (or
  // saturation_gap_fraction of a batch, if less: a client's resubmission takes milliseconds, an
  // open loop's pause is a fraction of a batch) for
  // saturation_seconds or saturation_batches of its own batches (whichever is longer), with
  // requests contending: the oldest waited half a batch or more, or several are queued (clients
  // that one batch serves together wait for nothing but each other; a lone sequential client
  // waits for nothing and is not pruned).
  // Then AUTO steps up to the next level that is measurably faster, one per decision, for as
  // long as the busy period lasts. An open loop near capacity also has long busy periods
  // (Poisson arrivals at 0.9x a level's throughput: a mean of 10 batches), hence the several
  // batches and the step rather than a jump to the fastest option; but not many more, as an
  // SD1.5 image on a CPU takes 10-40 s (4 batches: 40-160 s before the first step).
  std::chrono::milliseconds saturation_gap{500};
  double saturation_gap_fraction = 0.1;
  double saturation_seconds = 20;
  double saturation_batches = 4;
};

class AutoLevelPolicy {
 public:
  using Clock = std::chrono::steady_clock;
  explicit AutoLevelPolicy(AutoLevelConfig config = {}) : config_(config) {}

  void record_arrival(int64_t images, Clock::time_point now);
  // A batch that ran to completion (calibration or served): its wall time, of which
  // `fixed_seconds` did not scale with the steps (text encoding, decoding).
  // `pixels`: width x height of its images (timings are kept per size: a large image's batch
  // says little about a small one's).
  void record_batch(double level, int64_t images, int64_t steps, double seconds,
                    double fixed_seconds = 0, int64_t pixels = 0);
  // The engine ran a batch at `level` from `start` to `end` (every mode's batches: they occupy
  // the engine all the same).
  void record_busy(Clock::time_point start, Clock::time_point end, double level);
  // Whether the engine is saturated now (AutoLevelConfig::saturation_*): `running`: a batch of
  // this model is running; `head_wait_seconds`: how long the oldest queued request has waited;
  // `waiting_requests`: how many of this model's requests are queued.
  bool saturated(Clock::time_point now, bool running, double head_wait_seconds,
                 int64_t waiting_requests = 1) const;

  // Images per second arriving: those after the oldest arrival in the rate window over the time
  // since it (0 for a lone request).
  double arrival_rate(Clock::time_point now) const;
  // Measured images per second of `images` images at `level` with `steps` steps; none when no
  // batch at or below that level was measured. An unmeasured level between two measured ones
  // interpolates their times linearly; above the highest measured one, that one's (slower: the
  // estimate errs towards more pruning). An unmeasured batch size uses the nearest below.
  // At another size than measured: the nearest measured size's, scaled by the pixel count.
  std::optional<double> throughput(double level, int64_t images, int64_t steps,
                                   int64_t pixels = 0) const;

  struct Option {
    size_t requests = 0;  // the batch: the first `requests` candidates
    int64_t images = 0;
    double level = 0;
  };
  struct Choice {
    Option option;
    LevelReason reason = LevelReason::kNone;
    double required_rate = 0;  // images/s it had to cover
  };
  // `fitting`: every option that fits the free memory, within the levels the requests allow;
  // `top_allowed`: the most pruning allowed. `engine_idle`: no other batch is running. An option
  // that leaves nothing queued on an idle engine keeps up whatever the rate estimate says: no
  // request waits, and a real overload shows as a queue at the next decision (a closed loop's
  // measured rate equals its throughput, so the estimate alone would prune on noise). The
  // scheduler passes it only while AUTO is unpruned: once under pressure, the rate decides and
  // the hysteresis brings the level down.
  // `saturated` (saturated()): the lowest option above the last batch's level whose measured
  // throughput beats that level's by kSaturationStep, else the fastest; neither the rate nor
  // engine_idle is consulted.
  // None when nothing fits.
  std::optional<Choice> choose(const std::vector<Option>& fitting, double top_allowed,
                               int64_t steps, int64_t queued_images, Clock::time_point now,
                               int64_t pixels = 0, bool engine_idle = false,
                               bool saturated = false) const;
  // The throughput gain that makes a level worth stepping up to under saturation.
  static constexpr double kSaturationStep = 1.05;

 private:
  // choose() under saturation; `options` sorted by level, then the larger batch first.
  Choice climb(const std::vector<Option>& options, double top_allowed, int64_t steps,
               int64_t pixels) const;

  AutoLevelConfig config_;
  mutable std::mutex mu_;
  std::deque<std::pair<Clock::time_point, int64_t>> arrivals_;
  // The current (or last) busy period: batches that followed each other within gap().
  std::optional<Clock::time_point> busy_start_;
  Clock::time_point busy_end_{};
  double last_batch_seconds_ = 0;
  double last_level_ = 0;
  Clock::duration gap(double batch_seconds) const;  // the longest pause within a busy period
  struct Timing {
    double per_step = 0, fixed = 0;  // seconds per batch (moving averages)
  };
  // pixels -> level (1/1000) -> images -> timing
  std::map<int64_t, std::map<int64_t, std::map<int64_t, Timing>>> seconds_per_image_step_;
};

}  // namespace ldcp::server
