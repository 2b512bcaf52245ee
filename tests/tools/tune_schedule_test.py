"""End-to-end test of `ldcp tune-schedule` and `ldcp generate --pruning-budget` on the tiny demo
model (`ldcp init-demo-model`), at 64x64 with three PNDM steps (four timesteps), two levels, one
tuning and one held-out seed (run by CTest as cli_tune_schedule):

- an infeasible budget fails before the measurement, naming --budgets and the feasible range;
- the gates file gets the input scores plus one schedule per budget: a level per timestep, none
  below --floor, mean FLOPs (on the stored curve) equal to the budget;
- the report: tune.json with finite sensitivities and figures, tune.md, both plots as PNGs;
- `ldcp generate --pruning-budget` runs the stored levels (same sampler and steps) and keeps the
  budget when re-mapped (other step count); errors for a budget not stored, no gates file and a
  malformed schedule, each one line;
- --out may be --gates (the file is rewritten in place).
"""

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from cli_checks import FAILURES, check, error_lines, passed, run  # noqa: E402
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

SIZE, STEPS, FLOOR = 64, 3, 0.1



def expect_error(argv, tag, *mentions):
    result = run(argv)
    lines = error_lines(result.stderr, ("U-Net FLOPs fraction per level",))
    check(result.returncode != 0, f"{tag}: expected a non-zero exit, got 0")
    check(len(lines) == 1, f"{tag}: expected one error line, got {lines}")
    check("terminate called" not in result.stderr, f"{tag}: crashed: {result.stderr}")
    for m in mentions:
        check(m in result.stderr, f"{tag}: error does not mention {m!r}: {result.stderr}")
    return result.stderr


def curve_at(curve, level):
    xs, ys = curve["levels"], curve["fractions"]
    level = min(max(level, xs[0]), xs[-1])
    for k in range(1, len(xs)):
        if level <= xs[k]:
            t = (level - xs[k - 1]) / (xs[k] - xs[k - 1])
            return ys[k - 1] + t * (ys[k] - ys[k - 1])
    return ys[-1]


def schedules_of(path):
    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
    return metadata, json.loads(metadata["step_schedules"]) if "step_schedules" in metadata else []


def generate(ldcp, model, gates, out, budget, steps=STEPS):
    return run([ldcp, "generate", "--model", model, "--gates", gates, "--pruning-budget", budget,
                "--prompt", "a lighthouse", "--steps", steps, "--width", SIZE, "--height", SIZE,
                "--seed", 5, "--out", out])


def printed_levels(stdout):
    m = re.search(r"step levels ([0-9.,]+)", stdout)
    return [float(x) for x in m.group(1).split(",")] if m else None


def printed_pruned(stdout):
    m = re.search(r"pruned ([0-9.]+)% of U-Net FLOPs", stdout)
    return float(m.group(1)) / 100 if m else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ldcp", required=True, type=Path)
    args = parser.parse_args()
    ldcp = args.ldcp
    with tempfile.TemporaryDirectory(prefix="ldcp-tune-") as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "demo"
        r = run([ldcp, "init-demo-model", model, "--config", "tiny"])
        check(r.returncode == 0, f"init-demo-model failed: {r.stderr}")
        prompts = tmp / "prompts.txt"
        prompts.write_text("# tuning prompts\na red fox in the snow\n")
        gates = tmp / "gates.safetensors"
        report = tmp / "report"
        common = [ldcp, "tune-schedule", "--model", model, "--prompts", prompts, "--steps", STEPS,
                  "--width", SIZE, "--height", SIZE, "--levels", "0.3,0.6", "--seeds", 1,
                  "--out", gates]

        # An infeasible budget: refused before the measurement, with the range to pick from.
        err = expect_error([*common, "--floor", FLOOR, "--budgets", "0.01"], "infeasible budget",
                           "--budgets", "feasible range")
        m = re.search(r"feasible range is \[([0-9.]+), ([0-9.]+)\]", err)
        check(m is not None, f"no feasible range in {err!r}")
        if not m:
            return
        lowest, highest = float(m.group(1)), float(m.group(2))
        check(0 < lowest < highest < 1, f"feasible range [{lowest}, {highest}]")
        check(not gates.exists(), "an infeasible run wrote the gates file")
        budgets = [round(lowest + f * (highest - lowest), 3) for f in (0.3, 0.7)]
        expect_error([*common, "--budgets", "0.8", "--floor", 0.9], "floor above the levels",
                     "--floor: 0.900")

        r = run([*common, "--floor", FLOOR, "--budgets", ",".join(map(str, budgets)), "--report",
                 report, "--eval-seeds", 1])
        check(r.returncode == 0, f"tune-schedule failed: {r.stderr[-3000:]}")
        if r.returncode != 0:
            return
        print(r.stdout)
        metadata, schedules = schedules_of(gates)
        check(metadata.get("source") == "magnitude", f"gates source: {metadata.get('source')}")
        check(len(load_file(str(gates))) > 0, "the gates file lost its scores")
        check([s["budget"] for s in schedules] == budgets,
              f"stored budgets {[s['budget'] for s in schedules]} != {budgets}")
        for s in schedules:
            tag = f"budget {s['budget']}"
            check(s["sampler"] == "pndm" and s["steps"] == STEPS, f"{tag}: tuned for {s}")
            check(len(s["levels"]) == len(s["timesteps"]) == STEPS + 1,  # PNDM: one more
                  f"{tag}: {len(s['levels'])} levels for {len(s['timesteps'])} timesteps")
            check(min(s["levels"]) >= FLOOR - 1e-9, f"{tag}: a level below the floor: {s['levels']}")
            check(max(s["levels"]) <= 0.6 + 1e-9, f"{tag}: a level above the grid: {s['levels']}")
            mean = sum(curve_at(s["flops_curve"], l) for l in s["levels"]) / len(s["levels"])
            check(abs(mean - s["budget"]) <= 0.01 * s["budget"],
                  f"{tag}: mean FLOPs fraction {mean} on the stored curve")

        data = json.loads((report / "tune.json").read_text())
        sens = data["sensitivity"]["mse"]
        check(len(sens) == STEPS + 1 and all(len(row) == 2 for row in sens),
              f"sensitivity shape: {sens}")
        check(all(math.isfinite(e) and e >= 0 for row in sens for e in row),
              f"sensitivities not finite: {sens}")
        check(any(e > 0 for row in sens for e in row), "pruning one step never changed the image")
        check(data["tuning_seeds"] == [0] and data["eval_seeds"] == [1],
              f"seeds {data['tuning_seeds']} / {data['eval_seeds']}")
        for b in data["budgets"]:
            tag = f"report budget {b['budget']}"
            for key in ("predicted_mse", "constant_predicted_mse", "constant_level",
                        "measured_flops_fraction_learned", "measured_flops_fraction_constant",
                        "psnr_db_learned", "psnr_db_constant"):
                check(isinstance(b[key], (int, float)) and math.isfinite(b[key]),
                      f"{tag}: {key} = {b[key]}")
            for key in ("measured_flops_fraction_learned", "measured_flops_fraction_constant"):
                value = b[key]
                if isinstance(value, (int, float)):
                    check(abs(value - b["budget"]) <= 0.02,
                          f"{tag}: {key} {value} is not the budget (counted FLOPs)")
        md = (report / "tune.md").read_text()
        check("## Sensitivity per step" in md and "## Schedules" in md, "tune.md sections missing")
        for name in ("sensitivity.png", "schedules.png"):
            path = report / name
            check(path.exists(), f"{name} missing")
            if path.exists():
                with Image.open(path) as im:
                    check(im.size[0] > 100 and im.size[1] > 100, f"{name}: size {im.size}")

        # generate --pruning-budget: the stored levels as they are, and re-mapped.
        budget = schedules[1]["budget"]
        r = generate(ldcp, model, gates, tmp / "b.png", budget)
        check(r.returncode == 0, f"generate --pruning-budget failed: {r.stderr}")
        levels = printed_levels(r.stdout)
        check(levels is not None and len(levels) == STEPS + 1 and all(
            abs(a - b) <= 1e-6 for a, b in zip(levels, schedules[1]["levels"])),
              f"generate ran {levels}, the schedule is {schedules[1]['levels']}")
        pruned = printed_pruned(r.stdout)
        check(pruned is not None and abs(1 - pruned - budget) <= 0.02,
              f"generate: pruned {pruned} of the U-Net FLOPs at budget {budget}")
        r = generate(ldcp, model, gates, tmp / "b7.png", budget, steps=7)
        check(r.returncode == 0, f"generate --pruning-budget --steps 7 failed: {r.stderr}")
        check("re-mapped" in r.stdout, f"7 steps not re-mapped: {r.stdout}")
        levels = printed_levels(r.stdout) or []
        check(len(levels) == 8 and min(levels) >= FLOOR - 1e-6, f"re-mapped levels {levels}")
        pruned = printed_pruned(r.stdout)
        check(pruned is not None and abs(1 - pruned - budget) <= 0.02,
              f"re-mapped: pruned {pruned} of the U-Net FLOPs at budget {budget}")

        expect_error([ldcp, "generate", "--model", model, "--gates", gates, "--pruning-budget",
                      0.99, "--prompt", "x", "--steps", 2, "--width", SIZE, "--height", SIZE,
                      "--out", tmp / "x.png"], "budget not stored", "--pruning-budget 0.99",
                     "stored: ")
        expect_error([ldcp, "generate", "--model", model, "--pruning-budget", budget, "--prompt",
                      "x", "--steps", 2, "--width", SIZE, "--height", SIZE, "--out",
                      tmp / "x.png"], "no gates file", "--gates")
        bad = tmp / "bad.safetensors"
        save_file(load_file(str(gates)), str(bad),
                  metadata={**metadata, "step_schedules": '[{"budget": 2}]'})
        expect_error([ldcp, "generate", "--model", model, "--gates", bad, "--pruning-budget",
                      budget, "--prompt", "x", "--steps", 2, "--width", SIZE, "--height", SIZE,
                      "--out", tmp / "x.png"], "malformed schedule", str(bad), "step_schedules")

        # --out may be --gates: the scores stay, the schedules are replaced.
        r = run([ldcp, "tune-schedule", "--model", model, "--prompts", prompts, "--steps", 2,
                 "--width", SIZE, "--height", SIZE, "--levels", "0.5", "--budgets",
                 round((1 + curve_at(schedules[0]["flops_curve"], 0.5)) / 2, 3), "--gates", gates,
                 "--out", gates])
        check(r.returncode == 0, f"tune-schedule --out = --gates failed: {r.stderr[-2000:]}")
        _, again = schedules_of(gates)
        check(len(again) == 1 and again[0]["steps"] == 2, f"rewritten schedules: {again}")
        check(len(load_file(str(gates))) == len(load_file(str(bad))), "scores lost on rewrite")

    print(f"{passed()} checks passed, {len(FAILURES)} failed")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
