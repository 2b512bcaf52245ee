"""Service benchmark of ldcp-server: AUTO against OFF and FIXED 0.35 / 0.7 under one memory
budget, closed-loop and open-loop (Poisson arrivals) load.

A probe server measures one unpruned image; the budget is the idle baseline plus 1.2 x that
cost (room for about one unpruned image, with the cost model's 5% safety margin and the
run-to-run noise of the peak). One server with that budget then serves every phase
(the pruning mode is per request): closed loop with --clients clients per mode, OFF first, whose
images/s sets the open-loop rates (0.9x: a rate OFF can just sustain; 2x: one it cannot),
unless --rates gives them. Prints images/s, p50/p99 latency, queue wait, the level distribution,
the maximum measured peak against the budget and the overruns per phase
(ldcp_budget_overruns_total), then the targets; writes JSON and a plot (throughput and p99
against the arrival rate, per mode).

  .venv/bin/python bench/service_bench.py                 # the sd15 demo model, 256x256
  .venv/bin/python bench/service_bench.py --model DIR [--size 256] [--tile 128] [--steps 4]
      [--duration 90] [--clients 4] [--rates 0.05,0.1] [--out bench/results/service_bench]
  .venv/bin/python bench/service_bench.py --quick         # the tiny demo model, seconds per phase

The sd15 demo model (random weights, the exact SD1.5 architecture, ~4 GB) is made once with
`ldcp init-demo-model --config sd15` under $LDCP_CACHE_DIR (default ~/.cache/ldcp).
Environment: LDCP_SERVER / LDCP_TOOL (tests/server/ldcp_testlib.py) name the binaries."""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "server"))
import grpc  # noqa: E402

import ldcp_testlib as lib  # noqa: E402

pb, pb_grpc = lib.load_stubs()
MODES = ["OFF", "AUTO", "FIXED_0.35", "FIXED_0.70"]


def pruning(mode):
    if mode == "AUTO":
        return pb.Pruning(mode=pb.PRUNING_MODE_AUTO)
    if mode == "OFF":
        return pb.Pruning(mode=pb.PRUNING_MODE_OFF)
    return pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=float(mode.split("_")[1]))


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q / 100 * (len(v) - 1)))))]


def sd15_demo_model():
    cache = Path(os.environ.get("LDCP_CACHE_DIR", Path.home() / ".cache" / "ldcp"))
    path = cache / "sd15-demo"
    if not (path / "model_index.json").exists():
        print(f"making the sd15 demo model in {path} (once)", flush=True)
        subprocess.run([lib.tool("ldcp"), "init-demo-model", str(path), "--config", "sd15"],
                       check=True, timeout=3600)
    return path


def overruns(server):
    return lib.metric(lib.parse_metrics(server.metrics_text()), "ldcp_budget_overruns_total")


def drive(server, stub, args, mode, clients=0, rate=0.0):
    """Closed loop (`clients`) or open loop (Poisson at `rate` requests/s) for args.warmup +
    args.duration; open-loop requests still running at the end are waited for. Requests sent
    in the first args.warmup seconds are served but not counted (AUTO's level settles there)."""
    lock = threading.Lock()
    lat, waits, levels, peaks, codes, batches = [], [], Counter(), [], Counter(), []
    seq = [0]
    before = overruns(server)
    begin = time.time()
    measure_from = begin + args.warmup
    stop_at = measure_from + args.duration
    counted = [0]

    def one():
        with lock:
            seq[0] += 1
            n = seq[0]
            counting = time.time() >= measure_from
            counted[0] += counting
        req = pb.GenerateRequest(prompt=f"bench {n}", width=args.size, height=args.size,
                                 steps=args.steps, sampler="euler", seed=n, pruning=pruning(mode),
                                 request_id=f"{mode}-{clients}-{rate:g}-{n}")
        t0 = time.time()
        try:
            r = stub.Generate(req, timeout=max(300, 4 * args.duration))
        except grpc.RpcError as e:
            if not counting:
                return
            with lock:
                codes[e.code().name] += 1
            return
        if not counting:
            return
        with lock:
            codes["OK"] += len(r.images)
            lat.append(time.time() - t0)
            waits.append(r.timings.queue_seconds)
            batches.append(r.batch_size)
            levels[f"{max(r.step_levels, default=0.0):.2f}"] += 1
            peaks.append(r.peak_memory_bytes)

    threads = []
    if clients:
        def loop():
            while time.time() < stop_at:
                one()
        threads = [threading.Thread(target=loop) for _ in range(clients)]
        for t in threads:
            t.start()
    else:
        # Poisson arrivals conditioned on their count: given N arrivals in the phase, a Poisson
        # process's arrival times are N sorted uniform draws. With N = rate x duration the phase
        # offers exactly the nominal rate (a free-running draw over a short phase can offer
        # twice it), with a Poisson process's burstiness.
        rng = random.Random(int(rate * 1000))
        span = args.warmup + args.duration
        count = max(1, round(rate * span))
        for t in sorted(begin + rng.uniform(0, span) for _ in range(count)):
            time.sleep(max(0.0, t - time.time()))
            th = threading.Thread(target=one)
            th.start()
            threads.append(th)
    for th in threads:
        th.join()
    elapsed = time.time() - measure_from
    images = codes["OK"]
    mean_level = (sum(float(k) * v for k, v in levels.items()) / max(1, sum(levels.values())))
    # The rate the phase offered (the nominal rate, up to rounding the count).
    offered = (counted[0] / args.duration) if not clients else float("nan")
    return {"mode": mode, "load": f"closed{clients}" if clients else f"poisson{rate:.3g}",
            "rate": rate, "offered_per_s": offered, "seconds": round(elapsed, 1), "images": images,
            "images_per_s": images / elapsed, "p50_s": pct(lat, 50), "p99_s": pct(lat, 99),
            "mean_queue_s": statistics.fmean(waits) if waits else 0.0, "levels": dict(levels),
            "mean_level": mean_level, "max_peak_bytes": max(peaks, default=0),
            "mean_batch": statistics.fmean(batches) if batches else 0.0,
            "overruns": overruns(server) - before, "codes": dict(codes)}


def plot(results, modes, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in modes:
        rows = sorted((r for r in results if r["mode"] == mode and r["rate"] > 0),
                      key=lambda r: r["rate"])
        if rows:
            a.plot([r["rate"] for r in rows], [r["images_per_s"] for r in rows], "o-", label=mode)
            b.plot([r["rate"] for r in rows], [r["p99_s"] for r in rows], "o-", label=mode)
    a.set(xlabel="arrival rate (requests/s)", ylabel="images/s", title="throughput")
    b.set(xlabel="arrival rate (requests/s)", ylabel="p99 latency (s)", title="p99 latency")
    a.legend()
    fig.tight_layout()
    fig.savefig(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="a model folder (default: the sd15 demo model)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--tile", type=int, default=128, help="--vae-tile-size")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--duration", type=float, default=90, help="seconds per phase")
    ap.add_argument("--warmup", type=float, default=0,
                    help="seconds before each phase's counted part: served, not counted")
    ap.add_argument("--clients", type=int, default=4, help="closed-loop clients")
    ap.add_argument("--rates", default="", help="open-loop requests/s (default: from OFF's)")
    ap.add_argument("--rate-factors", default="0.9,2",
                    help="without --rates: open-loop rates as multiples of OFF's images/s")
    ap.add_argument("--open-modes", default="OFF,AUTO", help="modes of the open-loop phases")
    ap.add_argument("--modes", default=",".join(MODES), help="modes of the closed-loop phases")
    ap.add_argument("--out", default="bench/results/service_bench")
    ap.add_argument("--quick", action="store_true", help="tiny demo model, short phases")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ldcp-service-bench-"))
    if args.quick:
        args.model = args.model or str(lib.demo_model(work))
        args.size, args.tile, args.steps, args.duration = 128, 32, 2, min(args.duration, 8)
    model = args.model or str(sd15_demo_model())
    modes = args.modes.split(",")
    common = ["--device", "cpu", "--default-size", args.size, "--vae-tile-size", args.tile,
              "--calibrate-sizes", f"{args.size}x{args.size}", "--calibrate-steps", 1,
              "--max-queue", 64]
    probe = lib.Server(model, work, "--memory-budget", "64GiB", *common, "--calibrate-levels",
                       "0", "--max-batch", 1, name="probe")
    probe.wait_ready(timeout=3600)
    probe.stop()
    costs, baseline = lib.calibration_from_log(probe.log())
    one = costs[(1, args.size, args.size, 0.0)]
    budget = baseline + int(1.2 * one)
    print(f"budget {budget} bytes: baseline {baseline} + 1.2 x {one} (one unpruned image)",
          flush=True)
    server = lib.Server(model, work, "--memory-budget", budget, *common, "--calibrate-levels",
                        "0,0.35,0.7", "--max-batch", args.max_batch, "--log-level", "warn",
                        name="server")
    t0 = time.time()
    server.wait_ready(timeout=3600)
    print(f"server ready after {time.time() - t0:.0f} s of calibration", flush=True)
    results = []

    def report(row):
        row["budget_bytes"] = budget
        results.append(row)
        print(f"{row['mode']:11s} {row['load']:13s} offered {row['offered_per_s']:.3f} req/s  "
              f"{row['images_per_s']:.3f} img/s  "
              f"p50 {row['p50_s']:.1f} s  p99 {row['p99_s']:.1f} s  queue "
              f"{row['mean_queue_s']:.1f} s  batch {row['mean_batch']:.1f}  mean level "
              f"{row['mean_level']:.2f}  max peak "
              f"{row['max_peak_bytes']} / {budget}  overruns {row['overruns']:g}  "
              f"levels {row['levels']}  {row['codes']}", flush=True)

    try:
        with grpc.insecure_channel(server.target, options=[
                ("grpc.max_receive_message_length", 64 << 20)]) as ch:
            stub = pb_grpc.ImageGenerationStub(ch)
            for mode in modes:
                report(drive(server, stub, args, mode, clients=args.clients))
                time.sleep(2)
            off = next((r["images_per_s"] for r in results if r["mode"] == "OFF"), None)
            rates = [float(x) for x in args.rates.split(",") if x]
            if not rates and off:
                rates = [float(f) * off for f in args.rate_factors.split(",") if f]
            for rate in rates:
                for mode in args.open_modes.split(","):
                    report(drive(server, stub, args, mode, rate=rate))
                    time.sleep(2)
    finally:
        server.stop()

    def closed(mode):
        return next((r for r in results if r["mode"] == mode and r["rate"] == 0), None)

    print("\ntargets:")
    auto, off_row = closed("AUTO"), closed("OFF")
    if auto and off_row:
        ratio = auto["images_per_s"] / max(1e-9, off_row["images_per_s"])
        print(f"  AUTO / OFF images/s at saturation: {ratio:.2f}x (target >= 1.8x)")
    total = sum(r["overruns"] for r in results)
    over = max((r["max_peak_bytes"] for r in results), default=0)
    print(f"  overruns in all phases: {total:g} (target 0); max peak {over} / budget {budget}")
    sustain = [r for r in results if r["mode"] == "AUTO" and r["rate"] > 0]
    if sustain:
        low = min(sustain, key=lambda r: r["rate"])
        print(f"  AUTO mean level at {low['rate']:.3f} req/s (the lowest open-loop rate; "
              f"{low['offered_per_s']:.3f} req/s offered): "
              f"{low['mean_level']:.2f} (target <= 0.1)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(args, k) for k in ("size", "tile", "steps", "max_batch", "duration", "warmup",
                                          "clients", "rates", "quick")}
    meta["model"] = model
    out.with_suffix(".json").write_text(json.dumps({"args": meta, "budget_bytes": budget,
                                                    "results": results}, indent=1))
    plot(results, sorted({r["mode"] for r in results}), out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 1 if total > 0 or over > budget else 0


if __name__ == "__main__":
    sys.exit(main())
