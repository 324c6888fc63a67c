#!/usr/bin/env python3
"""How much the speedups of `kiln bench` scatter between rounds, by how long a cell's call takes.

For each report.json: every interleaved cell's round ratios (its images/s over the reference's in
the same round), their coefficient of variation (population sd / mean), grouped by the cell's
median latency; printed beside the run's own drift of the reference between rounds. Shows
whether short calls (INT8 at batch 1) carry noisier ratios than long ones on a busy machine.

  python3 bench/ratio_noise.py runs/bench-1/report.json runs/bench-2/report.json
"""
import argparse
import json
import statistics

BANDS = [(0.0, 0.5, "<0.5 ms"), (0.5, 2.0, "0.5-2 ms"), (2.0, 30.0, "2-30 ms"),
         (30.0, float("inf"), ">=30 ms")]


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="kiln bench report.json files")
    a = p.parse_args()
    print("| report | reference drift between rounds (median) | "
          + " | ".join(f"CV of round ratios, calls {b[2]} (cells)" for b in BANDS) + " |")
    print("|---|---|" + "---|" * len(BANDS))
    for path in a.reports:
        with open(path) as f:
            report = json.load(f)
        reference = report["drift"]["reference"]
        bands = {b[2]: [] for b in BANDS}
        for cell in report["results"]:
            speedup = cell.get("speedup")
            if not speedup or not speedup.get("interleaved", False):
                continue
            if f"{cell['variant']} / {cell['engine']}" == reference:
                continue
            ratios = speedup["round_ratios"]
            if len(ratios) < 2:
                continue
            cv = statistics.pstdev(ratios) / statistics.mean(ratios)
            for low, high, name in BANDS:
                if low <= cell["median_ms"] < high:
                    bands[name].append(cv)
        cols = [f"{100 * statistics.median(v):.1f}% ({len(v)})" if v else "-"
                for v in bands.values()]
        drift = report["drift"]["between_rounds"]["median"]
        print(f"| {path} | {100 * drift:.1f}% | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
