#include "tools/measure.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <stdexcept>

#include <torch/cuda.h>
#include <torch/torch.h>

#include "model/models/unets/unet_2d_condition.h"
#include "model/runtime/flop_counter.h"
#include "model/runtime/memory_meter.h"
#include "model/schedulers/scheduler.h"

namespace ldcp::tools {

void synchronize(c10::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
}

StepOutcome guided_step(models::UNet2DConditionModelImpl& unet, schedulers::Scheduler& scheduler,
                        const StepInputs& inputs, c10::Device device, at::Generator generator,
                        bool count_macs, runtime::MemoryMeter* meter) {
  torch::NoGradGuard no_grad;
  StepOutcome out;
  synchronize(device);
  int64_t before = 0;
  if (meter != nullptr) {
    meter->reset_peak();
    before = meter->stats().allocated_bytes;
  }
  const auto start = std::chrono::steady_clock::now();
  const bool guided = inputs.guidance_scale > 1.0;
  const auto& t = inputs.timestep;
  auto model_input = scheduler.scale_model_input(
      guided ? torch::cat({inputs.latents, inputs.latents}) : inputs.latents, t);
  if (count_macs) {
    runtime::FlopCounter counter;
    out.noise = unet.forward(model_input, t.to(device), inputs.embeddings);
    out.unet_macs = counter.macs();
  } else {
    out.noise = unet.forward(model_input, t.to(device), inputs.embeddings);
  }
  auto noise = out.noise;
  if (guided) {
    auto chunks = noise.chunk(2);
    noise = chunks[0] + inputs.guidance_scale * (chunks[1] - chunks[0]);
  }
  out.latents = scheduler.step(noise, t, inputs.latents, generator);
  synchronize(device);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (meter != nullptr) {
    const auto stats = meter->stats();
    out.peak_bytes = stats.peak_allocated_bytes;
    out.peak_above_bytes = stats.peak_allocated_bytes - before;
  }
  return out;
}

double median(std::vector<double> values) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

double mean(const std::vector<double>& values) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  double sum = 0;
  for (double x : values) sum += x;
  return sum / static_cast<double>(values.size());
}

double min_of(const std::vector<double>& values) {
  return values.empty() ? std::numeric_limits<double>::quiet_NaN()
                        : *std::min_element(values.begin(), values.end());
}

double max_of(const std::vector<double>& values) {
  return values.empty() ? std::numeric_limits<double>::quiet_NaN()
                        : *std::max_element(values.begin(), values.end());
}

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

std::string fixed(double value, int decimals) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

double ratio(double value, double reference) {
  if (reference == 0 || std::isnan(value) || std::isnan(reference)) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  return value / reference;
}

std::string ratio_text(double value, double reference) {
  const double r = ratio(value, reference);
  return std::isnan(r) ? "-" : fixed(r, 2) + "x";
}

std::string markdown_table(const std::vector<std::string>& header,
                           const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size(), 3);
  for (size_t c = 0; c < header.size(); ++c) width[c] = std::max(width[c], header[c].size());
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size() && c < width.size(); ++c) {
      width[c] = std::max(width[c], row[c].size());
    }
  }
  std::ostringstream out;
  auto line = [&](const std::vector<std::string>& cells) {
    out << "|";
    for (size_t c = 0; c < width.size(); ++c) {
      const std::string cell = c < cells.size() ? cells[c] : "";
      out << " " << cell << std::string(width[c] - cell.size(), ' ') << " |";
    }
    out << "\n";
  };
  line(header);
  out << "|";
  for (size_t w : width) out << std::string(w + 2, '-') << "|";
  out << "\n";
  for (const auto& row : rows) line(row);
  return out.str();
}

bool run_gnuplot(const std::filesystem::path& script) {
  if (std::system("gnuplot --version > /dev/null 2>&1") != 0) {
    std::cerr << "warning: gnuplot not found (Debian package gnuplot-nox): plots skipped; run "
                 "`gnuplot "
              << script.filename().string() << "` in " << script.parent_path().string()
              << " later\n";
    return false;
  }
  auto quote = [](const std::string& text) {
    std::string quoted = "'";
    for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
  };
  const auto folder =
      script.parent_path().empty() ? std::filesystem::path(".") : script.parent_path();
  const auto command =
      "cd " + quote(folder.string()) + " && gnuplot " + quote(script.filename().string());
  if (std::system(command.c_str()) != 0) {
    std::cerr << "warning: gnuplot failed on " << script.string() << ": plots may be missing\n";
    return false;
  }
  return true;
}

std::vector<std::string> read_prompt_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("--prompts: cannot read " + path.string());
  std::vector<std::string> prompts;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line.front() == '#') continue;
    prompts.push_back(line);
  }
  if (prompts.empty()) {
    throw std::invalid_argument("--prompts: " + path.string() +
                                " has no prompts (one per line; # starts a comment)");
  }
  return prompts;
}

}  // namespace ldcp::tools
