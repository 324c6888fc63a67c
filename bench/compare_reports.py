#!/usr/bin/env python3
"""Compare two `kiln bench` report.json files cell by cell (variant, engine, threads, batch).

Two judgements:

- Speedups (the verdict). Each cell carries `speedup`: its images/s over those of the reference
  cell (FP32 on ONNX Runtime, same threads and batch) measured interleaved with it in every round
  (`value`, the mean of the rounds' ratios, and `ci95`, their 95% interval). Drift of the whole machine moves a cell and its
  reference together, so two runs of the same code on the same machine should agree on every
  ratio: the intervals must overlap (one round each: the ratios must be within the larger
  spread of the two cells' round medians, relative). Exit code 1 when a speedup disagrees.
- Absolute medians (informational, unless the reports carry no ratios, as reports from before
  ratios existed do: then they are the verdict). `ci95_ms` intervals overlap, else, for one
  round, |median_a - median_b| <= the larger range of the round medians (or p90 - median).
  Also printed: the drift between the two runs (the reference cells' medians, b over a).

  bench/compare_reports.py runs/pipeline/bench/report.json runs/pipeline/bench-repeat/report.json
"""
import argparse
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


def reference_of(cells_):
    for c in cells_.values():
        if "speedup" in c:
            return c["speedup"]["reference"]
    return None


def is_reference(cell, reference):
    return f'{cell["variant"]} / {cell["engine"]}' == reference


def ratio_agree(a, b):
    ra, rb = a["speedup"], b["speedup"]
    if "ci95" in ra and "ci95" in rb:
        (la, ha), (lb, hb) = ra["ci95"], rb["ci95"]
        return la <= hb and lb <= ha
    # One round: the ratio's relative error is at most about the two cells' relative spreads.
    tolerance = max(spread_of(a) / a["median_ms"], spread_of(b) / b["median_ms"])
    return abs(ra["value"] - rb["value"]) <= tolerance * max(ra["value"], rb["value"])


def pct(values, q):
    return sorted(values)[int(q * (len(values) - 1))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("a", help="first report.json")
    ap.add_argument("b", help="second report.json")
    args = ap.parse_args()
    try:
        a, b = (cells(json.load(open(p))) for p in (args.a, args.b))
    except (OSError, ValueError, KeyError) as e:
        print(f"cannot read the reports: {e}", file=sys.stderr)
        return 2
    common = sorted(set(a) & set(b))
    if not common:
        print("no cells in common")
        return 1
    n = len(common)
    print(f"{n} cells in both reports")

    # Ratios: the verdict.
    reference = reference_of(a)
    rated = [k for k in common if "speedup" in a[k] and "speedup" in b[k]
             and not is_reference(a[k], reference)]
    ratio_bad, ratio_rel = [], []
    for k in rated:
        ra, rb = a[k]["speedup"]["value"], b[k]["speedup"]["value"]
        ratio_rel.append(abs(ra - rb) / max(ra, rb))
        if not ratio_agree(a[k], b[k]):
            ratio_bad.append(k)
    if rated:
        m = len(rated)
        print(f"speedups over the reference ({reference}) agree: {m - len(ratio_bad)}/{m} "
              f"({100.0 * (m - len(ratio_bad)) / m:.1f}%); relative difference of the ratios: "
              f"median {100 * statistics.median(ratio_rel):.2f}%, p90 {100 * pct(ratio_rel, 0.9):.2f}%, "
              f"max {100 * max(ratio_rel):.2f}%")
        for k in ratio_bad:
            x, y = a[k]["speedup"], b[k]["speedup"]
            print(f"  speedup disagrees: {k}: {x['value']:.3f} {x.get('ci95', '')} vs "
                  f"{y['value']:.3f} {y.get('ci95', '')}")
    else:
        print("no speedups in these reports (made before kiln bench measured them): "
              "the absolute medians are the verdict")

    # Absolute medians and the drift between the runs.
    drift = [b[k]["median_ms"] / a[k]["median_ms"] - 1 for k in common
             if reference and is_reference(a[k], reference)]
    if drift:
        print(f"drift between the runs (reference cells, latency of b over a): median "
              f"{100 * statistics.median(drift):+.1f}%, from {100 * min(drift):+.1f}% to "
              f"{100 * max(drift):+.1f}%")
    rel, bad, strict = [], [], 0
    for k in common:
        ma, mb = a[k]["median_ms"], b[k]["median_ms"]
        rel.append(abs(ma - mb) / max(ma, mb))
        strict += inside(a[k], b[k])
        if not agree(a[k], b[k]):
            bad.append((k, a[k], b[k]))
    print(f"absolute medians: reported spreads (95% CIs of the median) overlap: {n - len(bad)}/{n} "
          f"({100.0 * (n - len(bad)) / n:.1f}%)")
    print(f"each median inside the other run's interval: {strict}/{n} ({100.0 * strict / n:.1f}%)")
    print(f"relative difference of medians: median {100 * statistics.median(rel):.2f}%, "
          f"p90 {100 * pct(rel, 0.9):.2f}%, max {100 * max(rel):.2f}%")
    for k, x, y in bad:
        print(f"  absolute disagrees: {k}: {x['median_ms']:.3f} ms {x.get('ci95_ms', '')} vs "
              f"{y['median_ms']:.3f} ms {y.get('ci95_ms', '')}")
    if rated:
        return 1 if ratio_bad else 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
