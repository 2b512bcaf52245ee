#pragma once
// What `ldcp bench` and `ldcp eval-pruning` share: one guided denoising step as the pipeline
// runs it (optionally counting the U-Net's multiply-accumulates and measuring its peak memory),
// medians, and the tables they print and write.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace ldcp::models {
class UNet2DConditionModelImpl;
}
namespace ldcp::schedulers {
class Scheduler;
}
namespace ldcp::runtime {
class MemoryMeter;
}

namespace ldcp::tools {

// The inputs of one denoising step of one guided request, as StableDiffusionPipeline builds them.
struct StepInputs {
  at::Tensor latents;     // [batch, in_channels, h, w] on the device
  at::Tensor embeddings;  // [2 * batch, 77, dim] (negative then positive), or [batch, ...] unguided
  at::Tensor timestep;    // 0-d CPU tensor, an element of the sampler's timesteps()
  double guidance_scale = 7.5;  // > 1: classifier-free guidance (U-Net batch 2 x batch)
};

struct StepOutcome {
  at::Tensor noise;               // the U-Net's raw prediction [U-Net batch, ...]
  at::Tensor latents;             // the sampler's next latents
  int64_t unet_macs = -1;         // counted (FlopCounter) when asked, else -1
  int64_t peak_above_bytes = -1;  // measured when a meter is given: peak minus usage at entry
  int64_t peak_bytes = -1;        // the meter's peak during the step
  double seconds = 0;             // wall time of the step (device synchronised)
};

// One guided step: U-Net on the (doubled) latents, the guidance combination, the sampler step;
// the U-Net runs with whatever gate keep counts are set. `count_macs` wraps only the U-Net
// forward in a FlopCounter (which slows it down: do not time such a step).
StepOutcome guided_step(models::UNet2DConditionModelImpl& unet, schedulers::Scheduler& scheduler,
                        const StepInputs& inputs, c10::Device device, at::Generator generator,
                        bool count_macs = false, runtime::MemoryMeter* meter = nullptr);

// Waits for the device's queued work (CUDA); nothing on the CPU.
void synchronize(c10::Device device);

double median(std::vector<double> values);         // NaN for none
double mean(const std::vector<double>& values);    // NaN for none
double min_of(const std::vector<double>& values);  // NaN for none
double max_of(const std::vector<double>& values);  // NaN for none
double mib(int64_t bytes);
// printf("%.*f"); "inf" / "nan" spelled out.
std::string fixed(double value, int decimals);
// "0.71x"; "-" when the reference is zero or either value is missing (NaN).
std::string ratio_text(double value, double reference);
double ratio(double value, double reference);  // NaN when the reference is zero

// A GitHub-flavoured Markdown table, columns padded to line up in a terminal.
std::string markdown_table(const std::vector<std::string>& header,
                           const std::vector<std::vector<std::string>>& rows);

// Runs gnuplot on a script from the script's folder (its relative paths resolve there); false
// (after a warning on stderr naming the script) when gnuplot is missing or fails, so that the
// measurements are written all the same.
bool run_gnuplot(const std::filesystem::path& script);

// --prompts files of eval-pruning and tune-schedule: one prompt per line, trailing spaces and CRs
// dropped, blank lines and lines starting with # skipped; errors name --prompts and the file.
std::vector<std::string> read_prompt_file(const std::filesystem::path& path);

}  // namespace ldcp::tools
