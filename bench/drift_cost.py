#!/usr/bin/python3
"""The cost of drift tracking on serving throughput, measured side by side in one run.

Two `kiln serve` processes on the same model, one with drift tracking and one with
--drift-window-size 0, compared by bench/serve_ab.py (kiln loadgen, binary tensors, fixed
concurrency, alternating order per round). Prints images/s and p99 per round, their medians and
spread, and the ratio with/without.

  /usr/bin/python3 bench/drift_cost.py --model runs/x/export/model.onnx [--rounds 5]
"""
import argparse
import os
import sys

from serve_ab import ROOT, compare, summarize


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="ONNX model with a drift reference")
    p.add_argument("--kiln", default=os.path.join(ROOT, "build/release/kiln"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--window-ms", type=int, default=3000)
    p.add_argument("--base-port", type=int, default=18400)
    p.add_argument("--start-off-first", action="store_true",
                   help="start the server without drift tracking first (a check that the order "
                        "of start-up does not decide the result)")
    a = p.parse_args()
    variants = [("drift on", a.kiln, []), ("drift off", a.kiln, ["--drift-window-size", "0"])]
    if a.start_off_first:
        variants.reverse()
    results = compare(a.model, variants, a.rounds, a.concurrency, a.window_ms, a.base_port)
    med = summarize({n: results[n] for n in ("drift on", "drift off")}, a.concurrency, a.rounds)
    print(f"drift on / drift off: {med['drift on'] / med['drift off']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
