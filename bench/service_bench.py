"""Service benchmark of ldcp-server (issue 11): AUTO against OFF and FIXED 0.35 / 0.7 under one
memory budget, closed-loop and open-loop (Poisson arrivals) load.

A probe server calibrates the model; the budget is the idle baseline plus about one unpruned
image (1.05 x its measured cost). Each mode then gets a fresh server with that budget. Prints
images/s, p50/p99 latency, queue wait, the level distribution, the maximum measured peak against
the budget and ldcp_budget_overruns_total; writes JSON and a plot (throughput and p99 against
arrival rate, per mode).

  .venv/bin/python bench/service_bench.py --model DIR [--size 256] [--tile 128] [--steps 4]
      [--duration 90] [--clients 4] [--rates 0.05,0.1] [--out bench/service_bench]
  .venv/bin/python bench/service_bench.py --quick   # the tiny demo model, seconds per phase

Environment: LDCP_SERVER / LDCP_TOOL (tests/server/ldcp_testlib.py) name the binaries.

Status (2026-12-01): written but not yet run; no test drives it and the README quotes no figure
from it (issue 11, item 3, is open). It reads ldcp_budget_overruns_total, which came with the
scheduler change 4832adf + f28d3b9, reverted in 4478e37 / b5b58fa (AUTO pruned an idle server's
first requests under a loaded machine); re-apply that change, fixed, before running it."""

import argparse
import json
import random
import statistics
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
MODES = ["AUTO", "OFF", "FIXED_0.35", "FIXED_0.70"]


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


def drive(stub, args, mode, clients=0, rate=0.0):
    """Closed loop (`clients`) or open loop (Poisson at `rate` requests/s) for args.duration."""
    lock = threading.Lock()
    lat, waits, levels, peaks, codes = [], [], Counter(), [], Counter()
    stop_at = time.time() + args.duration
    seq = [0]

    def one():
        with lock:
            seq[0] += 1
            n = seq[0]
        req = pb.GenerateRequest(prompt=f"bench {n}", width=args.size, height=args.size,
                                 steps=args.steps, sampler="euler", seed=n, pruning=pruning(mode))
        t0 = time.time()
        try:
            r = stub.Generate(req, timeout=max(120, 4 * args.duration))
        except grpc.RpcError as e:
            with lock:
                codes[e.code().name] += 1
            return
        with lock:
            codes["OK"] += 1
            lat.append(time.time() - t0)
            waits.append(r.queue_seconds if hasattr(r, "queue_seconds") else 0.0)
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
        rng = random.Random(0)
        t = time.time()
        while True:
            t += rng.expovariate(rate)
            if t >= stop_at:
                break
            time.sleep(max(0.0, t - time.time()))
            th = threading.Thread(target=one)
            th.start()
            threads.append(th)
    start = time.time()
    for th in threads:
        th.join()
    elapsed = max(args.duration, time.time() - start + (args.duration if clients else 0) * 0)
    images = codes["OK"]
    mean_level = (sum(float(k) * v for k, v in levels.items()) / images) if images else 0.0
    return {"mode": mode, "load": f"closed{clients}" if clients else f"poisson{rate:g}",
            "rate": rate, "images_per_s": images / elapsed, "p50_s": pct(lat, 50),
            "p99_s": pct(lat, 99), "mean_queue_s": statistics.fmean(waits) if waits else 0.0,
            "levels": dict(levels), "mean_level": mean_level, "max_peak_bytes": max(peaks, default=0),
            "codes": dict(codes)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--duration", type=float, default=90)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rates", default="")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", default="bench/service_bench")
    ap.add_argument("--quick", action="store_true", help="tiny demo model, short phases")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ldcp-service-bench-"))
    if args.quick:
        args.model = args.model or str(lib.demo_model(work))
        args.size, args.tile, args.steps, args.duration = 128, 32, 2, min(args.duration, 6)
        args.rates = args.rates or "2"
        args.modes = "AUTO,OFF"
    if not args.model:
        ap.error("--model is required (or --quick)")
    common = ["--device", "cpu", "--default-size", args.size, "--vae-tile-size", args.tile,
              "--calibrate-sizes", f"{args.size}x{args.size}", "--calibrate-levels", "0,0.35,0.7",
              "--calibrate-steps", 1, "--max-batch", args.max_batch, "--max-queue", 64]
    probe = lib.Server(args.model, work, "--memory-budget", "64GiB", *common, name="probe")
    probe.wait_ready(timeout=1800)
    probe.stop()
    costs, baseline = lib.calibration_from_log(probe.log())
    budget = baseline + int(1.05 * costs[(1, args.size, args.size, 0.0)])
    results = []
    for mode in args.modes.split(","):
        server = lib.Server(args.model, work, "--memory-budget", budget, *common,
                            name=f"server-{mode}").wait_ready(timeout=1800)
        try:
            with grpc.insecure_channel(server.target, options=[
                    ("grpc.max_receive_message_length", 64 << 20)]) as ch:
                stub = pb_grpc.ImageGenerationStub(ch)
                loads = [drive(stub, args, mode, clients=args.clients)]
                for r in [float(x) for x in args.rates.split(",") if x]:
                    loads.append(drive(stub, args, mode, rate=r))
                samples = lib.parse_metrics(server.metrics_text())
                overruns = lib.metric(samples, "ldcp_budget_overruns_total")
        finally:
            server.stop()
        for row in loads:
            row.update(budget_bytes=budget, overruns=overruns)
            results.append(row)
            print(f"{row['mode']:11s} {row['load']:12s} {row['images_per_s']:.3f} img/s  "
                  f"p50 {row['p50_s']:.2f} s  p99 {row['p99_s']:.2f} s  queue "
                  f"{row['mean_queue_s']:.2f} s  mean level {row['mean_level']:.2f}  max peak "
                  f"{row['max_peak_bytes']} / budget {budget}  overruns {overruns:g}  "
                  f"levels {row['levels']}  {row['codes']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(args, k) for k in ("model", "size", "tile", "steps", "max_batch",
                                          "duration", "clients", "rates", "quick")}
    out.with_suffix(".json").write_text(json.dumps({"args": meta, "results": results}, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        for mode in args.modes.split(","):
            rows = sorted((r for r in results if r["mode"] == mode and r["rate"] > 0),
                          key=lambda r: r["rate"])
            a.plot([r["rate"] for r in rows], [r["images_per_s"] for r in rows], "o-", label=mode)
            b.plot([r["rate"] for r in rows], [r["p99_s"] for r in rows], "o-", label=mode)
        a.set(xlabel="arrival rate (requests/s)", ylabel="images/s")
        b.set(xlabel="arrival rate (requests/s)", ylabel="p99 latency (s)")
        a.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"))
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
    bad = [r for r in results if r["overruns"] > 0 or r["max_peak_bytes"] > budget]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
