"""The SD1.5 U-Net's linear layers on the CPU: ATen's linear (F.linear: MKL/OpenBLAS sgemm in
fp32, oneDNN matmul in bf16) against oneDNN's linear (torch.ops.mkldnn._linear_pointwise, the
op ldcp's oneDNN linear calls, with ATen for a non-contiguous weight), side by side in one run,
per dtype.

The shapes are those of one guided 512x512 step (latent 64x64, batch 2 x 1 image): in each of
the 16 transformer blocks the self-attention's to_q/to_k/to_v/to_out, the cross-attention's
to_q/to_out on the image tokens and to_k/to_v on the 77 text tokens, the GEGLU projection
(C -> 8C) and the feed-forward's output (4C -> C); at --level > 0 the feed-forward's kept
units are a prefix (as ldcp's sliced forward: GEGLU rows narrowed, the output's columns a
non-contiguous narrow). Each op is timed in alternation with the other (the machine is shared:
ratios, not absolute times, are what carries over), and the step total weights each shape by
how often the U-Net runs it.

  .venv/bin/python bench/linear_bench.py                       # fp32 and bf16, 512x512, 2 threads
  .venv/bin/python bench/linear_bench.py --size 256 --threads 1 --level 0.5 --json out.json
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

# (channels, tokens at 512x512, transformer blocks at that resolution) of SD1.5's U-Net:
# down 2+2+2, mid 1, up 3+3+3.
LEVELS = [(320, 4096, 5), (640, 1024, 5), (1280, 256, 5), (1280, 64, 1)]
TEXT_TOKENS, TEXT_DIM = 77, 768
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def shapes(size, batch, level):
    """(name, M, K, N, bias, count, full_k) of one U-Net forward at `size` pixels: the weight
    is a K-column prefix of a full_k-column one (K < full_k: the pruned feed-forward output)."""
    scale = (size / 512) ** 2
    out = []
    for c, tokens, blocks in LEVELS:
        m = max(1, int(tokens * scale)) * batch
        inner = 4 * c - int(level * 4 * c)  # the feed-forward's kept units
        out += [
            (f"{c} q/k/v/out self", m, c, c, False, 4 * blocks, c),
            (f"{c} q/out cross", m, c, c, False, 2 * blocks, c),
            (f"{c} k/v text", TEXT_TOKENS * batch, TEXT_DIM, c, False, 2 * blocks, TEXT_DIM),
            (f"{c} ff geglu", m, c, 2 * inner, True, blocks, c),
            (f"{c} ff out", m, inner, c, True, blocks, 4 * c),
        ]
    return out


def onednn_linear(x, w, b):
    # oneDNN's inner product takes a dense weight: a narrowed one (the pruned feed-forward's
    # output) is hundreds of times slower in fp32 and refused in bf16, so ldcp keeps ATen there.
    if not w.is_contiguous():
        return F.linear(x, w, b)
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], None)


def time_pair(fns, repeats, min_seconds):
    """Alternates the functions, `repeats` rounds of at least min_seconds each; the median
    seconds per call of each."""
    for fn in fns:
        fn()
    per_call = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            n, t0 = 0, time.perf_counter()
            while True:
                fn()
                n += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_seconds:
                    break
            per_call[i].append(elapsed / n)
    return [sorted(v)[len(v) // 2] for v in per_call]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2, help="U-Net batch (2: one guided image)")
    ap.add_argument("--level", type=float, default=0.0, help="feed-forward pruning level")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=0.05)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.size}x{args.size}, "
          f"U-Net batch {args.batch}, level {args.level}")
    report = {"args": vars(args), "dtypes": {}}
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        print(f"\n{dtype_name}: {'shape':24s} {'M':>6s} {'K':>5s} {'N':>5s} {'x':>3s} "
              f"{'aten ms':>8s} {'onednn ms':>9s} {'onednn/aten':>11s}")
        total_aten = total_onednn = 0.0
        rows = []
        try:
            onednn_linear(torch.randn(8, 64, dtype=dtype), torch.randn(64, 64, dtype=dtype), None)
        except RuntimeError as e:
            # e.g. bf16 on a CPU without avx512_bf16/AMX: oneDNN has no inner product for it.
            print(f"{dtype_name}: oneDNN's linear is not available on this CPU "
                  f"({str(e).splitlines()[0][:90]}): aten")
            report["dtypes"][dtype_name] = {"available": False, "faster": "aten"}
            continue
        with torch.no_grad():
            for name, m, k, n, bias, count, full_k in shapes(args.size, args.batch, args.level):
                x = torch.randn(m, k, dtype=dtype)
                w = torch.randn(n, full_k, dtype=dtype).narrow(1, 0, k)
                b = torch.randn(n, dtype=dtype) if bias else None
                ref = F.linear(x, w, b).float()
                got = onednn_linear(x, w, b).float()
                err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
                if err > (1e-4 if dtype == torch.float32 else 2e-2):
                    raise SystemExit(f"{name}: oneDNN and ATen differ by {err:.2e} (relative)")
                t_aten, t_onednn = time_pair(
                    [lambda: F.linear(x, w, b), lambda: onednn_linear(x, w, b)],
                    args.repeats, args.min_seconds)
                total_aten += count * t_aten
                total_onednn += count * t_onednn
                rows.append({"shape": name, "m": m, "k": k, "n": n, "bias": bias, "count": count,
                             "aten_s": t_aten, "onednn_s": t_onednn})
                print(f"{'':6s}{name:24s} {m:6d} {k:5d} {n:5d} {count:3d} {t_aten * 1e3:8.3f} "
                      f"{t_onednn * 1e3:9.3f} {t_onednn / t_aten:11.2f}")
        ratio = total_onednn / total_aten
        faster = "onednn" if ratio < 1 else "aten"
        print(f"{dtype_name}: the U-Net's linears per forward: aten {total_aten * 1e3:.1f} ms, "
              f"onednn {total_onednn * 1e3:.1f} ms: onednn/aten {ratio:.2f} -> {faster}")
        report["dtypes"][dtype_name] = {"rows": rows, "aten_s": total_aten,
                                        "onednn_s": total_onednn, "ratio": ratio,
                                        "faster": faster}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
