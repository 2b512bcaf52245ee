// Several models in one server: the --model / --gates options (model_specs.h), and the
// scheduler with two fake engines sharing one device and budget: each model's own costs, both
// models' weights in the baseline, batches never mixing models, AUTO's levels per model.

#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/calibration.h"
#include "server/cost_model.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/model_specs.h"
#include "server/request_scheduler.h"
#include "tests/server/fake_engine.h"
#include "tests/server/scheduler_fixture.h"

namespace ldcp::server::testing {
namespace {

std::string error_of(const std::vector<std::string>& models,
                     const std::vector<std::string>& gates = {}) {
  try {
    parse_model_specs(models, gates);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(ModelSpecs, OneBarePathKeepsItsFolderName) {
  const auto specs = parse_model_specs({"/models/sd15/"}, {"/g/gates.safetensors"});
  ASSERT_EQ(specs.size(), 1u);
  EXPECT_EQ(specs[0].name, "sd15");
  EXPECT_EQ(specs[0].path, "/models/sd15/");
  EXPECT_EQ(specs[0].gates, "/g/gates.safetensors");
  EXPECT_FALSE(specs[0].named);
  // A single-file checkpoint keeps its file name, as the engine always named it.
  EXPECT_EQ(parse_model_specs({"ckpt/v1-5.safetensors"}, {})[0].name, "v1-5.safetensors");
  // A "=" inside a path is no NAME=.
  EXPECT_EQ(parse_model_specs({"/data/a=b/model"}, {})[0].path, "/data/a=b/model");
}

TEST(ModelSpecs, SeveralNamedModelsWithTheirGates) {
  const auto specs = parse_model_specs({"base=/m/sd15", "faces=/m/faces.safetensors"},
                                       {"faces=/g/faces.gates", "base=/g/base.gates"});
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[0].name, "base");
  EXPECT_EQ(specs[1].name, "faces");
  EXPECT_EQ(specs[1].path, "/m/faces.safetensors");
  EXPECT_EQ(specs[0].gates, "/g/base.gates");
  EXPECT_EQ(specs[1].gates, "/g/faces.gates");
  // A bare --gates is the first model's.
  EXPECT_EQ(parse_model_specs({"a=/m/a", "b=/m/b"}, {"/g/x"})[0].gates, "/g/x");
  EXPECT_TRUE(parse_model_specs({"a=/m/a", "b=/m/b"}, {"/g/x"})[1].gates.empty());
}

TEST(ModelSpecs, BadOptionsNameWhatIsWrong) {
  EXPECT_NE(error_of({}).find("--model: at least one"), std::string::npos);
  EXPECT_NE(error_of({"bad name=/m/a"}).find("bad model name 'bad name'"), std::string::npos);
  EXPECT_NE(error_of({".hidden=/m/a"}).find("bad model name"), std::string::npos);
  EXPECT_NE(error_of({"none=/m/a"}).find("bad model name 'none'"), std::string::npos);
  EXPECT_NE(error_of({std::string(65, 'a') + "=/m/a"}).find("bad model name"), std::string::npos);
  EXPECT_NE(error_of({"=/m/a"}).find("bad model name ''"), std::string::npos);
  EXPECT_NE(error_of({"a="}).find("no path"), std::string::npos);
  EXPECT_NE(error_of({"a=/m/a", "a=/m/b"}).find("'a' appears twice"), std::string::npos);
  EXPECT_NE(error_of({"a=/m/a", "/m/b"}).find("each is NAME=PATH"), std::string::npos);
  EXPECT_NE(error_of({"a=/m/a"}, {"c=/g"}).find("no model named 'c'"), std::string::npos);
  EXPECT_NE(error_of({"a=/m/a", "b=/m/b"}, {"/g/1", "/g/2"}).find("each is NAME=FILE"),
            std::string::npos);
  EXPECT_NE(error_of({"a=/m/a"}, {"a=/g/1", "a=/g/2"}).find("two gates files"), std::string::npos);
  std::vector<std::string> many;
  for (size_t i = 0; i <= kMaxModels; ++i) many.push_back("m" + std::to_string(i) + "=/m");
  EXPECT_NE(error_of(many).find("at most"), std::string::npos);
  // Long values are quoted short.
  const auto long_error = error_of({std::string(5000, 'x') + " y=/m"});
  EXPECT_LT(long_error.size(), 300u);
}

TEST(ModelSpecs, NamesAreBoundedAndPlain) {
  EXPECT_TRUE(valid_model_name("sd15-base_v1.2"));
  EXPECT_FALSE(valid_model_name(""));
  EXPECT_FALSE(valid_model_name("a/b"));
  EXPECT_FALSE(valid_model_name("a b"));
  EXPECT_FALSE(valid_model_name("é"));
  EXPECT_FALSE(valid_model_name(".a"));
  EXPECT_FALSE(valid_model_name(kNoModelLabel));
  EXPECT_TRUE(valid_model_name(std::string(kMaxModelNameChars, 'a')));
  EXPECT_FALSE(valid_model_name(std::string(kMaxModelNameChars + 1, 'a')));
}

// Two fake models on one device: A's weights 1000 bytes, B's 3000; B's batches cost twice A's.
// The budget of 10000 bytes reads the device (both fakes); 6000 are left for batches.
struct TwoModels {
  explicit TwoModels(SchedulerConfig config = Fixture::base_config())
      : budget(10000, 0, [this] { return device(); }), costs_a(0.0), costs_b(0.0) {
    a.external = 1000;
    b.external = 3000;
    b.cost = [](int64_t n, double l) {
      return static_cast<int64_t>(static_cast<double>(n) * 8000.0 * (1.0 - l));
    };
    calibrate(a, costs_a, Fixture::calibration_plan());
    calibrate(b, costs_b, Fixture::calibration_plan());
    budget.set_baseline_from_measurement();
    a.started = 0;
    b.started = 0;
    calibration_runs = a.runs().size();
    scheduler = std::make_unique<RequestScheduler>(
        std::vector<ScheduledModel>{{&a, &costs_a}, {&b, &costs_b}}, budget, &metrics, config);
  }
  // What the device's meter reads: every model's weights and running batches. FakeEngine's
  // memory() counts its own external bytes and batches only.
  runtime::MemoryStats device() const {
    auto s = a.memory();
    const auto t = b.memory();
    s.allocated_bytes += t.allocated_bytes;
    s.reserved_bytes += t.reserved_bytes;
    return s;
  }
  Submitted submit_to(size_t model, PruningRequest pruning = {}, int64_t images = 1,
                      const std::string& prompt = "") {
    auto job = std::make_shared<Job>();
    job->model = model;
    job->params.width = job->params.height = 64;
    job->params.steps = 2;
    job->params.num_images = images;
    job->params.sampler = "euler";
    job->params.prompt = prompt;
    job->pruning = pruning;
    if (pruning.mode != PruningRequest::Mode::kAuto) job->params.pruning = pruning.schedule;
    auto promise = std::make_shared<std::promise<JobOutcome>>();
    job->on_done = [promise](JobOutcome&& o) { promise->set_value(std::move(o)); };
    Submitted out{job, promise->get_future()};
    scheduler->submit(job);
    return out;
  }

  // The runs the scheduler made on `e` (after the calibration's).
  std::vector<FakeEngine::Run> served(const FakeEngine& e) const {
    auto runs = e.runs();
    runs.erase(runs.begin(), runs.begin() + static_cast<std::ptrdiff_t>(calibration_runs));
    return runs;
  }

  FakeEngine a, b;
  size_t calibration_runs = 0;  // each engine's (one plan for both)
  MemoryBudget budget;
  CostModel costs_a, costs_b;
  Metrics metrics;
  std::unique_ptr<RequestScheduler> scheduler;
};

TEST(SeveralModels, TheBaselineCountsEveryModelsWeights) {
  TwoModels t;
  EXPECT_EQ(t.budget.baseline_bytes(), 4000);
  EXPECT_EQ(t.budget.capacity_bytes(), 6000);
  // 2 images on A at level 0 cost 8000: they would fit beside A's weights alone (9000 free),
  // not beside both models' (6000).
  auto too_big = t.submit_to(0, fixed(0.0), 2);
  EXPECT_EQ(wait(too_big).status, Status::kResourceExhausted);
  // At level 0.5 they cost 4000: served, on A.
  auto fits = t.submit_to(0, fixed(0.5), 2);
  EXPECT_EQ(wait(fits).status, Status::kOk);
  EXPECT_EQ(t.served(t.a).size(), 1u);
  EXPECT_TRUE(t.served(t.b).empty());
}

TEST(SeveralModels, EachModelIsCostedByItsOwnCalibration) {
  TwoModels t;
  // One image at level 0: 4000 bytes on A (fits the 6000), 8000 on B (never fits).
  auto on_a = t.submit_to(0, fixed(0.0));
  EXPECT_EQ(wait(on_a).status, Status::kOk);
  auto on_b = t.submit_to(1, fixed(0.0));
  const auto refused = wait(on_b);
  EXPECT_EQ(refused.status, Status::kResourceExhausted);
  EXPECT_NE(refused.message.find("8"), std::string::npos);
  // AUTO: A runs unpruned; B needs level 0.25 (6000 bytes) to fit.
  auto auto_a = t.submit_to(0);
  auto auto_b = t.submit_to(1);
  const auto oa = wait(auto_a);
  const auto ob = wait(auto_b);
  ASSERT_EQ(oa.status, Status::kOk);
  ASSERT_EQ(ob.status, Status::kOk);
  EXPECT_DOUBLE_EQ(oa.level, 0.0);
  EXPECT_DOUBLE_EQ(ob.level, 0.25);
  ASSERT_EQ(t.served(t.b).size(), 1u);
  EXPECT_DOUBLE_EQ(t.served(t.b)[0].level, 0.25);
  // B's memory-bound level does not hold A's up: A's next AUTO request runs unpruned.
  auto again_a = t.submit_to(0);
  EXPECT_DOUBLE_EQ(wait(again_a).level, 0.0);
}

TEST(SeveralModels, ABatchNeverMixesModels) {
  auto config = Fixture::base_config();
  config.max_batch = 4;
  config.batch_window = 200ms;
  TwoModels t(config);
  // Interleaved requests of one shape and schedule, at a level where four would fit one batch.
  std::vector<Submitted> subs;
  for (int i = 0; i < 4; ++i) {
    subs.push_back(t.submit_to(static_cast<size_t>(i % 2), fixed(0.75), 1, i % 2 ? "b" : "a"));
  }
  for (auto& s : subs) {
    const auto o = wait(s);
    ASSERT_EQ(o.status, Status::kOk);
    EXPECT_EQ(o.batch_requests, 2);  // its model's two requests together, no more
  }
  for (auto [engine, prompt] : {std::pair{&t.a, "a"}, std::pair{&t.b, "b"}}) {
    const auto runs = t.served(*engine);
    ASSERT_EQ(runs.size(), 1u);
    ASSERT_EQ(runs[0].requests.size(), 2u);
    for (const auto& r : runs[0].requests) EXPECT_EQ(r.prompt, prompt);
  }
}

TEST(SeveralModels, AnUnknownModelIndexIsRefused) {
  TwoModels t;
  auto s = t.submit_to(2);
  const auto o = wait(s);
  EXPECT_EQ(o.status, Status::kInvalidArgument);
  EXPECT_EQ(o.message.rfind("model:", 0), 0u);
}

}  // namespace
}  // namespace ldcp::server::testing
