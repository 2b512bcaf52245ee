// The samplers against diffusers (references by tests/parity/ref_schedulers.py): timesteps,
// sigmas, init_noise_sigma and whole sampling loops fed with the recorded model outputs, for
// the named samplers on four configs and for class variants; plus the factory's contract.

#include <set>
#include <stdexcept>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/schedulers/scheduler.h"
#include "model/schedulers/scheduling_ddim.h"
#include "model/schedulers/scheduling_dpmsolver_multistep.h"
#include "model/schedulers/scheduling_euler_ancestral_discrete.h"
#include "model/schedulers/scheduling_euler_discrete.h"
#include "model/schedulers/scheduling_pndm.h"
#include "tests/common/test_util.h"

namespace ldcp::schedulers {
namespace {

using nlohmann::json;
using testing::parity_dir;

// The same float32 operations in the same order: bit-exact on the machines tried; the margin
// (far below the 1e-4) leaves room for other SIMD paths.
constexpr double kStepTol = 1e-6;

std::filesystem::path ref_dir() { return parity_dir() / "ref" / "schedulers"; }

const json& cases_index() {
  static const json index = io::read_json_file(ref_dir() / "cases.json");
  return index;
}

json load_config(const json& record) {
  return io::read_json_file(parity_dir() / record.at("config").get<std::string>() /
                            "scheduler_config.json");
}

// As the reference script: a named sampler through make_scheduler, or a class from the config
// with overrides (diffusers' `Class.from_config(config, **overrides)`).
std::unique_ptr<Scheduler> build(const json& record) {
  const auto config = load_config(record);
  const double eta = record.at("eta").get<double>();
  if (record.contains("sampler")) {
    return make_scheduler(record.at("sampler").get<std::string>(), config, SamplerOptions{eta});
  }
  auto merged = effective_config(config);
  for (const auto& [key, value] : record.at("overrides").items()) merged[key] = value;
  const auto cls = record.at("cls").get<std::string>();
  if (cls == "PNDMScheduler") {
    return std::make_unique<PNDMScheduler>(PNDMSchedulerConfig::from_json(merged));
  }
  if (cls == "DDIMScheduler") {
    return std::make_unique<DDIMScheduler>(DDIMSchedulerConfig::from_json(merged), eta);
  }
  if (cls == "EulerDiscreteScheduler") {
    return std::make_unique<EulerDiscreteScheduler>(
        EulerDiscreteSchedulerConfig::from_json(merged));
  }
  if (cls == "EulerAncestralDiscreteScheduler") {
    return std::make_unique<EulerAncestralDiscreteScheduler>(
        EulerAncestralDiscreteSchedulerConfig::from_json(merged));
  }
  if (cls == "DPMSolverMultistepScheduler") {
    return std::make_unique<DPMSolverMultistepScheduler>(
        DPMSolverMultistepSchedulerConfig::from_json(merged));
  }
  throw std::runtime_error("unknown class " + cls);
}

at::Generator step_generator(const json& record) {
  return at::make_generator<at::CPUGeneratorImpl>(record.at("seed").get<uint64_t>() + 2);
}

// Timesteps: exactly (int64, or the float32 values); `float_tol` for float timesteps derived
// through logarithms (Karras), where numpy's float32 log may differ by an ulp.
void expect_timesteps(const at::Tensor& actual, const at::Tensor& expected, double float_tol,
                      const std::string& what) {
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << what;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what << ": " << actual << " vs " << expected;
  if (float_tol == 0 || !actual.is_floating_point()) {
    EXPECT_TRUE(torch::equal(actual, expected)) << what << ": " << actual << " vs " << expected;
  } else {
    EXPECT_LE(
        (actual.to(torch::kFloat64) - expected.to(torch::kFloat64)).abs().max().item<double>(),
        float_tol)
        << what << ": " << actual << " vs " << expected;
  }
}

// One recorded case: the whole loop, with the C++ sample carried from step to step.
void run_case(const json& record) {
  const auto id = record.at("id").get<std::string>();
  SCOPED_TRACE(id);
  const int64_t steps = record.at("steps").get<int64_t>();
  if (record.contains("error")) {
    // The reference raises for this case (e.g. too few steps for PNDM's Runge-Kutta warm-up):
    // so must the C++ sampler, with an exception rather than a crash.
    EXPECT_ANY_THROW({
      auto scheduler = build(record);
      scheduler->set_timesteps(steps);
      auto sample = torch::zeros({1, 4, 8, 8});
      auto generator = step_generator(record);
      const auto timesteps = scheduler->timesteps();
      for (int64_t i = 0; i < timesteps.size(0); ++i) {
        auto t = timesteps[i];
        auto scaled = scheduler->scale_model_input(sample, t);
        sample = scheduler->step(torch::ones({1, 4, 8, 8}), t, sample, generator);
      }
    }) << "the reference raises: "
       << record.at("error").get<std::string>();
    return;
  }
  const auto ref = io::load_safetensors(ref_dir() / ("case_" + id + ".safetensors"));
  auto scheduler = build(record);
  scheduler->set_timesteps(steps);

  const bool karras_floats = record.at("cls") == "EulerDiscreteScheduler" &&
                             record.at("overrides").value("use_karras_sigmas", false);
  expect_timesteps(scheduler->timesteps(), ref.at("timesteps"), karras_floats ? 1e-3 : 0,
                   "timesteps");
  if (ref.count("sigmas")) {
    ASSERT_TRUE(scheduler->sigmas().defined());
    EXPECT_ALLCLOSE(scheduler->sigmas(), ref.at("sigmas"), 1e-7);
  } else {
    EXPECT_FALSE(scheduler->sigmas().defined());
  }
  EXPECT_DOUBLE_EQ(scheduler->init_noise_sigma(), record.at("init_noise_sigma").get<double>());

  auto sample = ref.at("sample");
  auto generator = step_generator(record);
  // Iterate the reference's timesteps: for Karras floats the C++ ones may differ by an ulp,
  // and the pipeline passes each sampler its own timesteps().
  const auto timesteps = scheduler->timesteps();
  for (int64_t i = 0; i < timesteps.size(0); ++i) {
    const auto key = std::to_string(i);
    auto t = timesteps[i];
    auto scaled = scheduler->scale_model_input(sample, t);
    ASSERT_ALLCLOSE(scaled, ref.at("scaled." + key), kStepTol) << "scale_model_input, step " << i;
    sample = scheduler->step(ref.at("model_output." + key), t, sample, generator);
    ASSERT_EQ(sample.scalar_type(), torch::kFloat32);
    ASSERT_ALLCLOSE(sample, ref.at("prev_sample." + key), kStepTol) << "step " << i;
  }
}

// Runs every case of a named sampler (or a variant) and checks that the reference has them.
void run_cases(const std::string& field, const std::string& value, size_t expected_count) {
  size_t count = 0;
  for (const auto& record : cases_index().at("cases")) {
    if (record.value(field, "") != value) continue;
    ++count;
    run_case(record);
  }
  EXPECT_EQ(count, expected_count) << field << " " << value;
}

// Four configs x step counts 1, 4, 7, 20.
constexpr size_t kSamplerCases = 16;

TEST(SchedulerParity, Pndm) { run_cases("sampler", "pndm", kSamplerCases); }
TEST(SchedulerParity, Ddim) { run_cases("sampler", "ddim", kSamplerCases); }
TEST(SchedulerParity, Euler) { run_cases("sampler", "euler", kSamplerCases); }
TEST(SchedulerParity, EulerAncestral) { run_cases("sampler", "euler_a", kSamplerCases); }
TEST(SchedulerParity, DpmPP2M) { run_cases("sampler", "dpmpp_2m", kSamplerCases); }
TEST(SchedulerParity, DpmPP2MKarras) { run_cases("sampler", "dpmpp_2m_karras", kSamplerCases); }

TEST(SchedulerParity, DdimWithEta) { run_cases("variant", "ddim_eta", 12); }
TEST(SchedulerParity, PndmRungeKutta) { run_cases("variant", "pndm_prk", 8); }
TEST(SchedulerParity, EulerVariants) {
  run_cases("variant", "euler_karras", 8);
  run_cases("variant", "euler_sigma_min", 4);
  run_cases("variant", "euler_continuous", 4);
}
TEST(SchedulerParity, DpmSolverVariants) {
  run_cases("variant", "dpm_order3_heun", 8);
  run_cases("variant", "dpm_order3_karras", 8);
  run_cases("variant", "dpm_sde", 8);
  run_cases("variant", "dpm_sde_heun", 4);
  run_cases("variant", "dpmsolver_order3", 8);
  run_cases("variant", "dpmsolver_sde", 4);
  run_cases("variant", "dpm_sample_pred", 4);
}

// The schedules of the named samplers for step counts 1-60 and some large ones.
TEST(SchedulerParity, TimestepSweep) {
  size_t sweeps = 0;
  for (const auto& sweep : cases_index().at("sweeps")) {
    const auto sampler = sweep.at("sampler").get<std::string>();
    SCOPED_TRACE(sampler + " on " + sweep.at("config").get<std::string>());
    const auto config = load_config(sweep);
    const auto ref = io::load_safetensors(ref_dir() / sweep.at("file").get<std::string>());
    for (const auto& n : sweep.at("counts")) {
      const auto key = std::to_string(n.get<int64_t>());
      auto scheduler = make_scheduler(sampler, config);
      scheduler->set_timesteps(n.get<int64_t>());
      expect_timesteps(scheduler->timesteps(), ref.at("timesteps." + key), 0, "steps " + key);
      if (ref.count("sigmas." + key)) {
        EXPECT_ALLCLOSE(scheduler->sigmas(), ref.at("sigmas." + key), 1e-7) << "steps " << key;
      }
    }
    for (const auto& n : sweep.at("errors")) {
      EXPECT_ANY_THROW({
        auto scheduler = make_scheduler(sampler, config);
        scheduler->set_timesteps(n.get<int64_t>());
      }) << "steps "
         << n;
    }
    ++sweeps;
  }
  EXPECT_EQ(sweeps, 4 * sampler_names().size());
}

json sd15_config() {
  return io::read_json_file(testing::parity_model("tiny-a") / "scheduler" /
                            "scheduler_config.json");
}

TEST(SchedulerFactory, NamesAndClasses) {
  const std::vector<std::string> expected{"pndm",    "ddim",     "euler",
                                          "euler_a", "dpmpp_2m", "dpmpp_2m_karras"};
  EXPECT_EQ(sampler_names(), expected);
  const std::vector<std::string> classes{"PNDMScheduler",
                                         "DDIMScheduler",
                                         "EulerDiscreteScheduler",
                                         "EulerAncestralDiscreteScheduler",
                                         "DPMSolverMultistepScheduler",
                                         "DPMSolverMultistepScheduler"};
  const auto config = sd15_config();
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(make_scheduler(expected[i], config)->name(), classes[i]);
  }
}

TEST(SchedulerFactory, UnknownSamplerListsTheKnownOnes) {
  try {
    make_scheduler("heun", sd15_config());
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("heun"), std::string::npos) << message;
    for (const auto& name : sampler_names()) {
      EXPECT_NE(message.find(name), std::string::npos) << message;
    }
  }
}

TEST(SchedulerFactory, DpmSamplersFixTheSolverWhateverTheConfigSays) {
  auto config = sd15_config();
  config["algorithm_type"] = "sde-dpmsolver++";
  config["solver_order"] = 3;
  config["use_karras_sigmas"] = true;
  auto plain = make_scheduler("dpmpp_2m", config);
  auto* dpm = dynamic_cast<DPMSolverMultistepScheduler*>(plain.get());
  ASSERT_NE(dpm, nullptr);
  EXPECT_EQ(dpm->config().algorithm_type, "dpmsolver++");
  EXPECT_EQ(dpm->config().solver_order, 2);
  EXPECT_FALSE(dpm->config().use_karras_sigmas);
  auto karras = make_scheduler("dpmpp_2m_karras", sd15_config());
  EXPECT_TRUE(dynamic_cast<DPMSolverMultistepScheduler&>(*karras).config().use_karras_sigmas);
}

TEST(SchedulerConfig, KeysTheClassDoesNotKnowAreIgnoredAndAbsentOnesTakeItsDefaults) {
  // SD1.5's config: PNDM keys (skip_prk_steps) are ignored by Euler; its timestep_spacing and
  // steps_offset are taken; Euler's own keys keep their defaults.
  const auto euler = EulerDiscreteSchedulerConfig::from_json(sd15_config());
  EXPECT_EQ(euler.timestep_spacing, "leading");
  EXPECT_EQ(euler.steps_offset, 1);
  EXPECT_EQ(euler.beta_schedule, "scaled_linear");
  EXPECT_EQ(euler.interpolation_type, "linear");
  const auto ddim = DDIMSchedulerConfig::from_json(json{{"beta_schedule", "linear"}});
  EXPECT_TRUE(ddim.set_alpha_to_one);  // DDIM's default, where PNDM's is false
  EXPECT_TRUE(ddim.clip_sample);
}

TEST(SchedulerConfig, UseDefaultValuesDropsTheListedKeys) {
  // diffusers' extract_init_dict: keys in "_use_default_values" were the writer's defaults.
  json config{{"timestep_spacing", "leading"},
              {"steps_offset", 1},
              {"_use_default_values", {"timestep_spacing"}}};
  const auto euler = EulerDiscreteSchedulerConfig::from_json(config);
  EXPECT_EQ(euler.timestep_spacing, "linspace");
  EXPECT_EQ(euler.steps_offset, 1);
}

TEST(SchedulerConfig, BadValuesThrowNamingTheKey) {
  auto expect_config_error = [](const json& config, const std::string& name,
                                const std::string& key) {
    try {
      make_scheduler(name, config);
      ADD_FAILURE() << name << ": no exception for " << config.dump();
    } catch (const io::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  expect_config_error(json{{"beta_schedule", "quadratic"}}, "pndm", "beta_schedule");
  expect_config_error(json{{"prediction_type", "flow"}}, "ddim", "prediction_type");
  expect_config_error(json{{"timestep_spacing", "random"}}, "euler", "timestep_spacing");
  expect_config_error(json{{"trained_betas", {0.1, 0.2}}}, "euler_a", "trained_betas");
  expect_config_error(json{{"num_train_timesteps", "many"}}, "dpmpp_2m", "num_train_timesteps");
  expect_config_error(json{{"use_exponential_sigmas", true}}, "dpmpp_2m_karras",
                      "use_exponential_sigmas");
  expect_config_error(json::array(), "pndm", "JSON object");
}

TEST(SchedulerUse, StepBeforeSetTimestepsThrows) {
  const auto config = sd15_config();
  for (const auto& name : sampler_names()) {
    auto scheduler = make_scheduler(name, config);
    EXPECT_ANY_THROW(scheduler->step(torch::zeros({1, 4, 8, 8}), torch::tensor(1.0),
                                     torch::zeros({1, 4, 8, 8}), std::nullopt))
        << name;
  }
}

TEST(SchedulerUse, EulerRejectsIntegerTimesteps) {
  auto scheduler = make_scheduler("euler", sd15_config());
  scheduler->set_timesteps(4);
  EXPECT_THROW(scheduler->step(torch::zeros({1, 4, 8, 8}), torch::tensor(int64_t{0}),
                               torch::zeros({1, 4, 8, 8}), std::nullopt),
               std::invalid_argument);
}

TEST(SchedulerUse, StochasticStepsFollowTheGenerator) {
  // Same seed, same result; another seed, another result (the noise really comes from it).
  const auto config = sd15_config();
  for (const std::string name : {"euler_a", "ddim"}) {
    auto run = [&](uint64_t seed) {
      auto scheduler = make_scheduler(name, config, SamplerOptions{0.7});
      scheduler->set_timesteps(5);
      at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
      auto sample = torch::ones({1, 4, 8, 8});
      for (int64_t i = 0; i < 5; ++i) {
        auto t = scheduler->timesteps()[i];
        auto model_output = scheduler->scale_model_input(sample, t) * 0.5;
        sample = scheduler->step(model_output, t, sample, generator);
      }
      return sample;
    };
    EXPECT_TRUE(torch::equal(run(3), run(3))) << name;
    EXPECT_FALSE(torch::equal(run(3), run(4))) << name;
  }
}

}  // namespace
}  // namespace ldcp::schedulers
