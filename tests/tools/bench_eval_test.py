"""End-to-end tests of `ldcp bench` and `ldcp eval-pruning` on the tiny parity model (run by
CTest as cli_bench_eval), and of bench/compare_diffusers.py (--compare):

- bench: the table and the JSON (every level plus the no-gates row; FLOPs fall with the level
  and level 0 runs the same FLOPs as the U-Net without gates; latencies per repeat; measured
  peaks);
- eval-pruning: JSON, CSV and Markdown rows per level and source, level 0 equal to itself
  (relative error 0, infinite PSNR, SSIM 1) and other levels below, the plots and the image
  grids as decodable PNGs of the right size;
- bad options: a one-line error and a non-zero exit.
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from cli_checks import FAILURES, check, error_lines, passed, run  # noqa: E402

SIZE, STEPS = 64, 3



def expect_error(argv, tag, mentions):
    result = run(argv)
    lines = error_lines(result.stderr)
    check(result.returncode != 0, f"{tag}: expected a non-zero exit, got 0")
    check(len(lines) == 1, f"{tag}: expected one error line, got {lines}")
    check("terminate called" not in result.stderr and "Traceback" not in result.stderr,
          f"{tag}: crashed: {result.stderr}")
    check(mentions in result.stderr, f"{tag}: error does not mention {mentions!r}: {result.stderr}")


def test_bench(ldcp, model, tmp):
    out_json = tmp / "bench.json"
    levels = [0.0, 0.25, 0.5, 0.75]
    result = run([ldcp, "bench", "--model", model, "--levels", "0,0.25,0.5,0.75", "--width", SIZE,
                  "--height", SIZE, "--steps", STEPS, "--repeats", 3, "--json", out_json])
    check(result.returncode == 0, f"bench failed: {result.stderr}")
    if result.returncode != 0:
        return
    print(result.stdout)
    table = [l for l in result.stdout.splitlines() if l.startswith("|")]
    check(len(table) == 2 + 1 + len(levels), f"bench table: expected {3 + len(levels)} lines")
    check(any(l.startswith("| no gates") for l in table), "bench table: no 'no gates' row")
    data = json.loads(out_json.read_text())
    rows = data["rows"]
    check([r["level"] for r in rows] == [None] + levels, f"bench rows: {[r['level'] for r in rows]}")
    check(data["unet_batch"] == 2 and data["width"] == SIZE and data["repeats"] == 3,
          "bench settings not recorded")
    check(data["resident_weights_bytes"] > 0, "bench: no resident weights measured")
    ungated, gated = rows[0], rows[1:]
    macs = [r["unet_macs_per_step"] for r in gated]
    check(all(a > b for a, b in zip(macs, macs[1:])), f"bench: FLOPs do not fall with level: {macs}")
    check(ungated["unet_macs_per_step"] == macs[0],
          f"bench: level 0 runs {macs[0]} MACs, the ungated U-Net {ungated['unet_macs_per_step']}")
    check(gated[0]["flops_ratio"] == 1.0, "bench: level 0 FLOPs ratio is not 1")
    check(0 < data["gated_fraction_of_unet_macs"] < 1, "bench: gated fraction not in (0, 1)")
    for r in gated[1:]:
        # The U-Net drops a part of the gated FLOPs, about the level's share of them.
        expected = 1 - r["dropped_gated_macs_fraction"] * data["gated_fraction_of_unet_macs"]
        check(abs(r["flops_ratio"] - expected) < 0.01,
              f"bench level {r['level']}: FLOPs ratio {r['flops_ratio']} != {expected}")
        check(r["dropped_gated_macs_fraction"] >= r["level"] - 1e-9,
              f"bench level {r['level']}: drops only {r['dropped_gated_macs_fraction']}")
    for r in rows:
        check(len(r["step_seconds"]) == 3 and all(s > 0 for s in r["step_seconds"]),
              f"bench {r['name']}: step times {r['step_seconds']}")
        check(r["step_seconds_min"] == min(r["step_seconds"]), f"bench {r['name']}: min")
        check(len(r["step_cpu_seconds"]) == 3 and all(s > 0 for s in r["step_cpu_seconds"]),
              f"bench {r['name']}: step CPU times {r['step_cpu_seconds']}")
        check(r["step_cpu_seconds_median"] == sorted(r["step_cpu_seconds"])[1],
              f"bench {r['name']}: CPU median")
        check(r["step_peak_above_weights_bytes"] > 0, f"bench {r['name']}: no step peak")
        check(r["step_peak_bytes"] > r["step_peak_above_weights_bytes"],
              f"bench {r['name']}: total peak not above the weights")
    for r in gated:
        check(r["generation_peak_above_weights_bytes"] > 0, f"bench {r['name']}: no generation peak")
        check(abs(r["generation_pruned_flops_fraction"] - (1 - r["flops_ratio"])) < 0.01,
              f"bench {r['name']}: the pipeline's pruned FLOPs fraction "
              f"{r['generation_pruned_flops_fraction']} != 1 - {r['flops_ratio']}")
    check("generation_peak_above_weights_bytes" not in ungated, "bench: ungated has a generation")

    expect_error([ldcp, "bench", "--model", model, "--levels", "0,1.5"], "bench bad level",
                 "--levels")
    expect_error([ldcp, "bench", "--model", model, "--levels", "0,x"], "bench bad level text",
                 "--levels")
    expect_error([ldcp, "bench", "--model", tmp / "missing"], "bench missing model", "--model")
    expect_error([ldcp, "bench", "--model", model, "--batch", 0], "bench batch 0", "--batch")
    expect_error([ldcp, "bench", "--model", model, "--dtype", "int8"], "bench dtype", "--dtype")
    expect_error([ldcp, "bench", "--model", model, "--width", 60, "--no-ungated",
                  "--no-generation"], "bench width", "width")


def test_eval(ldcp, model, tmp):
    prompts = tmp / "prompts.txt"
    prompts.write_text("# two prompts\na red house by a lake\n\na cat on a sofa\n")
    out = tmp / "eval"
    levels, sources, seeds = [0.0, 0.25, 0.5], ["magnitude", "random"], 2
    result = run([ldcp, "eval-pruning", "--model", model, "--levels", "0.5,0.25", "--prompts",
                  prompts, "--seeds", seeds, "--out", out, "--steps", STEPS, "--width", SIZE,
                  "--height", SIZE])
    check(result.returncode == 0, f"eval-pruning failed: {result.stderr}")
    if result.returncode != 0:
        return
    print(result.stdout)
    data = json.loads((out / "results.json").read_text())
    check(data["levels"] == levels, f"eval levels {data['levels']} (0 added, sorted)")
    check(data["sources"] == sources, f"eval sources {data['sources']}")
    rows = data["rows"]
    check([(r["source"], r["level"]) for r in rows] == [(s, l) for s in sources for l in levels],
          "eval rows are not sources x levels")
    check(len(data["samples"]) == len(sources) * len(levels) * 2 * seeds, "eval samples count")
    for source in sources:
        by_level = {r["level"]: r for r in rows if r["source"] == source}
        zero = by_level[0.0]
        check(zero["noise_relative_error_mean"] == 0.0,
              f"{source}: level 0 error {zero['noise_relative_error_mean']}")
        check(zero["psnr_db"] is None, f"{source}: level 0 PSNR {zero['psnr_db']} (want infinite)")
        check(zero["ssim_mean"] == 1.0, f"{source}: level 0 SSIM {zero['ssim_mean']}")
        check(zero["flops_ratio"] == 1.0, f"{source}: level 0 FLOPs ratio")
        flops = [by_level[l]["unet_flops_per_step"] for l in levels]
        check(all(a > b for a, b in zip(flops, flops[1:])), f"{source}: FLOPs {flops} do not fall")
        errors = [by_level[l]["noise_relative_error_mean"] for l in levels]
        check(all(0 < e < 10 for e in errors[1:]), f"{source}: errors {errors}")
        for l in levels[1:]:
            r = by_level[l]
            check(r["ssim_mean"] < 1.0 and r["ssim_min"] <= r["ssim_mean"],
                  f"{source} {l}: SSIM {r['ssim_mean']} min {r['ssim_min']}")
            check(r["psnr_db"] is not None and 0 < r["psnr_db"] < 100,
                  f"{source} {l}: PSNR {r['psnr_db']}")
        for r in by_level.values():
            check(r["step_seconds_median"] > 0 and r["step_peak_above_weights_bytes"] > 0 and
                  r["generation_peak_above_weights_bytes"] > 0, f"{source}: missing figures")
            check(r["samples"] == 2 * seeds, f"{source}: samples {r['samples']}")

    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    check(len(csv_rows) == len(sources) * len(levels), f"CSV rows: {len(csv_rows)}")
    check(csv_rows and csv_rows[0]["psnr_db"] == "inf" and float(csv_rows[1]["psnr_db"]) > 0,
          "CSV PSNR column")
    md = (out / "results.md").read_text()
    md_rows = [l for l in md.splitlines() if l.startswith("| magnitude") or l.startswith("| random")]
    check(len(md_rows) == len(sources) * len(levels), f"Markdown rows: {len(md_rows)}")

    for name in ["quality.png", "latency.png", "memory.png"]:
        path = out / name
        check(path.is_file(), f"{name} missing")
        if path.is_file():
            with Image.open(path) as im:
                im.load()
                check(im.size[0] >= 800 and im.size[1] >= 300, f"{name}: size {im.size}")
    for source in sources:
        path = out / f"grid-{source}.png"
        check(path.is_file(), f"grid for {source} missing")
        if path.is_file():
            with Image.open(path) as im:
                im.load()
                # 2 prompts x 3 levels of SIZE pixels with 4-pixel gaps.
                want = (3 * SIZE + 4 * 4, 2 * SIZE + 3 * 4)
                check(im.size == want, f"grid {source}: size {im.size}, want {want}")
        images = sorted((out / "images" / source).glob("*.png"))
        check(len(images) == 2 * seeds * len(levels), f"{source}: {len(images)} images")

    expect_error([ldcp, "eval-pruning", "--model", model, "--prompts", prompts, "--out", out,
                  "--sources", "learned"], "eval learned without gates", "--gates")
    expect_error([ldcp, "eval-pruning", "--model", model, "--prompts", prompts, "--out", out,
                  "--sources", "magnitude,bogus"], "eval bad source", "bogus")
    empty = tmp / "empty.txt"
    empty.write_text("# nothing\n\n")
    expect_error([ldcp, "eval-pruning", "--model", model, "--prompts", empty, "--out", out],
                 "eval empty prompts", "no prompts")
    expect_error([ldcp, "eval-pruning", "--model", model, "--prompts", prompts, "--out", out,
                  "--levels", "-0.5"], "eval bad level", "--levels")
    expect_error([ldcp, "eval-pruning", "--model", model, "--out", out], "eval no prompts option",
                 "--prompts")


def test_compare(ldcp, model, tmp):
    script = Path(__file__).resolve().parents[2] / "bench" / "compare_diffusers.py"
    out_json = tmp / "compare.json"
    result = run([sys.executable, script, "--model", model, "--ldcp", ldcp, "--width", SIZE,
                  "--height", SIZE, "--steps", STEPS, "--runs", 1, "--warmup", 0, "--threads", 2,
                  "--out", tmp / "compare", "--json", out_json])
    check(result.returncode == 0, f"compare_diffusers failed: {result.stderr}")
    if result.returncode != 0:
        return
    print(result.stdout)
    data = json.loads(out_json.read_text())
    med = data["medians"]
    check(set(med) == {"diffusers", "ldcp L0", "ldcp L0.5"}, f"compare variants {set(med)}")
    check(all(m["wall_s"] > 0 and m["max_rss_bytes"] > 0 and m["cpu_s"] > 0
              for m in med.values()), "compare: missing figures")
    # Same settings: ldcp's level-0 image is diffusers' (to rounding).
    check((data["psnr_vs_diffusers_db"]["ldcp L0"] or 1e9) > 40,
          f"compare: level-0 image differs from diffusers' ({data['psnr_vs_diffusers_db']})")
    # The default dtype and device, recorded and named in the header.
    settings = data["settings"]
    check(settings["dtype"] == "fp32" and settings["device"] == "cpu", f"compare: {settings}")
    check(", fp32 CPU," in result.stdout, "compare: the header does not name fp32 CPU")
    bad = run([sys.executable, script, "--model", model, "--ldcp", ldcp, "--device", "tpu"])
    check(bad.returncode == 2 and "--device tpu" in bad.stderr,
          f"compare: --device tpu not refused: {bad.returncode} {bad.stderr}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ldcp", required=True)
    parser.add_argument("--parity-dir", required=True, type=Path)
    parser.add_argument("--compare", action="store_true", help="test compare_diffusers.py only")
    args = parser.parse_args()
    model = args.parity_dir / "models" / "tiny-a"
    with tempfile.TemporaryDirectory(prefix="ldcp-bench-test-") as tmp:
        if args.compare:
            test_compare(args.ldcp, model, Path(tmp))
        else:
            test_bench(args.ldcp, model, Path(tmp))
            test_eval(args.ldcp, model, Path(tmp))
    print(f"{passed()} checks passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
