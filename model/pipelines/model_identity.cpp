#include "model/pipelines/model_identity.h"

#include "model/io/weights.h"
#include "model/pipelines/generation_parameters.h"

namespace ldcp::pipelines {

ModelIdentity identify_model(const std::filesystem::path& model, bool prefer_fp16) {
  ModelIdentity id;
  auto path = std::filesystem::absolute(model).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    id.name = path.extension() == ".safetensors" ? path.stem().string() : path.filename().string();
    id.hashed_file = path;
  } else {
    id.name = path.filename().string();
    id.hashed_file = io::find_weight_file(path / "unet", prefer_fp16);
  }
  id.hash = short_file_hash(id.hashed_file);
  return id;
}

}  // namespace ldcp::pipelines
