#!/usr/bin/python3
"""Two or more `kiln serve` variants measured side by side in one run: the same model, each
variant its own server process (a kiln binary and extra `kiln serve` arguments); every round runs
`kiln loadgen` (binary tensors, fixed concurrency) against each variant in turn, the order
alternating between rounds so that the machine's drift over the run falls on all alike. Prints
images/s and p99 per round, their medians and spread, and each variant's ratio to the first.

  /usr/bin/python3 bench/serve_ab.py --model runs/x/export/model.onnx \\
      --variant 'before=/work/before/build/release/kiln' --variant 'after=build/release/kiln'
  /usr/bin/python3 bench/serve_ab.py --model M --variant 'on=build/release/kiln' \\
      --variant 'off=build/release/kiln --drift-window-size 0'

A variant is NAME=KILN_BINARY followed by extra `kiln serve` arguments (split like a shell
would, without a shell). The first variant's loadgen (`--loadgen`, default the first variant's
binary) drives every server.
"""
import argparse
import csv
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

from serve_bench import wait_ready  # the same readiness wait as the serving benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 32
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""


def parse_variant(text):
    name, _, rest = text.partition("=")
    args = shlex.split(rest)
    if not name or not args:
        raise argparse.ArgumentTypeError(f"variant '{text}': expected NAME=KILN_BINARY [ARGS...]")
    return name, args[0], args[1:]


def compare(model, variants, rounds=5, concurrency=32, window_ms=3000, base_port=18400,
            loadgen=None):
    """Runs the comparison; returns {name: [(images/s, p99 ms), ...]}."""
    tmp = tempfile.mkdtemp(prefix="kiln-serve-ab-")
    procs = {}
    loadgen = loadgen or variants[0][1]
    try:
        os.makedirs(os.path.join(tmp, "repo", "m", "1"))
        shutil.copy(model, os.path.join(tmp, "repo", "m", "1", "model.onnx"))
        with open(os.path.join(tmp, "repo", "m", "config.pbtxt"), "w") as f:
            f.write(CONFIG)
        ports = {}
        for i, (name, kiln, extra) in enumerate(variants):
            port = base_port + 10 * i
            ports[name] = port
            log = open(os.path.join(tmp, f"serve{i}.log"), "w")
            procs[name] = subprocess.Popen(
                [kiln, "serve", "--models", os.path.join(tmp, "repo"), "--port", str(port),
                 "--metrics-port", "0", "--grpc-port", "0", "--threads", "2"] + extra,
                stdout=log, stderr=subprocess.STDOUT)
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", procs[name])
        results = {name: [] for name in ports}
        for r in range(rounds):
            order = list(ports) if r % 2 == 0 else list(reversed(ports))
            for name in order:
                out = os.path.join(tmp, f"r{r}-{name}.csv")
                subprocess.run(
                    [loadgen, "loadgen", "--url", f"http://127.0.0.1:{ports[name]}", "-m", "m",
                     "--mode", "binary", "--concurrency", str(concurrency), "--window-ms",
                     str(window_ms), "--max-windows", "5", "--csv", out],
                    check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                with open(out) as f:
                    row = next(csv.DictReader(f))
                ips = float(row["Inferences/Second"])
                p99 = float(row["p99 latency"]) / 1000
                results[name].append((ips, p99))
                print(f"round {r + 1} {name:10s}: {ips:8.1f} images/s, p99 {p99:6.2f} ms",
                      flush=True)
        return results
    finally:
        for proc in procs.values():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(results, concurrency, rounds):
    print()
    med = {}
    for name, rs in results.items():
        ips = [x[0] for x in rs]
        med[name] = statistics.median(ips)
        print(f"{name:10s}: median {med[name]:8.1f} images/s (min {min(ips):.1f}, max "
              f"{max(ips):.1f}), median p99 {statistics.median(x[1] for x in rs):.2f} ms")
    first = next(iter(results))
    for name in list(results)[1:]:
        print(f"{name} / {first}: {med[name] / med[first]:.3f} "
              f"(c={concurrency}, {rounds} rounds, alternating order)")
    return med


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="ONNX model (served as model 'm')")
    p.add_argument("--variant", action="append", type=parse_variant, required=True,
                   help="NAME=KILN_BINARY [serve args...]; give two or more")
    p.add_argument("--loadgen", help="kiln binary whose loadgen drives every server")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--window-ms", type=int, default=3000)
    p.add_argument("--base-port", type=int, default=18400)
    a = p.parse_args()
    if len(a.variant) < 2:
        p.error("give at least two --variant")
    results = compare(a.model, a.variant, a.rounds, a.concurrency, a.window_ms, a.base_port,
                      a.loadgen)
    summarize(results, a.concurrency, a.rounds)


if __name__ == "__main__":
    sys.exit(main())
