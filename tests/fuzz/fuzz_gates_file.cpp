// libFuzzer target: gates files (model/pruning): a safetensors header whose metadata holds the
// score source and the learned step schedules (step_schedules_from_metadata), checked as
// load_gate_scores checks them before any tensor is read. Malformed files may only throw
// SafetensorsError or std::invalid_argument naming the file.

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "model/io/safetensors_header.h"
#include "model/pruning/step_schedule.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const std::string name = "fuzz-gates.safetensors";
  try {
    const auto header = ldcp::io::parse_safetensors_bytes(name, bytes);
    const auto schedules = ldcp::pruning::step_schedules_from_metadata(header.metadata, name);
    for (const auto& schedule : schedules) {
      if (schedule.levels.size() != schedule.timesteps.size()) std::abort();
      ldcp::pruning::find_step_schedule(schedules, schedule.budget, name);
      const auto levels = ldcp::pruning::levels_for_timesteps(schedule, {999, 500, 1});
      if (levels.size() != 3) std::abort();
    }
  } catch (const ldcp::io::SafetensorsError& e) {
    if (std::string(e.what()).find(name) == std::string::npos) std::abort();
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find(name) == std::string::npos) std::abort();
  }
  return 0;
}
