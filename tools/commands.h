#pragma once
// The subcommands of `ldcp`, one file each. Every add_*_command registers its subcommand and
// options on `app` and sets a callback that runs it; errors are thrown and reported by main.

#include <string>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <CLI/CLI.hpp>

namespace ldcp::pipelines {
class StableDiffusionPipeline;
}

namespace ldcp::tools {

void add_generate_command(CLI::App& app);
void add_init_demo_model_command(CLI::App& app);
void add_train_gates_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_eval_pruning_command(CLI::App& app);
void add_tune_schedule_command(CLI::App& app);

// --dtype values, with errors naming the option (--device: runtime::parse_device).
// --dtype: a name or "auto" (model/runtime/dtype.h), resolved for `device`; an auto choice is
// printed to stderr.
c10::ScalarType parse_dtype(const std::string& name, const c10::Device& device);
// The --dtype option of a command: default auto, LDCP_DTYPE from the environment.
void add_dtype_option(CLI::App* app, std::string& dtype, const std::string& help = "");
// --linear-backend auto|aten|onednn (PipelineOptions::linear_backend), default auto,
// LDCP_LINEAR_BACKEND from the environment.
void add_linear_backend_option(CLI::App& command, std::string& backend);
// Prints the pipeline's linear backend choice to stderr ("linears: aten (auto: ...)") when it
// was `requested` "auto" (as the dtype: a forced choice prints nothing).
void print_linear_backend(const std::string& requested,
                          const pipelines::StableDiffusionPipeline& pipeline);
// --memory-format channels_last|contiguous (the U-Net's and VAE's convolution weight layout,
// PipelineOptions::channels_last), stored into `channels_last`.
void add_memory_format_option(CLI::App& command, bool& channels_last);
// Comma-separated pruning levels ("0,0.25,0.5"), each in [0, 1); error names `option`.
std::vector<double> parse_levels(const std::string& text, const std::string& option);

}  // namespace ldcp::tools
