#!/usr/bin/env python3
"""airbench94's recipe with each part turned off, one at a time: accuracy and time.

Runs `kiln train --arch airbench94` once with the full recipe and once per ablated part, one
run at a time (never two heavy jobs on the machine), each into <out>/<part>/, and writes
<out>/ablation.json and <out>/ABLATION.md. Test-time augmentation needs no run of its own:
every run's summary.json has the test accuracy with and without it.

  bench/airbench_ablation.py --out runs/ablation --epochs 10 --seed 1
  bench/airbench_ablation.py --out runs/ablation --epochs 3 --parts full,no-lookahead

A part whose <out>/<part>/summary.json exists is not run again (delete the folder to re-run).
"""
import argparse
import json
import os
import subprocess
import sys
import time

# part -> (what is turned off, extra `kiln train` flags)
PARTS = {
    "full": ("nothing (the whole recipe)", []),
    "no-whitening": ("patch-whitening initialisation (first layer random and trained)",
                     ["--whitening-init", "false"]),
    "no-identity-init": ("identity initialisation of the 3x3 convolutions",
                         ["--identity-init", "false"]),
    "whiten-bias-always": ("freezing the whitening bias after 3 epochs (trained throughout)",
                           ["--whiten-bias-epochs", "1000"]),
    "no-bias-lr-scale": ("the 64x learning rate of batch-norm biases",
                         ["--bias-lr-scale", "1"]),
    "no-label-smoothing": ("label smoothing 0.2", ["--label-smoothing", "0"]),
    "no-lookahead": ("lookahead (weight averaging every 5 steps)", ["--lookahead", "false"]),
    "random-flip": ("alternating flip (random flip per image and epoch instead)",
                    ["--alternating-flip", "false"]),
    "no-translate": ("translation by up to 2 pixels (reflect padding)", ["--no-crop"]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", default="build/release/kiln")
    ap.add_argument("--data", default="../shared/data/cifar-10-binary.tar.gz")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated, from: " + ", ".join(PARTS))
    a = ap.parse_args()
    parts = [p for p in a.parts.split(",") if p]
    for p in parts:
        if p not in PARTS:
            ap.error(f"unknown part '{p}' (known: {', '.join(PARTS)})")
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for i, part in enumerate(parts):
        what, flags = PARTS[part]
        out = os.path.join(a.out, part)
        cmd = [a.kiln, "train", "--arch", "airbench94", "--data", a.data, "--epochs", str(a.epochs),
               "--seed", str(a.seed), "--threads", str(a.threads), "--out", out, *flags]
        summary_file = os.path.join(out, "summary.json")
        if not os.path.exists(summary_file):
            print(f"[{i + 1}/{len(parts)}] {part}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            with open(os.path.join(a.out, part + ".log"), "w") as log:
                rc = subprocess.run(cmd + ["--restart"], stdout=log, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                sys.exit(f"{part}: kiln train exited {rc} (see {out}.log)")
            print(f"    done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        with open(summary_file) as f:
            s = json.load(f)
        rows.append({"part": part, "turned_off": what, "flags": flags,
                     "test_accuracy": s["test_accuracy"],
                     "test_accuracy_without_tta": s.get("test_accuracy_without_tta"),
                     "tta": s.get("tta"), "wall_seconds": s["wall_seconds"],
                     "train_seconds": s["train_seconds"]})
    with open(os.path.join(a.out, "ablation.json") + ".tmp", "w") as f:
        json.dump({"epochs": a.epochs, "seed": a.seed, "threads": a.threads, "rows": rows}, f, indent=2)
    os.replace(os.path.join(a.out, "ablation.json") + ".tmp", os.path.join(a.out, "ablation.json"))
    full = next((r for r in rows if r["part"] == "full"), None)
    lines = [f"airbench94, {a.epochs} epochs, seed {a.seed}, {a.threads} threads; test accuracy on "
             "the 10,000 test images (with the model's flip test-time augmentation, and without)",
             "", "| turned off | test acc. (flip TTA) | without TTA | change | wall time |",
             "|---|---|---|---|---|"]
    for r in rows:
        change = "" if full is None or r is full else f"{100 * (r['test_accuracy'] - full['test_accuracy']):+.2f}"
        lines.append(f"| {r['turned_off']} | {100 * r['test_accuracy']:.2f}% | "
                     f"{100 * r['test_accuracy_without_tta']:.2f}% | {change} | {r['wall_seconds']:.0f} s |")
    with open(os.path.join(a.out, "ABLATION.md") + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(a.out, "ABLATION.md") + ".tmp", os.path.join(a.out, "ABLATION.md"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
