#!/usr/bin/env bash
# The main job: set up (idempotent), build, start `ldcp-server` on a model and generate a PNG
# with `ldcp-client` over gRPC. Without --model it uses the trained demo model committed in
# data/demo-model (coloured shapes, 64x64: the prompt decides colour, shape and background).
#   scripts/demo.sh                                   # demo model -> out/demo.png
#   scripts/demo.sh --prompt "a yellow triangle on a purple background"
#   scripts/demo.sh --model /path/to/stable-diffusion-v1-5 --prompt "a red fox" --steps 30
# Arguments are `ldcp generate`'s: --model, --device, --dtype and --fp16-weights go to the
# server, the rest (--prompt, --steps, --seed, --out, ...) to the client; defaults fill in what
# is not given. On the CPU the server's memory budget is $LDCP_MEMORY_BUDGET (default 8GiB).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh --target ldcp ldcp-server ldcp-client
BUILD="${LDCP_BUILD_DIR:-build}"
DEMO_MODEL=data/demo-model

args=("$@")
has() { local flag="$1"; for a in "${args[@]}"; do [ "$a" = "$flag" ] && return 0; done; return 1; }
server_extra=()
if ! has --model; then
  args+=(--model "$DEMO_MODEL")
  has --steps || args+=(--steps 20)
  has --sampler || args+=(--sampler dpmpp_2m)
  has --prompt || args+=(--prompt "a red circle on a blue background")
  # 64x64 images: decoding in 48-pixel tiles keeps the decoder's peak below the U-Net's, so the
  # pruning level (AUTO) is what lowers a request's peak memory.
  server_extra+=(--vae-tile-size 48)
  echo "demo: the demo model knows prompts of the form \"a COLOUR SHAPE on a COLOUR background\""
  echo "demo:   COLOUR: $(tr '\n' ' ' <"$DEMO_MODEL/colours.txt")"
  echo "demo:   SHAPE:  $(tr '\n' ' ' <"$DEMO_MODEL/shapes.txt")"
fi
has --prompt || args+=(--prompt "a watercolor painting of a lighthouse at dawn")
has --out || { mkdir -p out; args+=(--out out/demo.png); }
has --seed || args+=(--seed 42)

server_args=() client_args=() device=cpu
set -- "${args[@]}"
while (($#)); do
  case "$1" in
    --model | --dtype) server_args+=("$1" "$2"); shift 2 ;;
    --device) server_args+=("$1" "$2"); device="$2"; shift 2 ;;
    --fp16-weights) server_args+=("$1"); shift ;;
    *) client_args+=("$1"); shift ;;
  esac
done
[[ "$device" == cuda* ]] || export LDCP_MEMORY_BUDGET="${LDCP_MEMORY_BUDGET:-8GiB}"

mkdir -p out
log=out/demo-server.log
"$BUILD/server/ldcp-server" "${server_args[@]}" "${server_extra[@]}" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --calibrate-steps 1 >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
echo "demo: starting ldcp-server (log: $log)"
port=""
while [ -z "$port" ]; do
  if ! kill -0 $server 2>/dev/null; then cat "$log" >&2; echo "demo: ldcp-server failed" >&2; exit 1; fi
  port=$(sed -n 's/.*serving [^ ]* on 127\.0\.0\.1:0 (port \([0-9]*\)).*/\1/p' "$log" | head -1)
  [ -n "$port" ] || sleep 0.5
done
metrics=$(sed -n 's/.*metrics on .* (port \([0-9]*\)).*/\1/p' "$log" | head -1)
echo "demo: ldcp-server on 127.0.0.1:$port, metrics on http://127.0.0.1:$metrics/metrics"
"$BUILD/client/ldcp-client" generate --target "127.0.0.1:$port" "${client_args[@]}"
