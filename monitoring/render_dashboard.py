#!/usr/bin/env python3
"""Renders the Grafana dashboard's panels, filled by a real run, into one PNG (README).

Starts ldcp-server on the tiny demo model (loopback ports, configured like the cpu overlay),
Debian's prometheus with monitoring/prometheus/prometheus.yml scraping it every 2 s, drives a
bounded mixed load (AUTO, FIXED, OFF; unary and streaming; a few invalid requests) in steps of
concurrency, then evaluates every panel's PromQL over the run through Prometheus' HTTP API and
draws the panels where the dashboard has them (gridPos) with matplotlib.

  .venv/bin/python monitoring/render_dashboard.py [--out monitoring/dashboard.png]
      [--phases 1:30,3:40,6:50,2:30]

Needs the built binaries (LDCP_SERVER, LDCP_TOOL or build/), prometheus and matplotlib."""

import argparse
import datetime
import math
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "deploy"))
import deploylib as dl  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.gridspec import GridSpec  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

SCRAPE = "2s"
RATE_WINDOW = "20s"  # Grafana's $__rate_interval for a 2 s scrape interval is 4 x 2 s = 8 s
STEP = 4
BG, PANEL, FG, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff",
          "#fade2a", "#37872d", "#c4162a"]


def byte_scale(series):
    """(divisor, unit name) that puts the largest value of `series` between 1 and 1024."""
    top = max((y for _, _, ys in series for y in ys if not math.isnan(y)), default=0)
    for name, d in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if top >= d:
            return d, name
    return 1, "B"


def unit_formatter(unit, byte_unit="B"):
    def fmt(v, _):
        if unit == "bytes":
            return f"{v:.4g} {byte_unit}"
        if unit == "s":
            return f"{v * 1000:.3g} ms" if abs(v) < 1 else f"{v:.3g} s"
        if unit == "percentunit":
            return f"{v * 100:.0f}%"
        if unit == "reqps":
            return f"{v:.3g}/s"
        return f"{v:.3g}"
    return FuncFormatter(fmt)


def legend(fmt, metric):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt) or \
        ",".join(f"{k}={v}" for k, v in metric.items()) or "value"


def run(args):
    work = dl.workdir("ldcp-dashboard-")
    # A first start only measures the model's memory (calibration and baseline); the second gets
    # a budget that fits about one batch, so that memory and queueing show under load.
    # 128x128 with the decoder tiled: the U-Net sets the peak, so AUTO can trade pruning for
    # memory (at 64x64 the tiny model's decoder sets it at every level).
    size = dict(LDCP_DEFAULT_SIZE=128, LDCP_CALIBRATE_SIZES="128x128", LDCP_VAE_TILE_SIZE=32,
                LDCP_DEFAULT_STEPS=args.steps)
    probe = dl.start_server(work, name="probe", **size)
    probe.stop()
    costs, baseline = dl.lib.calibration_from_log(probe.log())
    budget = baseline + int(args.budget_batches * max(costs.values()))
    server = dl.start_server(work, LDCP_MEMORY_BUDGET=budget, LDCP_WORKERS=2, LDCP_MAX_BATCH=2,
                             LDCP_BATCH_WINDOW_MS=30, **size)
    prom = None
    try:
        prom = dl.Prometheus(work, [f"127.0.0.1:{server.metrics_port}"], interval=SCRAPE)
        prom.wait_for('up{job="ldcp-server"} == 1')
        pb, pb_grpc = dl.lib.load_stubs()
        start = time.time()
        time.sleep(6)  # a flat start: the idle server
        for n, (concurrency, seconds) in enumerate(args.phases):
            codes = dl.drive_load(server.target, pb, pb_grpc, duration=seconds,
                                  concurrency=concurrency, stream_every=4, invalid_every=9,
                                  images_every=5, prefix=f"phase{n}")
            print(f"phase {n}: concurrency {concurrency} for {seconds} s: {codes}", flush=True)
        time.sleep(10)
        end = time.time()
        panels = []
        for title, targets in dl.dashboard_panels():
            series = []
            for ref, expr, fmt in targets:
                q = dl.grafana_to_promql(expr, RATE_WINDOW)
                for r in prom.query_range(q, start, end, STEP):
                    xs = [float(t) - start for t, _ in r["values"]]
                    ys = [float(v) for _, v in r["values"]]
                    series.append((legend(fmt, r["metric"]), xs, ys))
            panels.append((title, series))
        return panels, end - start, budget
    finally:
        if prom:
            prom.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def draw(panels, duration, budget, out):
    dash = dl.dashboard()
    by_title = {}

    def walk(ps):
        for p in ps:
            by_title[p["title"]] = p
            walk(p.get("panels", []))

    walk(dash["panels"])
    layout = [(by_title[t], s) for t, s in panels]
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p, _ in layout)
    fig = plt.figure(figsize=(24, bottom * 0.42 + 1.6), dpi=80, facecolor=BG)
    height = bottom * 0.42 + 1.6
    gs = GridSpec(bottom, 24, figure=fig, left=0.035, right=0.99, top=1 - 1.3 / height,
                  bottom=0.02, hspace=2.2, wspace=2.5)
    fig.suptitle(f"{dash['title']} — Grafana panels filled by a real run: tiny demo model on the "
                 f"CPU, {duration / 60:.1f} min of mixed AUTO/FIXED/OFF load in steps of "
                 f"concurrency, memory budget {budget / 2 ** 20:.0f} MiB "
                 f"({datetime.date.today().isoformat()})", color=FG, fontsize=15, x=0.01,
                 ha="left")
    _, tops, _, _ = gs.get_grid_positions(fig)
    for r in rows:
        fig.text(0.01, tops[r["gridPos"]["y"]], r["title"], color=FG, fontsize=13,
                 fontweight="bold", va="top")
    for panel, series in layout:
        g = panel["gridPos"]
        ax = fig.add_subplot(gs[g["y"]:g["y"] + g["h"] - 1, g["x"]:g["x"] + g["w"]])
        ax.set_facecolor(PANEL)
        for s in ax.spines.values():
            s.set_color(GRID)
        ax.tick_params(colors=FG, labelsize=9)
        ax.grid(color=GRID, linewidth=0.6)
        ax.set_title(panel["title"], color=FG, fontsize=12, loc="left")
        defaults = panel["fieldConfig"]["defaults"]
        custom = defaults.get("custom", {})
        unit = defaults.get("unit", "short")
        byte_unit = "B"
        if unit == "bytes":
            div, byte_unit = byte_scale(series)
            series = [(n, xs, [y / div for y in ys]) for n, xs, ys in series]
        ax.yaxis.set_major_formatter(unit_formatter(unit, byte_unit))
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _: f"{int(v // 60)}:{int(v % 60):02d}"))
        stacked = custom.get("stacking", {}).get("mode") == "normal"
        bars = custom.get("drawStyle") == "bars"
        series = sorted(series, key=lambda s: s[0])
        if stacked and series:
            xs = sorted({x for _, sx, _ in series for x in sx})
            ys = []
            for _, sx, sy in series:
                m = dict(zip(sx, sy))
                ys.append([0 if math.isnan(m.get(x, 0)) else m.get(x, 0) for x in xs])
            if bars:
                base = [0.0] * len(xs)
                for i, ((name, _, _), y) in enumerate(zip(series, ys)):
                    ax.bar(xs, y, width=STEP * 0.9, bottom=base, label=name,
                           color=COLORS[i % len(COLORS)])
                    base = [b + v for b, v in zip(base, y)]
            else:
                ax.stackplot(xs, ys, labels=[n for n, _, _ in series], alpha=0.75,
                             colors=COLORS[:len(series)])
        else:
            for i, (name, xs, ys) in enumerate(series):
                ax.plot(xs, ys, label=name, color=COLORS[i % len(COLORS)], linewidth=1.6)
        if "min" in defaults:
            # Headroom above the data for the legend.
            ax.set_ylim(bottom=defaults["min"], top=ax.get_ylim()[1] * 1.2)
        if "max" in defaults:
            ax.set_ylim(top=defaults["max"])
        ax.set_xlim(0, duration)
        if series:
            leg = ax.legend(loc="upper left", fontsize=8, ncol=min(4, len(series)), framealpha=0.5,
                            facecolor=PANEL, edgecolor=GRID)
            for t in leg.get_texts():
                t.set_color(FG)
        else:
            ax.text(0.5, 0.5, "No data", color=FG, ha="center", va="center",
                    transform=ax.transAxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=BG)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=dl.MONITORING / "dashboard.png")
    ap.add_argument("--phases", default="1:30,3:40,6:50,2:30",
                    help="concurrency:seconds,... of the load (bounded)")
    ap.add_argument("--steps", type=int, default=8, help="the server's default steps")
    ap.add_argument("--budget-batches", type=float, default=1.3,
                    help="memory budget above the idle baseline, in unpruned batches of two")
    args = ap.parse_args()
    args.phases = [tuple(int(x) for x in p.split(":")) for p in args.phases.split(",")]
    if sum(s for _, s in args.phases) > 900:
        ap.error("keep the load under 15 minutes")
    panels, duration, budget = run(args)
    draw(panels, duration, budget, args.out)


if __name__ == "__main__":
    main()
