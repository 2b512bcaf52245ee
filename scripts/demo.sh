#!/usr/bin/env bash
# The main job: set up (idempotent), build `ldcp`, make the tiny demo model if no model folder
# is given, and generate a PNG.
#   scripts/demo.sh                                   # demo model -> out/demo.png
#   scripts/demo.sh --model /path/to/stable-diffusion-v1-5 --prompt "a red fox" --steps 30
# Arguments are passed to `ldcp generate`; defaults fill in what is not given.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh --target ldcp
LDCP="${LDCP_BUILD_DIR:-build}/tools/ldcp"

args=("$@")
has() { local flag="$1"; for a in "${args[@]}"; do [ "$a" = "$flag" ] && return 0; done; return 1; }
if ! has --model; then
  if [ ! -f demo/tiny/model_index.json ]; then "$LDCP" init-demo-model demo/tiny --config tiny; fi
  args+=(--model demo/tiny)
  has --steps || args+=(--steps 10)
fi
has --prompt || args+=(--prompt "a watercolor painting of a lighthouse at dawn")
has --out || { mkdir -p out; args+=(--out out/demo.png); }
has --seed || args+=(--seed 42)
exec "$LDCP" generate "${args[@]}"
