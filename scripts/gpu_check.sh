#!/usr/bin/env bash
# One prepared check of the CUDA path, for a machine with an NVIDIA GPU: set-up and build (as
# scripts/test.sh does; the .venv torch wheel is a CUDA build), then
#   parity    the pipeline parity suites on the device, fp32 then fp16 (tests/pipeline:
#             LDCP_TEST_DEVICE / LDCP_TEST_DTYPE; the bf16 suites in the fp32 pass)
#   bench     ldcp bench at levels 0, 0.25, 0.5, 0.75 (step time, FLOPs, allocator peaks)
#   generate  ldcp generate, 50 PNDM steps, timed
#   compare   bench/compare_diffusers.py on the device (levels 0 and 0.5)
#   server    ldcp-server with the budget it takes from the device, a few ldcp-client requests,
#             /metrics read
# Every stage runs under its own time limit and the next one runs whatever happened; the end is
# one table (stdout and gpu_check.md) and gpu_check.json, in --out (default: $OUT when set, else
# build/gpu-check), with the logs as logs.tar.gz.
#
#   scripts/gpu_check.sh                      # CUDA: sd15 demo model, 512x512, fp16
#   scripts/gpu_check.sh --model ~/sd15       # real weights
#   scripts/gpu_check.sh --device cpu         # CPU fallback: the same stages at a small size
#   scripts/gpu_check.sh --only setup,build   # then: --skip setup,build (two shorter runs)
#
# Options: --device cuda|cuda:N|cpu, --model DIR (default: ldcp init-demo-model --config sd15 on
# CUDA, tiny on the CPU, written once under the work folder), --dtype fp16|bf16|fp32 (default
# fp16 on CUDA, fp32 on the CPU), --size N, --steps N (generate/compare; default 50 on CUDA, 4
# on the CPU), --threads N, --out DIR, --work DIR (logs, demo model; default build/gpu-check),
# --only/--skip STAGE,..., --timeout STAGE=SECONDS (repeatable). LDCP_BUILD_LOCK=FILE builds
# under flock FILE (a build tree shared with other builds).
set -uo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
STAGES=(setup build model parity bench generate compare server)

# --- internal: one stage, run by run_stage in a child of this script (under `timeout`) ---------
if [ "${1:-}" = "__stage" ]; then
  stage="$2"
  cd "$REPO" || exit 1
  LDCP="$BUILD_DIR/tools/ldcp"
  case "$stage" in
    setup)
      # A CUDA torch that is already installed (e.g. a GPU image's) serves as .venv when there is
      # none: set-up can then go on without downloading one.
      if [ ! -x .venv/bin/python ] && python3 -c 'import torch' 2>/dev/null; then
        echo "gpu_check: no .venv; making one over python3's packages (--system-site-packages)"
        python3 -m venv --system-site-packages .venv || exit 1
      fi
      scripts/setup.sh --test
      ;;
    build)
      targets=(ldcp ldcp-server ldcp-client test_pipeline_parity test_pipeline_parity_bf16)
      [ "$DEVICE" = cpu ] || targets+=(test_pipeline_parity_sd15 test_pipeline_parity_sd15_bf16)
      lock=()
      [ -n "${LDCP_BUILD_LOCK:-}" ] && lock=(flock "$LDCP_BUILD_LOCK")
      LDCP_BUILD_DIR="$BUILD_DIR" LDCP_JOBS="$JOBS" "${lock[@]}" scripts/build.sh \
        --target "${targets[@]}"
      ;;
    model)
      if [ -f "$MODEL/model_index.json" ]; then
        echo "model: $MODEL (already there)"
      else
        "$LDCP" init-demo-model "$MODEL" --config "$DEMO_CONFIG"
      fi
      ;;
    parity)
      # fp32 first (with the reference scripts, CTest fixtures), then fp16 against the same
      # references (-FA: the fixtures are not run again).
      cd "$BUILD_DIR" || exit 1
      re_fp32='^test_pipeline_parity(_bf16)?$' re_fp16='^test_pipeline_parity$'
      if [ "$DEVICE" != cpu ]; then
        re_fp32='^test_pipeline_parity(_sd15)?(_bf16)?$' re_fp16='^test_pipeline_parity(_sd15)?$'
      fi
      rc=0
      echo "== parity fp32 on $DEVICE"
      LDCP_TEST_DEVICE="$DEVICE" LDCP_TEST_DTYPE=fp32 ctest -R "$re_fp32" -V \
        --parallel "$CTEST_JOBS" || rc=1
      if [ "$DEVICE" = cpu ]; then
        # fp16 is the CUDA path's dtype; on a CPU it is emulated and one case is known to be
        # off (README, Tests): the fallback leaves it out.
        echo "== parity fp16: skipped on the CPU (fp16 is for CUDA)"
      else
        echo "== parity fp16 on $DEVICE"
        LDCP_TEST_DEVICE="$DEVICE" LDCP_TEST_DTYPE=fp16 ctest -R "$re_fp16" -FA '.*' -V || rc=1
      fi
      exit $rc
      ;;
    bench)
      "$LDCP" bench --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --levels 0,0.25,0.5,0.75 \
        --width "$SIZE" --height "$SIZE" --steps "$BENCH_STEPS" --repeats "$BENCH_REPEATS" \
        --threads "$THREADS" --json "$WORK/bench.json"
      ;;
    generate)
      start=$(date +%s.%N)
      "$LDCP" generate --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --sampler pndm \
        --steps "$STEPS" --width "$SIZE" --height "$SIZE" --seed 0 \
        --prompt "a photograph of an astronaut riding a horse" --out "$WORK/generate.png" || exit
      echo "process wall $(python3 -c "import sys; print(f'{$(date +%s.%N) - $start:.2f}')") s"
      ;;
    compare)
      "$LDCP_PY" bench/compare_diffusers.py --model "$MODEL" --ldcp "$LDCP" --device "$DEVICE" \
        --dtype "$DTYPE" --width "$SIZE" --height "$SIZE" --steps "$STEPS" --levels 0,0.5 \
        --runs "$COMPARE_RUNS" --warmup "$COMPARE_WARMUP" --threads "$THREADS" \
        --out "$WORK/compare" --json "$WORK/compare.json"
      ;;
    server)
      read -r port mport < <(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
      client="$BUILD_DIR/client/ldcp-client"
      # No --memory-budget: the server takes it from the device (CUDA: its memory; CPU: the
      # cgroup's limit or the machine's), less the default headroom.
      "$BUILD_DIR/server/ldcp-server" --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" \
        --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --max-batch 2 \
        --calibrate-sizes "${SIZE}x${SIZE}" --default-size "$SIZE" \
        --default-steps "$SERVER_STEPS" >"$WORK/server-process.log" 2>&1 &
      server=$!
      trap 'kill -TERM $server 2>/dev/null; sleep 2; kill -KILL $server 2>/dev/null' EXIT
      up=0
      for _ in $(seq 1 "$SERVER_START_S"); do
        kill -0 $server 2>/dev/null || break
        if "$client" health --target "127.0.0.1:$port" --timeout 2 >/dev/null 2>&1; then
          up=1
          break
        fi
        sleep 1
      done
      cat "$WORK/server-process.log"
      if ((!up)); then
        echo "server: not serving"
        exit 1
      fi
      rc=0
      prompt="a photograph of an astronaut riding a horse"
      for req in "off" "fixed --level 0.5" "auto"; do
        # shellcheck disable=SC2086
        out=$WORK/server-$(echo "$req" | tr -c 'a-z0-9\n' _).png
        echo "== request: --pruning $req"
        start=$(date +%s.%N)
        # shellcheck disable=SC2086
        "$client" generate --target "127.0.0.1:$port" --prompt "$prompt" --seed 1 --quiet \
          --pruning $req --out "$out" || rc=1
        echo "request wall $(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')") s"
      done
      python3 -c "import urllib.request, sys
sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$mport/metrics', timeout=10).read().decode())" \
        >"$WORK/metrics.txt" || rc=1
      echo "metrics: $(wc -l <"$WORK/metrics.txt") lines"
      kill -TERM $server
      wait $server
      echo "server exit status $?"
      trap - EXIT
      tail -n 3 "$WORK/server-process.log"
      exit $rc
      ;;
    *)
      echo "unknown stage $stage"
      exit 2
      ;;
  esac
  exit
fi

# --- options ------------------------------------------------------------------------------------
usage() { sed -n '2,29p' "$SELF" | sed 's/^# \{0,1\}//'; }
DEVICE=cuda MODEL="" DTYPE="" SIZE="" STEPS="" THREADS="" OUT_DIR="${OUT:-}" WORK=""
ONLY="" SKIP=""
declare -A TIMEOUT=()
while (($#)); do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --dtype) DTYPE="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --skip) SKIP="$2"; shift 2 ;;
    --timeout) TIMEOUT[${2%%=*}]="${2#*=}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (--help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$DEVICE" =~ ^(cpu|cuda(:[0-9]+)?)$ ]]; then
  echo "gpu_check: --device $DEVICE: expected cuda, cuda:N or cpu" >&2
  exit 2
fi
for s in ${ONLY//,/ } ${SKIP//,/ } "${!TIMEOUT[@]}"; do
  [[ " ${STAGES[*]} " == *" $s "* ]] || { echo "gpu_check: no stage '$s' (${STAGES[*]})" >&2; exit 2; }
done
export DEVICE
export BUILD_DIR="$REPO/${LDCP_BUILD_DIR:-build}"
export WORK="${WORK:-$BUILD_DIR/gpu-check}"
export JOBS="${LDCP_JOBS:-$(nproc)}"
if [ "$DEVICE" = cpu ]; then
  # The CPU fallback: the same stages, small and short.
  export DTYPE="${DTYPE:-fp32}" SIZE="${SIZE:-128}" STEPS="${STEPS:-4}" DEMO_CONFIG=tiny
  export BENCH_STEPS=2 BENCH_REPEATS=2 COMPARE_RUNS=1 COMPARE_WARMUP=0 SERVER_STEPS=4
  export SERVER_START_S=240 CTEST_JOBS=1
  declare -A DEFAULT_TIMEOUT=([setup]=900 [build]=3600 [model]=120 [parity]=900 [bench]=300
                              [generate]=120 [compare]=300 [server]=400)
else
  export DTYPE="${DTYPE:-fp16}" SIZE="${SIZE:-512}" STEPS="${STEPS:-50}" DEMO_CONFIG=sd15
  export BENCH_STEPS=20 BENCH_REPEATS=5 COMPARE_RUNS=1 COMPARE_WARMUP=1 SERVER_STEPS=20
  export SERVER_START_S=240 CTEST_JOBS=4
  declare -A DEFAULT_TIMEOUT=([setup]=600 [build]=1500 [model]=300 [parity]=900 [bench]=300
                              [generate]=240 [compare]=600 [server]=400)
fi
export THREADS="${THREADS:-$(nproc)}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
export MODEL="${MODEL:-$WORK/models/$DEMO_CONFIG-demo}"
MODEL_GIVEN=0
[ "$MODEL" = "$WORK/models/$DEMO_CONFIG-demo" ] || MODEL_GIVEN=1
export LDCP_PY="$REPO/.venv/bin/python"
OUT_DIR="${OUT_DIR:-$WORK}"
LOGS="$WORK/logs"
mkdir -p "$WORK" "$LOGS" "$OUT_DIR" || exit 1
rm -f "$LOGS"/*.status

selected() {
  local s="$1"
  if [ -n "$ONLY" ]; then [[ ",$ONLY," == *",$s,"* ]] || return 1; fi
  [[ ",$SKIP," != *",$s,"* ]]
}

# run_stage NAME: the stage under its time limit; status, seconds and exit code to NAME.status.
run_stage() {
  local s="$1" limit="${TIMEOUT[$1]:-${DEFAULT_TIMEOUT[$1]}}" start rc status
  if ! selected "$s"; then
    echo "skipped 0 0" >"$LOGS/$s.status"
    return
  fi
  if [ "$s" = model ] && ((MODEL_GIVEN)); then
    if [ -f "$MODEL/model_index.json" ]; then
      echo "given 0 0" >"$LOGS/$s.status"
    else
      echo "--model $MODEL: no model_index.json there" >"$LOGS/$s.log"
      echo "failed 0 2" >"$LOGS/$s.status"
    fi
    return
  fi
  printf 'gpu_check: %-9s (limit %ss) ... ' "$s" "$limit"
  start=$(date +%s.%N)
  timeout -k 20 "$limit" "$SELF" __stage "$s" >"$LOGS/$s.log" 2>&1 </dev/null
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  local seconds
  seconds=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
  echo "$status $seconds $rc" >"$LOGS/$s.status"
  echo "$status (${seconds}s)"
  [ "$status" = ok ] || tail -n 5 "$LOGS/$s.log" | sed 's/^/    /'
}

echo "gpu_check: device $DEVICE, dtype $DTYPE, ${SIZE}x${SIZE}, $STEPS steps, model $MODEL"
echo "gpu_check: work folder $WORK, results in $OUT_DIR"
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  uname -a
  nproc
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
  git -C "$REPO" rev-parse HEAD 2>/dev/null
  { [ -x "$LDCP_PY" ] && "$LDCP_PY" -c 'import torch; print("torch", torch.__version__,
    "cuda", torch.version.cuda, "available", torch.cuda.is_available())'; } 2>&1 | tail -n 1
} >"$LOGS/machine.txt" 2>&1
for s in "${STAGES[@]}"; do run_stage "$s"; done

# --- summary: one table and a JSON, from the logs and the tools' JSON files --------------------
export LOGS OUT_DIR
python3 - <<'PY'
import json, os, re, statistics
from pathlib import Path

logs, work, out = Path(os.environ["LOGS"]), Path(os.environ["WORK"]), Path(os.environ["OUT_DIR"])
env = {k: os.environ[k] for k in ("DEVICE", "DTYPE", "SIZE", "STEPS", "MODEL", "THREADS")}
STAGES = ["setup", "build", "model", "parity", "bench", "generate", "compare", "server"]
MiB = 2 ** 20


def text(name):
    p = logs / f"{name}.log"
    return p.read_text(errors="replace") if p.exists() else ""


def load_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


report = {"settings": env, "machine": (logs / "machine.txt").read_text(errors="replace")
          .splitlines() if (logs / "machine.txt").exists() else [], "stages": {}}
rows = []  # (stage, status, seconds, figures)
for s in STAGES:
    status, seconds, code = ((logs / f"{s}.status").read_text().split()
                             if (logs / f"{s}.status").exists() else ("not run", "0", "0"))
    entry = {"status": status, "seconds": float(seconds), "exit_code": int(code), "figures": {}}
    report["stages"][s] = entry
    fig, log = entry["figures"], text(s)
    shown = []
    if s == "parity":
        passes = re.split(r"^== parity (\w+) on .*$", log, flags=re.M)
        for dtype, body in zip(passes[1::2], passes[2::2]):
            tests = re.findall(r"Test\s+#\d+: (\S+) \.+\s*(\*{0,3}\w+)[^\n]*?([\d.]+) sec", body)
            worst = re.findall(r"^(?:\d+: )?(\S+): worst case max \|diff\| ([\d.]+)/255, worst mean "
                               r"([\d.]+)/255", body, flags=re.M)
            fig[dtype] = {"tests": {n: r.strip("*") for n, r, _ in tests},
                          "worst": {p: {"max_255": float(a), "mean_255": float(b)}
                                    for p, a, b in worst}}
            gt = [n for n, _, _ in tests if n.startswith("test_")]
            ok = [n for n, r, _ in tests if n.startswith("test_") and r.strip("*") == "Passed"]
            w = "; ".join(f"{p} {v['max_255']:.2f}/{v['mean_255']:.3f}"
                          for p, v in fig[dtype]["worst"].items())
            shown.append((dtype, f"{len(ok)}/{len(gt)} suites passed" +
                          (f"; worst max/mean |diff| x255: {w}" if w else "")))
    elif s == "bench":
        data = load_json(work / "bench.json") if status == "ok" else None
        if data:
            for r in data["rows"]:
                key = "no gates" if r["level"] is None else f"L{r['level']:g}"
                fig[key] = {"step_ms_median": r["step_seconds_median"] * 1e3,
                            "unet_gflops_per_step": r["unet_flops_per_step"] / 1e9,
                            "step_peak_mib": r["step_peak_bytes"] / MiB,
                            "generation_peak_mib": r.get("generation_peak_bytes", 0) / MiB or None}
                gen = fig[key]["generation_peak_mib"]
                shown.append((key, f"{fig[key]['step_ms_median']:.1f} ms/step, "
                                   f"{fig[key]['unet_gflops_per_step']:.4g} U-Net GFLOPs/step, "
                                   f"step peak {fig[key]['step_peak_mib']:.0f} MiB" +
                                   (f", generation peak {gen:.0f} MiB" if gen else "")))
            fig["resident_weights_mib"] = data["resident_weights_bytes"] / MiB
    elif s == "generate":
        m = re.search(r"peak memory ([\d.]+) MiB \(([\d.]+) MiB above weights\), text ([\d.]+)s, "
                      r"denoise ([\d.]+)s, decode ([\d.]+)s, total ([\d.]+)s", log)
        w = re.search(r"process wall ([\d.]+) s", log)
        if m:
            fig.update(peak_mib=float(m[1]), text_s=float(m[3]), denoise_s=float(m[4]),
                       decode_s=float(m[5]), total_s=float(m[6]),
                       process_wall_s=float(w[1]) if w else None)
            shown.append(("", f"{env['STEPS']} PNDM steps: generation {fig['total_s']:.2f} s "
                              f"(denoise {fig['denoise_s']:.2f} s), process {fig['process_wall_s']}"
                              f" s, peak {fig['peak_mib']:.0f} MiB"))
    elif s == "compare":
        data = load_json(work / "compare.json") if status == "ok" else None
        if data:
            med = data["medians"]
            fig.update(medians=med, psnr_vs_diffusers_db=data["psnr_vs_diffusers_db"],
                       diffusers_attention=data["settings"].get("diffusers_attention"))
            d = med["diffusers"]["generate_s"]
            for name, m in med.items():
                extra = (f", CUDA peak {m['cuda_peak_bytes'] / MiB:.0f} MiB"
                         if m.get("cuda_peak_bytes") else "")
                psnr = data["psnr_vs_diffusers_db"].get(name, "")
                psnr = f", PSNR vs diffusers {psnr:.1f} dB" if isinstance(psnr, float) else ""
                shown.append((name, f"generation {m['generate_s']:.2f} s "
                                    f"({m['generate_s'] / d:.2f}x), process {m['wall_s']:.1f} s, "
                                    f"max RSS {m['max_rss_bytes'] / MiB:.0f} MiB{extra}{psnr}"))
    elif s == "server":
        proc = (work / "server-process.log").read_text(errors="replace") \
            if (work / "server-process.log").exists() else ""
        b = re.search(r"memory budget (\d+) bytes, (\d+) in use", proc)
        src = re.search(r"memory budget from the ([^:]+):", proc)
        walls = [float(x) for x in re.findall(r"request wall ([\d.]+) s", log)]
        metrics = (work / "metrics.txt").read_text() if (work / "metrics.txt").exists() else ""
        def metric(name):
            vals = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", metrics, flags=re.M)
            return sum(float(v) for v in vals) if vals else None
        fig.update(budget_bytes=int(b[1]) if b else None, in_use_bytes=int(b[2]) if b else None,
                   budget_source=src[1] if src else ("the device" if b else None),
                   request_wall_s=walls, requests_total=metric("ldcp_requests_total"),
                   images_total=metric("ldcp_images_generated_total"),
                   dtype_info=re.findall(r"^ldcp_model_dtype_info\{([^}]*)\}", metrics, re.M))
        if b:
            shown.append(("", f"budget {int(b[1]) / 2 ** 30:.1f} GiB from "
                              f"{fig['budget_source']}, {int(b[2]) / MiB:.0f} MiB in use loaded; "
                              f"{', '.join(fig['dtype_info'])}"))
        if walls:
            shown.append(("requests", "off, fixed 0.5, auto: " +
                          ", ".join(f"{w:.2f}" for w in walls) + " s"))
        if fig["requests_total"] is not None:
            shown.append(("/metrics", f"{fig['requests_total']:g} requests, "
                                      f"{fig['images_total']:g} images"))
    elif s == "model":
        shown.append(("", env["MODEL"]))
    if status not in ("ok", "skipped", "given"):
        tail = [l for l in log.splitlines() if l.strip()][-1:] or ["(no output)"]
        shown.insert(0, ("", "last line: " + tail[0][:150]))
    first = shown[0][1] if shown and not shown[0][0] else ""
    rows.append((s, status, f"{float(seconds):.1f}", first))
    for label, figures in shown[1:] if first else shown:
        rows.append((f"  {s} {label}", "", "", figures))

header = (f"gpu_check: {env['DEVICE']}, {env['DTYPE']}, {env['SIZE']}x{env['SIZE']}, "
          f"{env['STEPS']} steps, {env['THREADS']} threads, model {env['MODEL']}")
widths = [max(len(r[i]) for r in rows + [("stage", "status", "s", "figures")]) for i in range(4)]
line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
table = "\n".join([header, "", line(("stage", "status", "s", "figures")),
                   "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])
print("\n" + table)
report["table"] = table
(out / "gpu_check.md").write_text(table + "\n")
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
PY
extra=()
for f in bench.json compare.json metrics.txt server-process.log; do
  [ -f "$WORK/$f" ] && extra+=("$f")
done
tar -czf "$OUT_DIR/logs.tar.gz" -C "$WORK" logs "${extra[@]}"
echo "gpu_check: wrote $OUT_DIR/gpu_check.md, gpu_check.json, logs.tar.gz"
failed=0
for s in "${STAGES[@]}"; do
  read -r st _ <"$LOGS/$s.status"
  case $st in ok|skipped|given) ;; *) failed=1 ;; esac
done
exit $failed
