// `ldcp train-gates` on the tiny-a parity model and a folder of generated images: the image
// folder and decoding, the latent cache and its reuse, the level allocation equal to
// UNetPruner's, a short run whose validation loss falls and whose scores beat random ones
// (measured through UNetPruner on held-out images), resume equal to an uninterrupted run.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "model/clip/modeling_clip.h"
#include "model/clip/tokenization_clip.h"
#include "model/io/model_folder.h"
#include "model/models/autoencoders/autoencoder_kl.h"
#include "model/models/unets/unet_2d_condition.h"
#include "model/pipelines/image_io.h"
#include "model/pruning/gate_trainer.h"
#include "model/pruning/gated_layer.h"
#include "model/pruning/image_dataset.h"
#include "model/pruning/latent_cache.h"
#include "model/pruning/unet_pruner.h"
#include "model/schedulers/scheduling_utils.h"
#include "tests/common/test_util.h"

namespace ldcp::pruning {
namespace {
namespace fs = std::filesystem;

constexpr int64_t kResolution = 64;

// A smooth random RGB pattern, uint8 [height, width, 3]: a bicubic upsampling of 4x4 noise.
at::Tensor smooth_image(int64_t height, int64_t width, at::Generator& gen) {
  namespace F = torch::nn::functional;
  auto coarse = torch::rand({1, 3, 4, 4}, gen);
  auto image = F::interpolate(coarse, F::InterpolateFuncOptions()
                                          .size(std::vector<int64_t>{height, width})
                                          .mode(torch::kBicubic)
                                          .align_corners(true));
  return (image.squeeze(0).permute({1, 2, 0}).clamp(0, 1) * 255)
      .round()
      .to(torch::kUInt8)
      .contiguous();
}

// `count` images in FFHQ's layout (DIR/00000/00000.png, ...), some wider than tall.
void write_images(const fs::path& dir, int64_t count, uint64_t seed, int64_t per_folder = 10) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (int64_t i = 0; i < count; ++i) {
    char folder[16], name[16];
    std::snprintf(folder, sizeof folder, "%05lld", static_cast<long long>(i / per_folder * 1000));
    std::snprintf(name, sizeof name, "%05lld.png", static_cast<long long>(i));
    fs::create_directories(dir / folder);
    const int64_t width = i % 3 == 0 ? 80 : 64;
    pipelines::write_png(dir / folder / name, smooth_image(64, width, gen));
  }
}

// Shared by the tests: the model, a training folder and a held-out folder.
class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(ldcp::testing::temp_dir("trainer"));
    write_images(*root_ / "train", 40, 1);
    write_images(*root_ / "heldout", 16, 2);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  static fs::path model() { return ldcp::testing::parity_model("tiny-a"); }
  static const fs::path& root() { return *root_; }

  TrainerOptions options(const std::string& out_name) const {
    TrainerOptions o;
    o.model_dir = model();
    o.data_dir = root() / "train";
    o.out = root() / "out" / out_name;
    o.cache_dir = root() / "cache";
    o.resolution = kResolution;
    o.steps = 40;
    o.batch = 4;
    o.lr = 0.05;
    o.levels = {0.25, 0.5, 0.75};
    o.val_images = 8;
    o.seed = 5;
    return o;
  }

  static fs::path* root_;
};
fs::path* TrainerTest::root_ = nullptr;

// ---- images -------------------------------------------------------------------------------

TEST_F(TrainerTest, ListsPngAndJpegFilesOfAFolderTreeInOrder) {
  const auto dir = ldcp::testing::temp_dir("list");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  fs::create_directories(dir / "b" / "c");
  fs::create_directories(dir / ".hidden");
  pipelines::write_png(dir / "b" / "c" / "2.png", smooth_image(8, 8, gen));
  write_jpeg(dir / "b" / "1.JPG", smooth_image(8, 8, gen));
  write_jpeg(dir / "a.jpeg", smooth_image(8, 8, gen));
  pipelines::write_png(dir / ".hidden" / "x.png", smooth_image(8, 8, gen));
  std::ofstream(dir / "notes.txt") << "not an image";
  const auto images = list_images(dir);
  ASSERT_EQ(images.size(), 3u);
  EXPECT_EQ(images[0], dir / "a.jpeg");
  EXPECT_EQ(images[1], dir / "b" / "1.JPG");
  EXPECT_EQ(images[2], dir / "b" / "c" / "2.png");
}

TEST_F(TrainerTest, DecodesJpegAndPngByContent) {
  const auto dir = ldcp::testing::temp_dir("decode");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
  const auto image = smooth_image(48, 40, gen);
  write_jpeg(dir / "x.jpg", image, 95);
  pipelines::write_png(dir / "x.png", image);
  fs::copy_file(dir / "x.png", dir / "really-a-png.jpg");
  const auto jpeg = read_image(dir / "x.jpg");
  ASSERT_EQ(jpeg.sizes(), image.sizes());
  ASSERT_EQ(jpeg.scalar_type(), torch::kUInt8);
  // Lossy, but close on a smooth image.
  EXPECT_LT((jpeg.to(torch::kFloat) - image.to(torch::kFloat)).abs().mean().item<double>(), 3.0);
  EXPECT_TRUE(torch::equal(read_image(dir / "x.png"), image));
  EXPECT_TRUE(torch::equal(read_image(dir / "really-a-png.jpg"), image));
  std::ofstream(dir / "broken.jpg") << "\xFF\xD8\xFF garbage";
  try {
    read_image(dir / "broken.jpg");
    FAIL() << "a broken JPEG decoded";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("broken.jpg"), std::string::npos) << e.what();
  }
}

TEST_F(TrainerTest, CentreCropsAndResizesToTheResolution) {
  // 64 x 96: the centre 64 x 64 is grey 100, the 16-pixel side bands are white.
  auto image = torch::full({64, 96, 3}, 255, torch::kUInt8);
  image.narrow(1, 16, 64).fill_(100);
  const auto same = center_crop_resize(image, 64);
  ASSERT_EQ(same.sizes(), (std::vector<int64_t>{3, 64, 64}));
  EXPECT_ALLCLOSE(same, torch::full({3, 64, 64}, 100 / 127.5 - 1.0), 1e-6);
  const auto small = center_crop_resize(image, 16);
  ASSERT_EQ(small.sizes(), (std::vector<int64_t>{3, 16, 16}));
  EXPECT_ALLCLOSE(small, torch::full({3, 16, 16}, 100 / 127.5 - 1.0), 1e-5);
  const auto white = center_crop_resize(torch::full({10, 10, 3}, 255, torch::kUInt8), 32);
  EXPECT_ALLCLOSE(white, torch::ones({3, 32, 32}), 1e-5);
}

TEST_F(TrainerTest, EmptyOrUnreadableDataFoldersAreClearErrors) {
  const auto dir = ldcp::testing::temp_dir("bad-data");
  auto expect_error = [](const fs::path& path, const std::string& words) {
    try {
      list_images(path);
      FAIL() << "no error for " << path;
    } catch (const DataError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(path.string()), std::string::npos) << message;
      EXPECT_NE(message.find(words), std::string::npos) << message;
    }
  };
  expect_error(dir / "missing", "does not exist");
  std::ofstream(dir / "file.png") << "x";
  expect_error(dir / "file.png", "is not a folder");
  fs::create_directories(dir / "empty" / "sub");
  std::ofstream(dir / "empty" / "sub" / "readme.txt") << "no images here";
  expect_error(dir / "empty", "no PNG or JPEG");

  // The trainer fails on the empty folder before any training.
  auto o = options("never.safetensors");
  o.data_dir = dir / "empty";
  EXPECT_THROW(train_gates(o), DataError);
  EXPECT_FALSE(fs::exists(o.out));

  // Files named like images that do not decode: skipped, and an error when none is left.
  fs::create_directories(dir / "corrupt");
  std::ofstream(dir / "corrupt" / "a.png") << "\x89PNG but not really";
  std::ofstream(dir / "corrupt" / "b.jpg") << "plain text";
  auto vae = models::load_vae(model() / "vae");
  LatentCacheOptions cache;
  cache.cache_dir = dir / "cache";
  cache.resolution = kResolution;
  try {
    build_latent_cache(dir / "corrupt", *vae, cache);
    FAIL() << "a folder of undecodable images gave latents";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("could be decoded"), std::string::npos) << e.what();
  }
}

// ---- latent cache -------------------------------------------------------------------------

TEST_F(TrainerTest, SecondRunReusesTheLatentCache) {
  const auto dir = ldcp::testing::temp_dir("cache");
  write_images(dir / "data", 12, 7);
  std::ofstream(dir / "data" / "00000" / "zz-broken.png") << "\x89PNG broken";
  auto vae = models::load_vae(model() / "vae");
  LatentCacheOptions cache;
  cache.cache_dir = dir / "cache";
  cache.resolution = kResolution;
  cache.batch = 5;
  cache.shard_size = 8;
  int64_t last_done = 0, total = 0;
  const auto first = build_latent_cache(dir / "data", *vae, cache, [&](int64_t done, int64_t all) {
    EXPECT_GE(done, last_done);
    last_done = done;
    total = all;
  });
  EXPECT_EQ(total, 13);
  EXPECT_EQ(last_done, 13);
  EXPECT_EQ(first.encoded, 13);
  EXPECT_EQ(first.reused, 0);
  ASSERT_EQ(first.size(), 12);
  ASSERT_EQ(first.skipped.size(), 1u);
  EXPECT_NE(first.skipped[0].find("zz-broken.png"), std::string::npos);
  EXPECT_EQ(first.mean.sizes(), (std::vector<int64_t>{12, 4, 8, 8}));
  EXPECT_TRUE(fs::exists(first.entry_dir / "manifest.json"));

  // The latents are the VAE posterior of the centre-cropped, resized image.
  {
    torch::NoGradGuard no_grad;
    const auto pixels = center_crop_resize(read_image(dir / "data" / first.images[3]), kResolution);
    const auto posterior = vae->encode(pixels.unsqueeze(0));
    EXPECT_ALLCLOSE(first.mean[3].to(torch::kFloat), posterior.mean[0], 2e-3);
    EXPECT_ALLCLOSE(first.std[3].to(torch::kFloat), posterior.std[0], 2e-3);
  }

  // Same images, resolution and VAE: nothing encoded, the same latents.
  cache.shard_size = 3;  // the entry's own shard size wins
  const auto second = build_latent_cache(dir / "data", *vae, cache);
  EXPECT_EQ(second.key, first.key);
  EXPECT_EQ(second.encoded, 0);
  EXPECT_EQ(second.reused, 13);
  EXPECT_EQ(second.images, first.images);
  EXPECT_TRUE(torch::equal(second.mean, first.mean));
  EXPECT_TRUE(torch::equal(second.std, first.std));

  // Another resolution, another image list or other VAE weights: another entry.
  cache.resolution = 32;
  const auto other_resolution = build_latent_cache(dir / "data", *vae, cache);
  EXPECT_NE(other_resolution.key, first.key);
  EXPECT_EQ(other_resolution.encoded, 13);
  cache.resolution = kResolution;
  write_images(dir / "data" / "more", 1, 9);
  const auto more_images = build_latent_cache(dir / "data", *vae, cache);
  EXPECT_NE(more_images.key, first.key);
  EXPECT_EQ(more_images.size(), 13);
  const auto fingerprint = vae_fingerprint(*vae);
  {
    torch::NoGradGuard no_grad;
    vae->encoder->conv_in->weight.add_(0.01);
  }
  EXPECT_NE(vae_fingerprint(*vae), fingerprint);
  const auto other_vae = build_latent_cache(dir / "data", *vae, cache);
  EXPECT_NE(other_vae.key, more_images.key);
  EXPECT_EQ(other_vae.encoded, 14);

  // A damaged shard is encoded again; the intact ones are reused.
  const auto shard = other_vae.entry_dir / "shard-00001.safetensors";
  ASSERT_TRUE(fs::exists(shard));
  std::ofstream(shard, std::ios::trunc) << "damaged";
  const auto repaired = build_latent_cache(dir / "data", *vae, cache);
  EXPECT_GT(repaired.encoded, 0);
  EXPECT_GT(repaired.reused, 0);
  EXPECT_TRUE(torch::equal(repaired.mean, other_vae.mean));
}

// ---- level allocation ---------------------------------------------------------------------

TEST_F(TrainerTest, LevelAllocatorKeepsWhatUNetPrunerKeeps) {
  auto unet = models::load_unet(model() / "unet");
  for (uint64_t seed : {1u, 2u}) {
    auto scores = random_scores(*unet, seed);
    // Ties across layers and within a layer.
    scores.layers.begin()->second.narrow(0, 0, 3).fill_(0.5);
    std::next(scores.layers.begin())->second.narrow(0, 0, 2).fill_(0.5);
    UNetPruner pruner(*unet, scores);
    auto allocator = level_allocator(*unet);
    const auto& units = allocator.units();
    std::vector<at::Tensor> flat;
    for (const auto& ref : pruner.layers()) flat.push_back(scores.layers.at(ref.name));
    allocator.set_scores(torch::cat(flat));
    EXPECT_NEAR(allocator.cost_fraction().sum().item<double>(), 1.0, 1e-5);
    for (double level : {0.0, 0.05, 0.25, 0.5, 0.6, 0.75, 0.85, 0.95}) {
      SCOPED_TRACE("level " + std::to_string(level));
      EXPECT_EQ(allocator.kept_units(level), pruner.plan(level).kept_units);
      double tau = 0;
      const auto mask = allocator.keep_mask(level, &tau);
      int64_t kept = 0;
      for (size_t l = 0; l < units.size(); ++l) {
        kept += mask.narrow(0, allocator.offsets()[l], units[l]).sum().item<int64_t>();
      }
      int64_t expected = 0;
      for (auto k : pruner.plan(level).kept_units) expected += k;
      EXPECT_EQ(kept, expected);
      // tau separates the dropped units from the kept candidates.
      const auto all = torch::cat(flat);
      const auto candidate = allocator.protected_mask() == 0;
      const auto dropped = all.masked_select(mask == 0);
      const auto kept_candidates = all.masked_select((mask == 1).logical_and(candidate));
      if (dropped.numel() > 0) {
        EXPECT_LE(dropped.max().item<double>(), tau);
      }
      if (kept_candidates.numel() > 0) {
        EXPECT_GE(kept_candidates.min().item<double>(), tau);
      }
    }
  }
}

// ---- training -----------------------------------------------------------------------------

// Held-out noisy latents and the unpruned U-Net's predictions on them.
struct EvalSet {
  torch::Tensor sample, timestep, context;
};

EvalSet make_eval_set(const fs::path& model_dir, const fs::path& data, const fs::path& cache_dir) {
  torch::NoGradGuard no_grad;
  auto vae = models::load_vae(model_dir / "vae");
  LatentCacheOptions cache;
  cache.cache_dir = cache_dir;
  cache.resolution = kResolution;
  const auto latents = build_latent_cache(data, *vae, cache);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  // Each image at two random timesteps.
  auto x0 = latents.mean.to(torch::kFloat).repeat({2, 1, 1, 1}) * vae->config().scaling_factor;
  const auto folder = io::ModelFolder::open(model_dir);
  schedulers::BetaScheduleConfig betas;
  betas.read(schedulers::effective_config(folder.scheduler_config()), true);
  auto abar = torch::cumprod(1.0 - schedulers::make_betas(betas, "DDPMScheduler"), 0);
  auto t = torch::randint(0, abar.size(0), {x0.size(0)}, gen, torch::kLong);
  auto a = abar.index_select(0, t).to(torch::kFloat).view({-1, 1, 1, 1});
  auto noise = torch::randn(x0.sizes(), gen, torch::kFloat);
  auto tokenizer = clip::ClipTokenizer::from_folder(folder.tokenizer);
  auto text = clip::load_clip_text_model(folder.text_encoder);
  auto ids = torch::tensor(tokenizer.encode(""), torch::kInt64).unsqueeze(0);
  auto context = text->forward(ids).repeat({x0.size(0), 1, 1});
  return {a.sqrt() * x0 + (1 - a).sqrt() * noise, t, context};
}

// Mean over held-out samples of ||eps_pruned - eps_full|| / ||eps_full||, through UNetPruner.
double pruned_error(const fs::path& model_dir, const GateScores& scores, double level,
                    const EvalSet& eval) {
  torch::NoGradGuard no_grad;
  auto unet = models::load_unet(model_dir / "unet");
  UNetPruner pruner(*unet, scores);
  const auto full = unet->forward(eval.sample, eval.timestep, eval.context);
  pruner.apply(level);
  const auto pruned = unet->forward(eval.sample, eval.timestep, eval.context);
  return ((pruned - full).flatten(1).norm(2, 1) / full.flatten(1).norm(2, 1)).mean().item<double>();
}

TEST_F(TrainerTest, ShortRunLowersTheLossAndLearnedScoresBeatRandomOnes) {
  auto o = options("gates.safetensors");
  std::vector<std::string> lines;
  int64_t steps_seen = 0;
  TrainerCallbacks callbacks;
  callbacks.log = [&](const std::string& line) { lines.push_back(line); };
  callbacks.step = [&](const StepReport& r) {
    EXPECT_EQ(r.step, ++steps_seen);
    EXPECT_TRUE(std::isfinite(r.loss));
  };
  const auto result = train_gates(o, callbacks);
  ASSERT_TRUE(result.finished);
  EXPECT_EQ(steps_seen, o.steps);
  EXPECT_EQ(result.out, o.out);
  EXPECT_EQ(result.images, 40);
  EXPECT_EQ(result.val_images, 8);
  EXPECT_EQ(result.train_images, 32);
  EXPECT_FALSE(lines.empty());

  // The loss falls: held-out error at every level (fixed noise), and the training loss.
  ASSERT_GE(result.validations.size(), 2u);
  const auto& before = result.validations.front();
  const auto& after = result.validations.back();
  EXPECT_EQ(before.step, 0);
  EXPECT_EQ(after.step, o.steps);
  for (size_t i = 0; i < before.levels.size(); ++i) {
    std::printf("level %.2f: validation relative error %.4f -> %.4f\n", before.levels[i],
                before.relative_error[i], after.relative_error[i]);
  }
  EXPECT_LT(after.mean(), 0.9 * before.mean());
  double first = 0, last = 0;
  const int64_t window = 10;
  for (int64_t i = 0; i < window; ++i) {
    first += result.steps[i].distill;
    last += result.steps[result.steps.size() - 1 - i].distill;
  }
  std::printf("mean distillation loss: first %lld steps %.4f, last %lld steps %.4f\n",
              static_cast<long long>(window), first / window, static_cast<long long>(window),
              last / window);
  EXPECT_LT(last, first);

  // The gates file: learned scores that fit the model, with the run's metadata.
  const auto scores = load_gate_scores(o.out);
  EXPECT_EQ(scores.source, "learned");
  EXPECT_FALSE(scores.normalize_per_layer);
  auto unet = models::load_unet(model() / "unet");
  EXPECT_NO_THROW(check_scores_fit(*unet, scores, "learned"));
  EXPECT_EQ(scores.metadata.at("fingerprint"), gate_fingerprint(*unet));
  EXPECT_EQ(scores.metadata.at("images"), "40");
  EXPECT_EQ(scores.metadata.at("steps"), "40");
  EXPECT_EQ(scores.metadata.at("levels"), "0.25,0.5,0.75");
  EXPECT_EQ(scores.metadata.at("resolution"), "64");
  EXPECT_NE(scores.metadata.at("data").find("train"), std::string::npos);
  ASSERT_EQ(result.random_validation.levels, after.levels);
  EXPECT_LT(after.relative_error[1], result.random_validation.relative_error[1]);
  for (const char* key :
       {"final_train_loss", "initial_val_error", "final_val_error", "random_val_error"}) {
    EXPECT_TRUE(scores.metadata.count(key)) << key;
  }
  for (const auto& [name, t] : scores.layers) {
    EXPECT_TRUE(torch::equal(t, result.scores.layers.at(name))) << name;
  }

  // Measured through UNetPruner on images the run never saw.
  const auto eval = make_eval_set(model(), root() / "heldout", root() / "cache");
  for (double level : {0.25, 0.5, 0.75}) {
    const double learned = pruned_error(model(), scores, level, eval);
    const double magnitude = pruned_error(model(), magnitude_scores(*unet), level, eval);
    double random = 0;
    for (uint64_t seed : {1u, 2u, 3u})
      random += pruned_error(model(), random_scores(*unet, seed), level, eval) / 3;
    std::printf("level %.2f held-out relative error: learned %.4f, magnitude %.4f, random %.4f\n",
                level, learned, magnitude, random);
    if (level == 0.5) {
      EXPECT_LT(learned, random);
      EXPECT_LT(learned, magnitude);
    }
  }
}

TEST_F(TrainerTest, ResumedRunEqualsAnUninterruptedOne) {
  auto whole = options("whole.safetensors");
  whole.steps = 8;
  whole.checkpoint_every = 3;
  const auto uninterrupted = train_gates(whole);
  ASSERT_TRUE(uninterrupted.finished);

  // The same seed again: the same scores, from the latent cache.
  auto again = whole;
  again.out = root() / "out" / "again.safetensors";
  const auto repeated = train_gates(again);
  EXPECT_EQ(repeated.encoded, 0) << "the latent cache of the first run was not reused";
  EXPECT_EQ(repeated.cache_entry, uninterrupted.cache_entry);
  for (const auto& [name, t] : uninterrupted.scores.layers) {
    EXPECT_TRUE(torch::equal(t, repeated.scores.layers.at(name))) << name;
  }

  auto part = whole;
  part.out = root() / "out" / "part.safetensors";
  part.stop_after = 5;
  const auto stopped = train_gates(part);
  EXPECT_FALSE(stopped.finished);
  EXPECT_EQ(stopped.last_step, 5);
  EXPECT_FALSE(fs::exists(part.out));
  ASSERT_TRUE(fs::exists(stopped.checkpoint));

  // A checkpoint refuses a run with other settings.
  auto other_seed = part;
  other_seed.stop_after = 0;
  other_seed.resume = stopped.checkpoint;
  other_seed.seed = 6;
  try {
    train_gates(other_seed);
    FAIL() << "resumed with another seed";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("seed"), std::string::npos) << e.what();
  }

  auto resume = part;
  resume.stop_after = 0;
  resume.resume = stopped.checkpoint;
  const auto resumed = train_gates(resume);
  ASSERT_TRUE(resumed.finished);
  EXPECT_EQ(resumed.first_step, 5);
  EXPECT_EQ(resumed.steps.size(), 3u);
  for (const auto& [name, t] : uninterrupted.scores.layers) {
    EXPECT_TRUE(torch::equal(t, resumed.scores.layers.at(name))) << name;
  }
  for (size_t i = 0; i < resumed.steps.size(); ++i) {
    EXPECT_EQ(resumed.steps[i].loss, uninterrupted.steps[5 + i].loss) << "step " << 6 + i;
  }
  EXPECT_EQ(resumed.scores.metadata.at("initial_val_error"),
            uninterrupted.scores.metadata.at("initial_val_error"));
  EXPECT_EQ(resumed.scores.metadata.at("final_train_loss"),
            uninterrupted.scores.metadata.at("final_train_loss"));

  // Another seed: other scores.
  auto seed6 = whole;
  seed6.out = root() / "out" / "seed6.safetensors";
  seed6.seed = 6;
  const auto different = train_gates(seed6);
  bool any_difference = false;
  for (const auto& [name, t] : uninterrupted.scores.layers) {
    any_difference |= !torch::equal(t, different.scores.layers.at(name));
  }
  EXPECT_TRUE(any_difference);
}

TEST_F(TrainerTest, CaptionsGiveTheTextCondition) {
  const auto dir = ldcp::testing::temp_dir("captions");
  std::ofstream(dir / "captions.tsv")
      << "# path<TAB>caption\n00000/00001.png\ta red square\n00002\tblue\n";
  auto o = options("captions.safetensors");
  o.steps = 2;
  o.captions = dir / "captions.tsv";
  std::vector<std::string> lines;
  TrainerCallbacks callbacks;
  callbacks.log = [&](const std::string& line) { lines.push_back(line); };
  const auto result = train_gates(o, callbacks);
  EXPECT_TRUE(result.finished);
  bool reported = false;
  for (const auto& line : lines) reported |= line.find("captions: 2 of 40") != std::string::npos;
  EXPECT_TRUE(reported);
  std::ofstream(dir / "bad.tsv") << "no tab here\n";
  o.captions = dir / "bad.tsv";
  EXPECT_THROW(train_gates(o), DataError);
}

}  // namespace
}  // namespace ldcp::pruning
