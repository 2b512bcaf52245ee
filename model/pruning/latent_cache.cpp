#include "model/pruning/latent_cache.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/models/autoencoders/autoencoder_kl.h"
#include "model/pruning/image_dataset.h"

namespace ldcp::pruning {
namespace fs = std::filesystem;

namespace {

constexpr const char* kCacheVersion = "ldcp-latents-1";
// A manifest's shard size beyond this is not one this code wrote (a shard of 2^20 images at
// 64x64 latents is 32 GiB).
constexpr int64_t kMaxShardSize = int64_t{1} << 20;

// FNV-1a, 64 bit: short, stable across runs and platforms.
struct Fnv {
  uint64_t hash = 1469598103934665603ull;
  void bytes(const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) hash = (hash ^ p[i]) * 1099511628211ull;
  }
  void text(const std::string& s) {
    bytes(s.data(), s.size());
    bytes("\n", 1);
  }
  // Word-wise for bulk data (weights): eight times fewer multiplies than byte-wise.
  void words(const uint32_t* data, size_t count) {
    for (size_t i = 0; i < count; ++i) hash = (hash ^ data[i]) * 1099511628211ull;
  }
  std::string hex() const {
    char out[17];
    std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(hash));
    return out;
  }
};

std::string relative_name(const fs::path& data_dir, const fs::path& image) {
  return image.lexically_relative(data_dir).generic_string();
}

std::string shard_name(int64_t shard) {
  char name[48];
  std::snprintf(name, sizeof name, "shard-%05lld.safetensors", static_cast<long long>(shard));
  return name;
}

struct Shard {
  at::Tensor mean, std, valid;      // [count, C, h, w] x2, [count] uint8
  std::vector<std::string> errors;  // per image: "" or why it did not decode
};

// A shard file belongs to this entry, covers [first, first + count) and holds latents of
// `latent_shape` ([C, h, w]) each.
bool read_shard(const fs::path& path, const std::string& key, int64_t first, int64_t count,
                const std::vector<int64_t>& latent_shape, Shard& shard) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  try {
    io::Metadata metadata;
    auto tensors = io::load_safetensors(path, &metadata);
    if (metadata["key"] != key || metadata["first"] != std::to_string(first) ||
        metadata["count"] != std::to_string(count) || !tensors.count("mean") ||
        !tensors.count("std") || !tensors.count("valid") || tensors["valid"].numel() != count) {
      return false;
    }
    shard.mean = tensors["mean"];
    shard.std = tensors["std"];
    shard.valid = tensors["valid"];
    std::vector<int64_t> shape{count};
    shape.insert(shape.end(), latent_shape.begin(), latent_shape.end());
    if (shard.mean.sizes() != shape || shard.std.sizes() != shape ||
        shard.mean.scalar_type() != torch::kHalf || shard.std.scalar_type() != torch::kHalf ||
        shard.valid.scalar_type() != torch::kUInt8 || shard.valid.dim() != 1) {
      return false;  // not what encode_shard writes: the rows would not line up
    }
    // Bounded (nesting, integers; json_file.h) like every file read: a shard is untrusted too.
    shard.errors = io::json_to<std::vector<std::string>>(
        io::parse_json_text(metadata["errors"], path.string() + " metadata"), "errors");
    return static_cast<int64_t>(shard.errors.size()) == count;
  } catch (const std::exception&) {
    return false;  // a damaged shard is encoded again
  }
}

// Decodes and resizes images[first, first + count) on `threads` threads.
void decode_images(const std::vector<fs::path>& images, int64_t first, int64_t count,
                   int64_t resolution, int64_t threads, std::vector<at::Tensor>& pixels,
                   std::vector<std::string>& errors) {
  pixels.assign(count, at::Tensor());
  errors.assign(count, std::string());
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t i = next++; i < count; i = next++) {
      try {
        pixels[i] = center_crop_resize(read_image(images[first + i]), resolution);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    }
  };
  const int64_t n = std::max<int64_t>(1, std::min(threads, count));
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (auto& thread : pool) thread.join();
}

Shard encode_shard(models::AutoencoderKLImpl& vae, const std::vector<fs::path>& images,
                   int64_t first, int64_t count, const LatentCacheOptions& options,
                   const std::function<void(int64_t)>& on_batch) {
  const auto& weight = vae.encoder->conv_in->weight;
  const int64_t threads =
      options.decode_threads > 0
          ? options.decode_threads
          : std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  const int64_t side = options.resolution / vae.config().spatial_scale();
  const int64_t channels = vae.config().latent_channels;
  Shard shard;
  shard.mean = torch::zeros({count, channels, side, side}, torch::kHalf);
  shard.std = torch::zeros({count, channels, side, side}, torch::kHalf);
  shard.valid = torch::zeros({count}, torch::kUInt8);
  shard.errors.assign(count, std::string());
  torch::NoGradGuard no_grad;
  for (int64_t begin = 0; begin < count; begin += options.batch) {
    const int64_t n = std::min(options.batch, count - begin);
    std::vector<at::Tensor> pixels;
    std::vector<std::string> errors;
    decode_images(images, first + begin, n, options.resolution, threads, pixels, errors);
    std::vector<at::Tensor> batch;
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < n; ++i) {
      shard.errors[begin + i] = errors[i];
      if (pixels[i].defined()) {
        batch.push_back(pixels[i]);
        rows.push_back(begin + i);
      }
    }
    if (!batch.empty()) {
      auto posterior = vae.encode(torch::stack(batch).to(weight.device(), weight.scalar_type()));
      auto index = torch::tensor(rows, torch::kLong);
      shard.mean.index_copy_(0, index, posterior.mean.to(torch::kCPU, torch::kHalf));
      shard.std.index_copy_(0, index, posterior.std.to(torch::kCPU, torch::kHalf));
      shard.valid.index_fill_(0, index, 1);
    }
    on_batch(n);
  }
  return shard;
}

void write_manifest(const fs::path& entry, const fs::path& data_dir,
                    const std::vector<fs::path>& images, int64_t resolution,
                    const std::string& fingerprint, int64_t shard_size) {
  const auto path = entry / "manifest.json";
  nlohmann::json manifest = {
      {"version", kCacheVersion}, {"data_dir", fs::absolute(data_dir).string()},
      {"resolution", resolution}, {"vae_fingerprint", fingerprint},
      {"shard_size", shard_size}, {"image_count", images.size()}};
  auto& names = manifest["images"] = nlohmann::json::array();
  for (const auto& image : images) names.push_back(relative_name(data_dir, image));
  const auto partial = fs::path(path.string() + ".partial");
  {
    std::ofstream out(partial);
    out << manifest.dump(1) << "\n";
    if (!out) throw DataError("cannot write " + partial.string());
  }
  fs::rename(partial, path);
}

// The shard size an existing entry was written with. The manifest is read like a model's config
// (bounded nesting, typed keys: json_file.h); one that does not parse or holds a bad value stops
// the run with the file and key named, rather than being silently replaced.
int64_t manifest_shard_size(const fs::path& path, const fs::path& entry) {
  const auto fix = "; remove " + entry.string() + " to encode the images again";
  try {
    const auto manifest = io::read_json_file(path);
    if (!manifest.is_object()) throw io::ConfigError(path.string() + ": not a JSON object");
    const auto size = io::get_required<int64_t>(manifest, "shard_size");
    if (size <= 0 || size > kMaxShardSize) {
      throw io::ConfigError("config key \"shard_size\" = " + std::to_string(size) +
                            " is not in [1, " + std::to_string(kMaxShardSize) + "]");
    }
    return size;
  } catch (const io::ConfigError& e) {
    const std::string what = e.what();
    // read_json_file's own errors name the file already.
    throw DataError((what.rfind(path.string(), 0) == 0 ? what : path.string() + ": " + what) + fix);
  }
}

}  // namespace

std::string vae_fingerprint(models::AutoencoderKLImpl& vae) {
  torch::NoGradGuard no_grad;
  Fnv fnv;
  fnv.text(kCacheVersion);
  auto add = [&](const std::string& name, const at::Tensor& t) {
    fnv.text(name);
    for (auto d : t.sizes()) fnv.text(std::to_string(d));
    auto values = t.detach().to(torch::kCPU, torch::kFloat).contiguous();
    fnv.words(reinterpret_cast<const uint32_t*>(values.data_ptr<float>()),
              static_cast<size_t>(values.numel()));
  };
  for (const auto& p : vae.named_parameters()) add(p.key(), p.value());
  for (const auto& b : vae.named_buffers()) add(b.key(), b.value());
  return fnv.hex();
}

std::string latent_cache_key(const fs::path& data_dir, const std::vector<fs::path>& images,
                             int64_t resolution, const std::string& fingerprint) {
  Fnv fnv;
  fnv.text(kCacheVersion);
  fnv.text(std::to_string(resolution));
  fnv.text(fingerprint);
  for (const auto& image : images) {
    std::error_code ec;
    const auto size = fs::file_size(image, ec);
    fnv.text(relative_name(data_dir, image) + "\t" + (ec ? "?" : std::to_string(size)));
  }
  return fnv.hex();
}

LatentSet build_latent_cache(const fs::path& data_dir, models::AutoencoderKLImpl& vae,
                             const LatentCacheOptions& options, const EncodeProgress& progress) {
  const int64_t scale = vae.config().spatial_scale();
  if (options.resolution <= 0 || options.resolution % scale != 0) {
    throw std::invalid_argument(
        "resolution must be a positive multiple of the VAE's scale factor " +
        std::to_string(scale) + ", got " + std::to_string(options.resolution));
  }
  if (options.batch <= 0 || options.shard_size <= 0) {
    throw std::invalid_argument("latent cache batch and shard size must be positive");
  }
  if (options.cache_dir.empty()) throw std::invalid_argument("latent cache folder not set");
  const auto images = list_images(data_dir);
  const auto fingerprint = vae_fingerprint(vae);

  LatentSet set;
  set.data_dir = data_dir;
  set.key = latent_cache_key(data_dir, images, options.resolution, fingerprint);
  set.entry_dir = options.cache_dir / set.key;
  std::error_code ec;
  fs::create_directories(set.entry_dir, ec);
  if (ec) {
    throw DataError("cannot create latent cache folder " + set.entry_dir.string() + ": " +
                    ec.message());
  }
  // The manifest fixes the entry's shard size, so a later run with other options reuses it.
  int64_t shard_size = options.shard_size;
  const auto manifest_path = set.entry_dir / "manifest.json";
  if (fs::exists(manifest_path, ec)) shard_size = manifest_shard_size(manifest_path, set.entry_dir);
  write_manifest(set.entry_dir, data_dir, images, options.resolution, fingerprint, shard_size);

  const auto total = static_cast<int64_t>(images.size());
  const int64_t side = options.resolution / scale;
  const std::vector<int64_t> latent_shape{vae.config().latent_channels, side, side};
  int64_t done = 0;
  auto advance = [&](int64_t n) {
    done += n;
    if (progress) progress(done, total);
  };
  std::vector<at::Tensor> means, stds;
  for (int64_t first = 0, index = 0; first < total; first += shard_size, ++index) {
    const int64_t count = std::min(shard_size, total - first);
    const auto path = set.entry_dir / shard_name(index);
    Shard shard;
    if (read_shard(path, set.key, first, count, latent_shape, shard)) {
      set.reused += count;
      advance(count);
    } else {
      shard = encode_shard(vae, images, first, count, options, advance);
      set.encoded += count;
      io::Metadata metadata = {{"key", set.key},
                               {"first", std::to_string(first)},
                               {"count", std::to_string(count)},
                               {"errors", nlohmann::json(shard.errors).dump()}};
      io::save_safetensors(path, {{"mean", shard.mean}, {"std", shard.std}, {"valid", shard.valid}},
                           metadata);
    }
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < count; ++i) {
      const auto name = relative_name(data_dir, images[first + i]);
      if (shard.valid[i].item<uint8_t>() != 0) {
        rows.push_back(i);
        set.images.push_back(name);
      } else {
        set.skipped.push_back(name + ": " + shard.errors[i]);
      }
    }
    auto index_tensor = torch::tensor(rows, torch::kLong);
    means.push_back(shard.mean.index_select(0, index_tensor));
    stds.push_back(shard.std.index_select(0, index_tensor));
  }
  if (set.images.empty()) {
    throw DataError("no image of data folder " + data_dir.string() + " could be decoded (" +
                    set.skipped.front() + ")");
  }
  set.mean = torch::cat(means);
  set.std = torch::cat(stds);
  return set;
}

}  // namespace ldcp::pruning
