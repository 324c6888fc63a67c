#!/usr/bin/python3
"""Serving benchmark, every number from one run on this machine: the goals of the serving issue
measured side by side.

  1. engine only: `kiln bench --model EXPORT/model.onnx` (ONNX Runtime, the server's threads,
     the server's max batch), no HTTP;
  2. `kiln serve` (EXPORT/model.onnx, and every --serve model, one at a time; max_batch_size 32,
     dynamic batching) under wrk at each concurrency, 32x32 PNG test images as raw `image/png`
     bodies to /predict; the average batch per level from the server's own statistics
     (inference_count / execution_count deltas);
  3. `kiln loadgen --request-rate` at half of Kiln's saturation rate (open loop, latency from
     each request's due time): p99 there;
  4. the FastAPI + PyTorch baseline (bench/fastapi_baseline.py, model.pt) under the same wrk load;
  5. with --perf-analyzer: Triton's own perf_analyzer (scripts/perf_analyzer.sh, HTTP and gRPC)
     beside `kiln loadgen --mode binary` (HTTP and gRPC) against the same `kiln serve`, at each concurrency and
     at the half-saturation rate (bench/perf_vs_loadgen.py's measurement, --perf-rounds rounds).

Writes OUT/serve_bench.json and OUT/serve_bench.md and prints the markdown. Server, load
generator and engine share the machine: on 2 cores the load generator takes CPU from the server,
as it would for a user running perf_analyzer beside Triton.

  /usr/bin/python3 bench/serve_bench.py --export runs/pipeline/train/export \\
      --serve int8-static=runs/pipeline/optimized/int8-static.onnx --out runs/serve-bench
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import perf_vs_loadgen  # noqa: E402


def log(msg):
    print(f"[serve-bench] {msg}", file=sys.stderr, flush=True)


def get_json(url, method="GET"):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def wait_ready(url, proc, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {seconds} s")


def to_ms(text):
    """wrk's '1.23ms' / '456.00us' / '1.20s' -> milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def wrk(url, image, concurrency, duration):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}", "-s",
         os.path.join(ROOT, "bench", "predict_png.lua"), url, "--latency", "--", image],
        check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"concurrency": concurrency, "images_per_second": rps,
            "p50_ms": to_ms(lat.get("50", "nan")), "p90_ms": to_ms(lat.get("90", "nan")),
            "p99_ms": to_ms(lat.get("99", "nan")),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else ""}


def model_counts(base, model):
    stats = get_json(f"{base}/v2/models/{model}/stats")["model_stats"]
    return (sum(s["inference_count"] for s in stats), sum(s["execution_count"] for s in stats))


def serve_one(a, name, model_file, image, images, levels, work):
    """kiln serve with one model under wrk at each level, then the open-loop half-rate run."""
    repo = os.path.join(work, "repo-" + name)
    os.makedirs(os.path.join(repo, name, "1"))
    shutil.copy(model_file, os.path.join(repo, name, "1", "model.onnx"))
    with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
        f.write(f"max_batch_size: {a.max_batch}\n"
                f"dynamic_batching {{ max_queue_delay_microseconds: {a.queue_delay_us} }}\n")
    base = f"http://127.0.0.1:{a.port}"
    grpc_port = perf_vs_loadgen.free_port() if a.perf_analyzer else 0
    server = subprocess.Popen([a.kiln, "serve", "--models", repo, "--port", str(a.port),
                               "--metrics-port", "0", "--grpc-port", str(grpc_port),
                               "--threads", str(a.threads)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {"model_file": model_file}
    try:
        wait_ready(f"{base}/v2/health/ready", server)
        url = f"{base}/predict?model={name}"
        wrk(url, image, levels[-1], "2s")  # warm-up
        rows = []
        for c in levels:
            before = model_counts(base, name)
            row = wrk(url, image, c, a.duration)
            after = model_counts(base, name)
            execs = after[1] - before[1]
            row["average_batch"] = (after[0] - before[0]) / execs if execs else 0.0
            log(f"kiln serve {name} c={c}: {row['images_per_second']:.0f} images/s, "
                f"p99 {row['p99_ms']:.2f} ms, average batch {row['average_batch']:.2f}")
            rows.append(row)
        out["levels"] = rows
        saturation = max(r["images_per_second"] for r in rows)
        half = saturation / 2
        log(f"kiln loadgen --request-rate {half:.0f} (half of {saturation:.0f})")
        csv = os.path.join(a.out, f"half_rate_{name}.csv")
        lg = subprocess.run([a.kiln, "loadgen", "--url", base, "-m", name, "--mode", "image",
                             "--images", images, "--request-rate", f"{half:.1f}",
                             "--window-ms", "3000", "--csv", csv],
                            check=True, capture_output=True, text=True)
        log(lg.stdout.strip())
        with open(csv) as f:
            header, values = f.read().strip().splitlines()[:2]
        row = dict(zip(header.split(","), values.split(",")))
        out["half_saturation"] = {
            "saturation_images_per_second": saturation, "request_rate": half,
            "achieved_images_per_second": float(row["Inferences/Second"]),
            "p50_ms": float(row["p50 latency"]) / 1e3, "p99_ms": float(row["p99 latency"]) / 1e3,
            "loadgen_output": lg.stdout}
        if a.perf_analyzer:
            log("perf_analyzer (HTTP, gRPC) beside kiln loadgen at each concurrency and at "
                f"{half:.0f} requests/s")
            server_info = {"model": name, "http_port": a.port, "grpc_port": grpc_port}
            perf_levels = [("concurrency", float(c)) for c in levels] + [("rate", round(half))]
            out["perf_analyzer"] = perf_vs_loadgen.measure(
                server_info, a.kiln, perf_levels, a.perf_rounds, 2000,
                os.path.join(a.out, f"perf_analyzer_{name}"))
    finally:
        server.send_signal(signal.SIGTERM)
        out["exit_code_after_sigterm"] = server.wait(timeout=60)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--export", required=True, help="folder with model.onnx and model.pt (kiln export)")
    p.add_argument("--serve", action="append", default=[], metavar="NAME=FILE.onnx",
                   help="models kiln serve is measured with, one after the other (default: "
                        "fp32=EXPORT/model.onnx); e.g. --serve int8-static=runs/x/optimized/int8-static.onnx")
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar-10-binary.tar.gz"))
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "serve-bench"))
    p.add_argument("--kiln", default=os.path.join(ROOT, "build", "release", "kiln"))
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--duration", default="10s", help="wrk duration per level")
    p.add_argument("--threads", type=int, default=2, help="engine threads (server and engine-only)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--queue-delay-us", type=int, default=500)
    p.add_argument("--port", type=int, default=18400)
    p.add_argument("--no-baseline", action="store_true", help="skip the FastAPI baseline")
    p.add_argument("--perf-analyzer", action="store_true",
                   help="also measure with Triton's perf_analyzer beside kiln loadgen "
                        "(scripts/perf_analyzer.sh; scripts/setup.sh provisions it)")
    p.add_argument("--perf-rounds", type=int, default=1, help="--perf-analyzer: rounds per level")
    a = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("serve_bench: wrk is not installed (scripts/setup.sh installs it)")
    if a.perf_analyzer and subprocess.run([perf_vs_loadgen.PERF_ANALYZER, "--version"],
                                          capture_output=True).returncode != 0:
        sys.exit("serve_bench: scripts/perf_analyzer.sh does not run (scripts/setup.sh provisions it)")
    export = os.path.abspath(a.export)
    pt = os.path.join(export, "model.pt")
    served = [("fp32", os.path.join(export, "model.onnx"))]
    for spec in a.serve:
        if "=" not in spec:
            sys.exit(f"serve_bench: --serve {spec}: expected NAME=FILE.onnx")
        name, path = spec.split("=", 1)
        if name == "fp32":
            served = []
        served.append((name, os.path.abspath(path)))
    for name, path in served:
        if not os.path.exists(path):
            sys.exit(f"serve_bench: {path} not found")
    os.makedirs(a.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="kiln-serve-bench-")
    levels = [int(c) for c in a.concurrency.split(",")]
    result = {"export": export, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(sys.argv), "threads": a.threads, "max_batch_size": a.max_batch,
              "max_queue_delay_microseconds": a.queue_delay_us, "wrk_duration": a.duration,
              "served": {}}
    try:
        # Real test images as PNG files.
        images = os.path.join(work, "images")
        subprocess.run([a.kiln, "data", "images", "--data", a.data, "--out", images, "--count", "256"],
                       check=True, stdout=subprocess.DEVNULL)
        image = sorted(glob.glob(os.path.join(images, "*.png")))[0]

        # 1. Engine only, every served model in one kiln bench run.
        log("engine only: kiln bench --model " + " ".join(path for _, path in served))
        batches = sorted({1, 8, a.max_batch})
        engine_dir = os.path.join(work, "engine")
        os.makedirs(engine_dir)
        args = [a.kiln, "bench", "--data", a.data, "--engines", "onnxruntime", "--threads", str(a.threads),
                "--batch-sizes", ",".join(map(str, batches)), "--no-peers", "--rounds", "3",
                "-o", os.path.join(a.out, "engine")]
        for name, path in served:  # one file per variant, named like the served model
            os.symlink(path, os.path.join(engine_dir, name + ".onnx"))
            args += ["--model", os.path.join(engine_dir, name + ".onnx")]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        engine = json.load(open(os.path.join(a.out, "engine", "report.json")))

        # 2-3. kiln serve, one model at a time.
        for name, path in served:
            entry = serve_one(a, name, path, image, images, levels, work)
            entry["engine_only"] = {str(r["batch"]): r["images_per_second"]
                                    for r in engine["results"] if r["variant"] == name}
            result["served"][name] = entry

        # 4. The FastAPI baseline.
        if not a.no_baseline and os.path.exists(pt):
            port = a.port + 1
            base_proc = subprocess.Popen(["/usr/bin/python3", os.path.join(ROOT, "bench", "fastapi_baseline.py"),
                                          "--model", pt, "--port", str(port), "--threads", str(a.threads)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_ready(f"http://127.0.0.1:{port}/health", base_proc)
                url = f"http://127.0.0.1:{port}/predict"
                wrk(url, image, levels[-1], "2s")
                rows = []
                for c in levels:
                    row = wrk(url, image, c, a.duration)
                    log(f"fastapi c={c}: {row['images_per_second']:.0f} images/s, p99 {row['p99_ms']:.2f} ms")
                    rows.append(row)
                result["baseline"] = rows
            finally:
                base_proc.terminate()
                base_proc.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # Goals, computed from the numbers above.
    top = levels[-1]
    base_top = None
    if "baseline" in result:
        base_top = next(r for r in result["baseline"] if r["concurrency"] == top)
    for name, entry in result["served"].items():
        kiln_top = next(r for r in entry["levels"] if r["concurrency"] == top)
        goals = {"served_over_engine": kiln_top["images_per_second"] / entry["engine_only"][str(a.max_batch)],
                 "average_batch_grows": all(x["average_batch"] <= y["average_batch"] + 1e-9
                                            for x, y in zip(entry["levels"], entry["levels"][1:])),
                 "p99_at_half_saturation_ms": entry["half_saturation"]["p99_ms"]}
        if base_top:
            goals["kiln_over_baseline"] = kiln_top["images_per_second"] / base_top["images_per_second"]
        entry["goals"] = goals
    with open(os.path.join(a.out, "serve_bench.json"), "w") as f:
        json.dump(result, f, indent=2)

    md = [f"# Serving benchmark ({result['created']})", "",
          f"`{result['command']}`; {a.threads} engine threads; Kiln with max_batch_size {a.max_batch}, "
          f"max_queue_delay_microseconds {a.queue_delay_us}, one instance; wrk -t1 for {a.duration} per "
          "level with a 32x32 PNG test image as the raw body of POST /predict; server and load "
          "generator on the same machine. The baseline serves the FP32 TorchScript export "
          f"(`{pt}`).", "",
          "| server | " + " | ".join(f"c={c} images/s (p50 / p99 ms)" for c in levels) + " | average batch |",
          "|---|" + "---|" * len(levels) + "---|"]

    def line(label, rows, batches=None):
        cells = [f"{r['images_per_second']:,.0f} ({r['p50_ms']:.2f} / {r['p99_ms']:.2f})"
                 + (f" [{r['non_2xx']} non-2xx]" if r["non_2xx"] else "") for r in rows]
        md.append(f"| {label} | " + " | ".join(cells) + f" | {batches or '1 (no batching)'} |")

    for name, entry in result["served"].items():
        line(f"`kiln serve` {name} (ONNX Runtime)", entry["levels"],
             " → ".join(f"{r['average_batch']:.2f}" for r in entry["levels"]))
    if "baseline" in result:
        line("FastAPI + PyTorch baseline (FP32)", result["baseline"])
    md += ["", "| served model | engine only, images/s (b=1 / 8 / " + str(a.max_batch) + ") | served at c="
           + str(top) + " / engine-only b=" + str(a.max_batch) + " (goal ≥ 50%) | over the baseline at c="
           + str(top) + " (goal ≥ 10x) | saturation | p99 at half of it, open loop (goal ≤ 20 ms) | average batch grows | exit code after SIGTERM |",
           "|---|---|---|---|---|---|---|---|"]
    for name, entry in result["served"].items():
        g, hs = entry["goals"], entry["half_saturation"]
        eo = " / ".join(f"{entry['engine_only'][str(b)]:,.0f}" for b in batches)
        md.append(f"| {name} | {eo} | {100 * g['served_over_engine']:.0f}% | "
                  + (f"{g['kiln_over_baseline']:.1f}x" if "kiln_over_baseline" in g else "-")
                  + f" | {hs['saturation_images_per_second']:,.0f}/s | {hs['p99_ms']:.2f} ms at "
                  f"{hs['request_rate']:,.0f}/s (achieved {hs['achieved_images_per_second']:,.0f}/s; p50 "
                  f"{hs['p50_ms']:.2f} ms) | {'yes' if g['average_batch_grows'] else 'no'} | "
                  f"{entry['exit_code_after_sigterm']} |")
    for name, entry in result["served"].items():
        if "perf_analyzer" in entry:
            md += ["", f"Triton's perf_analyzer beside `kiln loadgen` on the same `kiln serve` "
                   f"({name}): batch-1 binary tensor requests to /v2/models/{name}/infer, 2 s "
                   f"windows, {a.perf_rounds} round(s); spread = min–max over the rounds "
                   "(bench/perf_vs_loadgen.py).", ""]
            md += perf_vs_loadgen.markdown(entry["perf_analyzer"])
    text = "\n".join(md) + "\n"
    with open(os.path.join(a.out, "serve_bench.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
