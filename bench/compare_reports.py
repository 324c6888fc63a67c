#!/usr/bin/env python3
"""Compare two `kiln bench` report.json files cell by cell (variant, engine, threads, batch).

Each report gives, per cell, the median latency and its spread: `ci95_ms`, a 95% confidence
interval of the median from the rounds' medians (see the report's method). Two runs agree on a
cell when their intervals overlap. For reports without intervals (one round) the older rule is
used: |median_a - median_b| <= the larger range of the two runs' round medians (or p90 - median).
Also printed: how often each run's median lies inside the other run's interval (stricter), and
the relative differences of the medians. Exits 1 when a cell disagrees.

  bench/compare_reports.py runs/pipeline/bench/report.json runs/pipeline/bench-repeat/report.json
"""
import json
import statistics
import sys


def cells(report):
    out = {}
    for r in report["results"] + report.get("peers", {}).get("results", []):
        out[(r["variant"], r["engine"], str(r["threads"]), r["batch"])] = r
    return out


def spread_of(cell):
    rounds = cell.get("round_medians_ms", [])
    if len(rounds) > 1:
        return max(rounds) - min(rounds)
    return cell["p90_ms"] - cell["median_ms"]


def agree(a, b):
    if "ci95_ms" in a and "ci95_ms" in b:
        (la, ha), (lb, hb) = a["ci95_ms"], b["ci95_ms"]
        return la <= hb and lb <= ha
    return abs(a["median_ms"] - b["median_ms"]) <= max(spread_of(a), spread_of(b))


def inside(a, b):
    """Each median inside the other's interval."""
    if "ci95_ms" not in a or "ci95_ms" not in b:
        return agree(a, b)
    return (a["ci95_ms"][0] <= b["median_ms"] <= a["ci95_ms"][1]
            and b["ci95_ms"][0] <= a["median_ms"] <= b["ci95_ms"][1])


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    a, b = (cells(json.load(open(p))) for p in sys.argv[1:3])
    common = sorted(set(a) & set(b))
    if not common:
        print("no cells in common")
        return 1
    rel, bad, strict = [], [], 0
    for k in common:
        ma, mb = a[k]["median_ms"], b[k]["median_ms"]
        rel.append(abs(ma - mb) / max(ma, mb))
        strict += inside(a[k], b[k])
        if not agree(a[k], b[k]):
            bad.append((k, a[k], b[k]))
    n = len(common)
    print(f"{n} cells in both reports")
    print(f"reported spreads (95% CIs of the median) overlap: {n - len(bad)}/{n} "
          f"({100.0 * (n - len(bad)) / n:.1f}%)")
    print(f"each median inside the other run's interval: {strict}/{n} ({100.0 * strict / n:.1f}%)")
    print(f"relative difference of medians: median {100 * statistics.median(rel):.2f}%, "
          f"p90 {100 * sorted(rel)[int(0.9 * (len(rel) - 1))]:.2f}%, max {100 * max(rel):.2f}%")
    for k, x, y in bad:
        print(f"  disagree: {k}: {x['median_ms']:.3f} ms {x.get('ci95_ms', '')} vs "
              f"{y['median_ms']:.3f} ms {y.get('ci95_ms', '')}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
