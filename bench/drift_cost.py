#!/usr/bin/python3
"""The cost of drift tracking on serving throughput, measured side by side in one run.

Starts two `kiln serve` processes on the same model (one with drift tracking, one with
--drift-window-size 0), then for each round runs `kiln loadgen` (binary tensors, fixed
concurrency) against one and then the other, alternating which goes first, so the machine's
drift over the run falls on both alike. Prints images/s and p99 per round and their medians
and spread, and the ratio with/without.

  /usr/bin/python3 bench/drift_cost.py --model runs/x/export/model.onnx [--rounds 5]
"""
import argparse
import csv
import os
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
    tmp = tempfile.mkdtemp(prefix="kiln-drift-cost-")
    procs = {}
    try:
        os.makedirs(os.path.join(tmp, "repo", "m", "1"))
        shutil.copy(a.model, os.path.join(tmp, "repo", "m", "1", "model.onnx"))
        with open(os.path.join(tmp, "repo", "m", "config.pbtxt"), "w") as f:
            f.write(CONFIG)
        ports = {}
        servers = [("drift on", []), ("drift off", ["--drift-window-size", "0"])]
        if a.start_off_first:
            servers.reverse()
        for i, (name, extra) in enumerate(servers):
            port = a.base_port + 10 * i
            ports[name] = port
            log = open(os.path.join(tmp, f"serve{i}.log"), "w")
            procs[name] = subprocess.Popen(
                [a.kiln, "serve", "--models", os.path.join(tmp, "repo"), "--port", str(port),
                 "--metrics-port", "0", "--grpc-port", "0", "--threads", "2"] + extra,
                stdout=log, stderr=subprocess.STDOUT)
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", procs[name])
        results = {name: [] for name in ports}
        for r in range(a.rounds):
            order = list(ports) if r % 2 == 0 else list(reversed(ports))
            for name in order:
                out = os.path.join(tmp, f"r{r}-{name.replace(' ', '-')}.csv")
                subprocess.run(
                    [a.kiln, "loadgen", "--url", f"http://127.0.0.1:{ports[name]}", "-m", "m",
                     "--mode", "binary", "--concurrency", str(a.concurrency), "--window-ms",
                     str(a.window_ms), "--max-windows", "5", "--csv", out],
                    check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                with open(out) as f:
                    row = next(csv.DictReader(f))
                ips = float(row["Inferences/Second"])
                p99 = float(row["p99 latency"]) / 1000
                results[name].append((ips, p99))
                print(f"round {r + 1} {name:9s}: {ips:8.1f} images/s, p99 {p99:6.2f} ms", flush=True)
        print()
        med = {}
        for name, rs in results.items():
            ips = [x[0] for x in rs]
            med[name] = statistics.median(ips)
            print(f"{name:9s}: median {med[name]:8.1f} images/s (min {min(ips):.1f}, max {max(ips):.1f}),"
                  f" median p99 {statistics.median(x[1] for x in rs):.2f} ms")
        print(f"drift on / drift off: {med['drift on'] / med['drift off']:.3f} "
              f"(c={a.concurrency}, {a.rounds} rounds, alternating order)")
    finally:
        for proc in procs.values():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
