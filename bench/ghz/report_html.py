#!/usr/bin/env python3
"""HTML pages from ghz's JSON reports (run.sh keeps both). Standard library only.

  report_html.py REPORT.json --out REPORT.html          one scenario
  report_html.py --index A.json B.json ... --out index.html   a summary table of several

ghz's JSON report: count, total/average/fastest/slowest (nanoseconds), rps,
latencyDistribution [{percentage, latency}], histogram [{mark (s), count, frequency}],
statusCodeDistribution {code: n}, errorDistribution {message: n}, options, date, name."""

import argparse
import html
import json
import sys
from pathlib import Path

STYLE = """body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}h1{font-size:1.4em}
h2{font-size:1.1em;margin-top:1.5em}.bar{fill:#3b73b9}.ok{color:#1a7f37}.bad{color:#b42318}"""


def seconds(ns):
    return (ns or 0) / 1e9


def fmt_s(ns):
    s = seconds(ns)
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.3f} s"


def table(header, rows):
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    return "\n".join(out) + "</table>"


def histogram_svg(buckets, width=560, height=160):
    if not buckets:
        return "<p>No successful calls.</p>"
    top = max(b.get("count", 0) for b in buckets) or 1
    bw = width / len(buckets)
    parts = [f'<svg width="{width}" height="{height + 30}" role="img">']
    for i, b in enumerate(buckets):
        h = height * b.get("count", 0) / top
        x = i * bw
        parts.append(f'<rect class="bar" x="{x + 2:.1f}" y="{height - h:.1f}" width="{bw - 4:.1f}" '
                     f'height="{h:.1f}"><title>{b.get("count", 0)} calls</title></rect>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{height + 14}" font-size="10" '
                     f'text-anchor="middle">{b.get("mark", 0):.2f}s</text>')
    parts.append("</svg>")
    return "".join(parts)


def scenario_page(report, title):
    opts = report.get("options", {})
    codes = report.get("statusCodeDistribution") or {}
    ok = codes.get("OK", 0)
    count = report.get("count", 0)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{html.escape(str(report.get('date', '')))} &middot; call "
            f"<code>{html.escape(str(opts.get('call', '')))}</code> on "
            f"<code>{html.escape(str(opts.get('host', '')))}</code> &middot; ended: "
            f"{html.escape(str(report.get('endReason', '')))}</p>",
            "<h2>Summary</h2>",
            table(["calls", "OK", "requests/s", "average", "fastest", "slowest", "total time"],
                  [[count, f'<span class="{"ok" if ok == count else "bad"}">{ok}</span>',
                    f"{report.get('rps', 0):.3f}", fmt_s(report.get("average")),
                    fmt_s(report.get("fastest")), fmt_s(report.get("slowest")),
                    fmt_s(report.get("total"))]]),
            "<h2>Latency distribution (successful calls)</h2>",
            table(["percentile", "latency"],
                  [[f"p{d.get('percentage')}", fmt_s(d.get("latency"))]
                   for d in report.get("latencyDistribution") or []]),
            "<h2>Histogram</h2>", histogram_svg(report.get("histogram") or []),
            "<h2>Status codes</h2>",
            table(["status", "calls"], [[html.escape(k), v] for k, v in sorted(codes.items())])]
    errors = report.get("errorDistribution") or {}
    if errors:
        body += ["<h2>Errors</h2>",
                 table(["error", "calls"],
                       [[html.escape(k), v] for k, v in sorted(errors.items())])]
    return page(title, body)


def page(title, body):
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def p_latency(report, pct):
    for d in report.get("latencyDistribution") or []:
        if d.get("percentage") == pct:
            return fmt_s(d.get("latency"))
    return "-"


def index_page(paths):
    rows = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        codes = r.get("statusCodeDistribution") or {}
        name = Path(p).stem
        link = f'<a href="{html.escape(name)}.html">{html.escape(name)}</a>'
        rows.append([link, r.get("count", 0),
                     codes.get("OK", 0), f"{r.get('rps', 0):.3f}", p_latency(r, 50),
                     p_latency(r, 95), p_latency(r, 99),
                     html.escape(", ".join(f"{k} {v}" for k, v in sorted(codes.items())))])
    return page("ldcp ghz reports", ["<h1>ldcp ghz reports</h1>",
                                     table(["scenario", "calls", "OK", "requests/s", "p50", "p95",
                                            "p99", "statuses"], rows)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="*", type=Path)
    ap.add_argument("--index", action="store_true", help="one summary page of several reports")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.index:
        a.out.write_text(index_page(a.reports))
    else:
        if len(a.reports) != 1:
            ap.error("give one report (or --index)")
        report = json.loads(a.reports[0].read_text())
        a.out.write_text(scenario_page(report, report.get("name") or a.reports[0].stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
