#!/usr/bin/env python3
"""Compare two `kiln bench` report.json files cell by cell (variant, engine, threads, batch).

For each cell present in both: the relative difference of the medians, and whether the two
medians agree within the spread the reports give: |median_a - median_b| <= the larger of the two
runs' spread, where a run's spread is the range of its rounds' medians (round_medians_ms), or
p90 - median for a single-round report. Prints a summary and the cells that disagree.

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


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    a, b = (cells(json.load(open(p))) for p in sys.argv[1:3])
    common = sorted(set(a) & set(b))
    if not common:
        print("no cells in common")
        return 1
    rel, agree, bad = [], 0, []
    for k in common:
        ma, mb = a[k]["median_ms"], b[k]["median_ms"]
        spread = max(spread_of(a[k]), spread_of(b[k]))
        rel.append(abs(ma - mb) / max(ma, mb))
        if abs(ma - mb) <= spread:
            agree += 1
        else:
            bad.append((k, ma, mb, spread))
    print(f"{len(common)} cells in both reports")
    print(f"medians within the reported spread: {agree}/{len(common)} "
          f"({100.0 * agree / len(common):.1f}%)")
    print(f"relative difference of medians: median {100 * statistics.median(rel):.2f}%, "
          f"p90 {100 * sorted(rel)[int(0.9 * (len(rel) - 1))]:.2f}%, max {100 * max(rel):.2f}%")
    for k, ma, mb, spread in bad:
        print(f"  outside: {k}: {ma:.3f} ms vs {mb:.3f} ms (spread {spread:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
