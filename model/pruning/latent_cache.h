#pragma once
// The VAE latents of a training image folder, encoded once and kept on disk so that later runs
// (other steps, levels, seeds, a resumed run) skip the VAE.
//
// An entry lives in CACHE_DIR/<key>/, the key a hash of the image list (paths relative to the
// data folder and file sizes), the resolution and the VAE's fingerprint (config and weights):
// any change to one of them makes a new entry. Images are encoded in shards of `shard_size`,
// each written when done (safetensors: the posterior's mean and std, float16, and which images
// decoded), so an interrupted encoding resumes at the first missing shard.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace ldcp::models {
class AutoencoderKLImpl;
}

namespace ldcp::pruning {

struct LatentCacheOptions {
  std::filesystem::path cache_dir;  // the cache root (created when missing)
  int64_t resolution = 512;         // pixels; a multiple of the VAE's scale factor
  int64_t batch = 8;                // images per VAE call
  int64_t shard_size = 256;         // images per shard file
  int64_t decode_threads = 0;       // image decoding threads; 0: hardware concurrency
};

struct LatentSet {
  std::filesystem::path data_dir;
  std::filesystem::path entry_dir;  // CACHE_DIR/<key>
  std::string key;
  std::vector<std::string> images;   // relative paths of the usable images, in list order
  std::vector<std::string> skipped;  // relative paths that did not decode (with the reason)
  at::Tensor mean, std;              // [N, latent_channels, h, w] float16, CPU; unscaled
  int64_t encoded = 0;               // images this call ran through the VAE
  int64_t reused = 0;                // images this call read from the cache

  int64_t size() const { return static_cast<int64_t>(images.size()); }
};

// Progress while encoding: images done (encoded or read back) of `total`.
using EncodeProgress = std::function<void(int64_t done, int64_t total)>;

// A hash of the VAE's config and weights (16 hex digits).
std::string vae_fingerprint(models::AutoencoderKLImpl& vae);

// The cache key of `images` (absolute paths under `data_dir`) at `resolution` for a VAE.
std::string latent_cache_key(const std::filesystem::path& data_dir,
                             const std::vector<std::filesystem::path>& images, int64_t resolution,
                             const std::string& vae_fingerprint);

// Lists the images of `data_dir` (list_images), then reads their latents from the cache entry
// or encodes the missing shards with `vae` (on its device, in its dtype; images that decode to
// nothing usable are zero rows, dropped from the result). Throws DataError for an empty or
// unreadable folder and when no image decodes; images that do not decode are skipped and listed in
// `skipped`.
LatentSet build_latent_cache(const std::filesystem::path& data_dir, models::AutoencoderKLImpl& vae,
                             const LatentCacheOptions& options,
                             const EncodeProgress& progress = {});

}  // namespace ldcp::pruning
