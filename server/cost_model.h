#pragma once
// Memory cost of a U-Net batch: the measured peak above the idle baseline for (images, width,
// height, pruning level). Filled at start-up by real calibration runs and refined from the peaks
// that served requests report, so that the scheduler's level choice is a lookup.
//
// Between measurements: linear in the number of images (least squares over the image counts
// measured for that size and level; proportional with one count), linear in the pixel count from
// the nearest measured size. Between measured levels, the cost of the measured level below (a
// bound: pruning never costs more memory, and memory need not fall linearly with the level);
// above the highest, that level's cost. A level calibration did not measure gets an exact entry
// once a served batch measured it. The estimate never rises with the level across the measured
// levels, and a safety margin is added.
//
// Guided (classifier-free guidance: two U-Net rows per image) and unguided batches are costed
// apart: calibration measures guided batches; an unguided batch costs the guided estimate until
// that exact (size, level, images) was observed unguided, so that a cheap unguided observation
// can never lower the cost of a guided batch, nor a sparse unguided table be extrapolated.

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace ldcp::server {

class CostModel {
 public:
  explicit CostModel(double safety_margin = 0.05) : margin_(safety_margin) {}

  // A measured peak (bytes above the baseline) of a batch of `images` images.
  void add_measurement(int64_t images, int64_t width, int64_t height, double level, int64_t bytes,
                       bool guided = true);
  // A served batch's measured peak: raises the stored cost at once when it was underestimated,
  // otherwise moves it a quarter of the way towards the measurement. Stored at the nearest
  // measured size, scaled by the pixel count.
  void observe(int64_t images, int64_t width, int64_t height, double level, int64_t bytes,
               bool guided = true);
  // An allocation failed at this point although `available_bytes` were free: the cost is at
  // least that much more.
  void observe_oom(int64_t images, int64_t width, int64_t height, double level,
                   int64_t available_bytes, bool guided = true);

  // Estimated peak bytes; throws std::logic_error when nothing was measured.
  int64_t estimate(int64_t images, int64_t width, int64_t height, double level,
                   bool guided = true) const;
  bool empty() const;
  // "images x WxH @ level: bytes" lines, for the start-up log.
  std::vector<std::string> describe() const;

 private:
  using Key = std::tuple<int64_t, int64_t>;  // (pixels, level in 1/1000)
  int64_t nearest_size_unlocked(int64_t pixels) const;
  int64_t estimate_at(int64_t pixels, int64_t level_milli, int64_t images) const;
  int64_t estimate_unlocked(int64_t images, int64_t width, int64_t height, double level,
                            bool guided) const;
  // Bytes at a measured size, before scaling and margin: an exact observation, else the table.
  double base_estimate_unlocked(int64_t size, int64_t level_milli, int64_t images,
                                bool guided) const;

  double margin_;
  mutable std::mutex mu_;
  // (pixels, level) -> images -> bytes
  std::map<Key, std::map<int64_t, double>> points_;
  // Observations outside the calibrated table (unguided batches, levels calibration did not
  // measure): (pixels, level in 1/1000, images, guided) -> bytes, at the table's sizes.
  std::map<std::tuple<int64_t, int64_t, int64_t, bool>, double> observed_;
};

}  // namespace ldcp::server
