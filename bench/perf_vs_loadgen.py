#!/usr/bin/python3
"""Triton's perf_analyzer and `kiln loadgen` side by side against one `kiln serve`, in one run.

For every load level (closed loop at each --concurrency, open loop at each --request-rate) and
every round, four measurements one after the other, their order rotated from round to round:
  - perf_analyzer over HTTP (scripts/perf_analyzer.sh -i http: binary tensors, random data);
  - kiln loadgen over HTTP (--mode binary: the same binary tensor request perf_analyzer sends);
  - perf_analyzer over gRPC (-i grpc: raw_input_contents);
  - kiln loadgen over gRPC (-i grpc --mode binary: raw_input_contents too).
At a request rate both tools get the same --max-threads, and kiln loadgen counts latency from
when a request left (--latency-from send), as perf_analyzer does; its own default, from the
request's due time, also counts the wait of a request that left late (the share that left more
than 1 ms late is kept as "late").
Both tools use the same measurement window (--window-ms) and take windows until the last three
are stable, then report those three windows merged. Their stopping rules differ: kiln loadgen
wants throughput and p99 within 10%; perf_analyzer wants throughput and its average latency
within 10% (max/min), or the --percentile latency with --pa-percentile. perf_analyzer gives
up on a level it cannot stabilize within -r windows (no row; shown as failed), kiln loadgen
reports it marked "not stable". Every CSV is read with
bench/perf_csv.py. The spread of a tool at a level is the min–max over the rounds; the two
tools agree on a number when their ranges overlap. Because the four ran back to back in every
round, each round also gives a paired ratio, kiln loadgen / perf_analyzer on the same protocol:
its median and min–max over the rounds show a bias of one tool that the machine's drift from
round to round would hide in the ranges (a range of ratios that holds 1.00 is no bias).

Writes OUT/perf_vs_loadgen.json, OUT/perf_vs_loadgen.md (printed) and every raw CSV in OUT/raw;
--render OUT renders the markdown again from the JSON.

  /usr/bin/python3 bench/perf_vs_loadgen.py --model runs/x/export/model.onnx --out runs/pa \\
      --concurrency 1,4,16 --request-rate 200,500 --rounds 3

Run it alone on the machine (under the CPU lock): server and load generators share the cores.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import perf_csv  # noqa: E402

PERF_ANALYZER = os.path.join(ROOT, "scripts", "perf_analyzer.sh")
TOOLS = ["perf_analyzer http", "kiln loadgen http", "perf_analyzer grpc", "kiln loadgen grpc"]
PROTOCOLS = ["http", "grpc"]
RATE_THREADS = 16  # --max-threads of both tools at a request rate
THROUGHPUT_EQUAL = 0.005  # medians this close agree even when their ranges miss each other
METRICS = ["throughput", "p50_ms", "p99_ms", "server_queue_ms", "server_compute_ms",
           "client_cores"]


def log(msg):
    print(f"[perf-vs-loadgen] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def level_label(kind, value):
    return f"c={value:g}" if kind == "concurrency" else f"{value:g} req/s"


def run_one(tool, kind, value, server, window_ms, csv_path, kiln, pa_percentile=None,
            max_windows=10):
    """One measurement; returns perf_csv's summary of its row, or {"error": text}."""
    if tool.startswith("perf_analyzer"):
        proto = tool.split()[1]
        port = server["http_port"] if proto == "http" else server["grpc_port"]
        cmd = [PERF_ANALYZER, "-m", server["model"], "-u", f"127.0.0.1:{port}", "-i", proto,
               "-p", str(window_ms), "-r", str(max_windows), "--verbose-csv", "-f", csv_path]
        if pa_percentile:
            cmd.append(f"--percentile={pa_percentile}")
        cmd += (["--concurrency-range", f"{value:g}"] if kind == "concurrency"
                else ["--request-rate-range", f"{value:g}", "--max-threads", str(RATE_THREADS)])
    else:
        proto = tool.split()[2]
        url = (f"http://127.0.0.1:{server['http_port']}" if proto == "http"
               else f"127.0.0.1:{server['grpc_port']}")
        cmd = [kiln, "loadgen", "-i", proto, "--url", url, "-m", server["model"], "--mode",
               "binary", "--window-ms", str(window_ms), "--max-windows", str(max_windows + 1),
               "--csv", csv_path]
        cmd += (["--concurrency", f"{value:g}"] if kind == "concurrency"
                else ["--request-rate", f"{value:g}", "--max-threads", str(RATE_THREADS),
                      "--latency-from", "send"])
    # The cores the tool took from a machine it shares with the server, while measuring: the
    # slope of its CPU time (all threads, /proc/PID/stat) from 1 s after its start, past its own
    # start-up (the kiln binary loads its engines' libraries: ~0.5 s of CPU), to its last sample.
    with tempfile.TemporaryFile("w+") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, text=True)
        samples, t0 = [], time.monotonic()
        while proc.poll() is None:
            time.sleep(0.25)
            ticks = cpu_ticks(proc.pid)
            if ticks is not None and time.monotonic() - t0 >= 1.0:
                samples.append((time.monotonic(), ticks))
        proc.wait()
        log_file.seek(0)
        text = log_file.read()
    cpu = wall = 0.0
    if len(samples) >= 2:
        wall = samples[-1][0] - samples[0][0]
        cpu = (samples[-1][1] - samples[0][1]) / os.sysconf("SC_CLK_TCK")
    if proc.returncode != 0 or not os.path.exists(csv_path):
        return {"error": f"exit {proc.returncode}: {text.strip()[-400:]}", "command": " ".join(cmd)}
    rows = perf_csv.load(csv_path)["rows"]
    out = perf_csv.summary(rows[0])
    out["client_cores"] = cpu / wall if wall > 0 else float("nan")
    out["stable"] = "not stable" not in text and "Failed to obtain stable" not in text
    out["late_percent"] = late_percent(text) if tool.startswith("kiln") else None
    out["command"] = " ".join(cmd)
    return out


def cpu_ticks(pid):
    """utime + stime of a live process, all its threads (clock ticks); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def late_percent(text):
    """kiln loadgen's "late" column (rate mode): the share of requests that left > 1 ms late."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[-1].endswith("%") and parts[0][0].isdigit():
            return float(parts[-1].rstrip("%"))
    return None


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def overlap(a, b):
    return a["min"] <= b["max"] and b["min"] <= a["max"]


def measure(server, kiln, levels, rounds, window_ms, raw_dir, pa_percentile=None, max_windows=10):
    """levels: [("concurrency", 1), ("rate", 200), ...]. Returns the result dict."""
    os.makedirs(raw_dir, exist_ok=True)
    runs = []
    for r in range(rounds):
        for kind, value in levels:
            order = TOOLS[r % len(TOOLS):] + TOOLS[:r % len(TOOLS)]
            for tool in order:
                name = (f"{tool.replace(' ', '_')}_{'c' if kind == 'concurrency' else 'rate'}"
                        f"{value:g}_round{r + 1}.csv")
                res = run_one(tool, kind, value, server, window_ms, os.path.join(raw_dir, name),
                              kiln, pa_percentile, max_windows)
                res.update({"tool": tool, "kind": kind, "level": value, "round": r + 1,
                            "csv": name})
                if "error" in res:
                    log(f"round {r + 1} {level_label(kind, value)} {tool}: FAILED {res['error']}")
                else:
                    log(f"round {r + 1} {level_label(kind, value)} {tool}: "
                        f"{res['throughput']:.0f}/s p50 {res['p50_ms']:.2f} p99 {res['p99_ms']:.2f} ms"
                        + ("" if res["stable"] else " (not stable)"))
                runs.append(res)
    return {"runs": runs, "table": summarize(runs, levels, rounds)}


def summarize(runs, levels, rounds):
    """The table of measure()'s runs: per level and tool the spread over the rounds, per level
    and protocol how kiln loadgen compares with perf_analyzer."""
    table = []
    for kind, value in levels:
        per_tool = {}
        for tool in TOOLS:
            ok = [x for x in runs if x["tool"] == tool and x["kind"] == kind
                  and x["level"] == value and "error" not in x]
            if ok:
                per_tool[tool] = {m: spread([x[m] for x in ok]) for m in METRICS}
                per_tool[tool]["unstable_rounds"] = sum(not x["stable"] for x in ok)
                late = [x["late_percent"] for x in ok if x.get("late_percent") is not None]
                if late:
                    per_tool[tool]["late_percent_max"] = max(late)
            per_tool.setdefault(tool, {})["failed_rounds"] = sum(
                1 for x in runs if x["tool"] == tool and x["kind"] == kind
                and x["level"] == value and "error" in x)
        agree = {}
        for proto in PROTOCOLS:
            pa, lg = per_tool.get(f"perf_analyzer {proto}", {}), per_tool.get(f"kiln loadgen {proto}", {})
            if "throughput" not in pa or "throughput" not in lg:
                continue
            a = {m: overlap(pa[m], lg[m]) for m in ("throughput", "p99_ms")}
            a["throughput_ratio"] = lg["throughput"]["median"] / pa["throughput"]["median"]
            # At a request rate both deliver the offered rate, each within a fraction of a
            # percent over the rounds: ranges that narrow may miss each other by 0.1%.
            a["throughput"] = a["throughput"] or abs(a["throughput_ratio"] - 1) < THROUGHPUT_EQUAL
            a["p99_ratio"] = lg["p99_ms"]["median"] / pa["p99_ms"]["median"]
            # Paired: the two tools' measurements of one round, next to each other in time.
            for m in ("throughput", "p99_ms"):
                pairs = []
                for r in range(1, rounds + 1):
                    x = [y for y in runs if y["kind"] == kind and y["level"] == value
                         and y["round"] == r and "error" not in y]
                    p = [y for y in x if y["tool"] == f"perf_analyzer {proto}"]
                    g = [y for y in x if y["tool"] == f"kiln loadgen {proto}"]
                    if p and g and p[0][m] > 0:
                        pairs.append(g[0][m] / p[0][m])
                if pairs:
                    a[f"paired_{m}_ratio"] = spread(pairs)
            agree[proto] = a
        table.append({"kind": kind, "level": value, "tools": per_tool, "loadgen_vs_pa": agree})
    return table


def ratio_text(a, m, label):
    """m: "throughput" or "p99_ms"; a: one protocol's loadgen_vs_pa entry."""
    paired = a.get(f"paired_{m}_ratio")
    ratio = a["throughput_ratio" if m == "throughput" else "p99_ratio"]
    text = f"{label} {ratio:.3f}x ({'ranges overlap' if a[m] else 'ranges apart'}"
    if paired:
        text += (f"; paired {paired['median']:.3f}x, {paired['min']:.3f}–{paired['max']:.3f}")
    return text + ")"


def markdown(result):
    md = ["| load | tool | images/s, median (min–max) | p50 ms | p99 ms, median (min–max) | "
          "server queue ms | server compute ms | client CPU while measuring, cores | "
          "kiln loadgen / perf_analyzer, same protocol |",
          "|---|---|---|---|---|---|---|---|---|"]
    for row in result["table"]:
        label = level_label(row["kind"], row["level"])
        for tool in TOOLS:
            t = row["tools"].get(tool, {})
            if "throughput" not in t:
                md.append(f"| {label} | {tool} | failed | | | | | | |")
                continue
            th, p99 = t["throughput"], t["p99_ms"]
            note = ""
            proto = tool.split()[-1]
            a = row["loadgen_vs_pa"].get(proto)
            if tool.startswith("kiln") and a:
                note = ratio_text(a, "throughput", "images/s") + "; " + ratio_text(a, "p99_ms", "p99")
            flags = []
            if t.get("unstable_rounds"):
                flags.append(f"{t['unstable_rounds']} round(s) not stable")
            if t.get("failed_rounds"):
                flags.append(f"{t['failed_rounds']} round(s) failed")
            if t.get("late_percent_max"):
                flags.append(f"up to {t['late_percent_max']:g}% of requests left > 1 ms late")
            md.append(f"| {label} | {tool} | {th['median']:,.0f} ({th['min']:,.0f}–{th['max']:,.0f})"
                      f" | {t['p50_ms']['median']:.2f} | {p99['median']:.2f} "
                      f"({p99['min']:.2f}–{p99['max']:.2f}) | {t['server_queue_ms']['median']:.2f} | "
                      f"{t['server_compute_ms']['median']:.2f} | "
                      f"{t['client_cores']['median']:.2f} | {note}"
                      + (f" {'; '.join(flags)}" if flags else "") + " |")
    return md


def start_server(kiln, model_file, name, work, threads, max_batch, queue_delay_us):
    repo = os.path.join(work, "repo")
    os.makedirs(os.path.join(repo, name, "1"))
    shutil.copy(model_file, os.path.join(repo, name, "1", "model.onnx"))
    with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
        f.write(f"max_batch_size: {max_batch}\n"
                f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}\n")
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([kiln, "serve", "--models", repo, "--port", str(http_port),
                             "--grpc-port", str(grpc_port), "--metrics-port", "0",
                             "--threads", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    import urllib.request
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"kiln serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready",
                                        timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("kiln serve not ready after 60 s")
        time.sleep(0.2)
    return proc, {"model": name, "http_port": http_port, "grpc_port": grpc_port}


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_report(result, out):
    """OUT/perf_vs_loadgen.json and OUT/perf_vs_loadgen.md (also printed)."""
    write_atomic(os.path.join(out, "perf_vs_loadgen.json"), json.dumps(result, indent=2))
    pct = result.get("pa_percentile")
    md = [f"# perf_analyzer vs kiln loadgen ({result['created']})", "",
          f"`{result['command']}`; {result['perf_analyzer_version']} (perf-analyzer 2.60.0 "
          f"wheel); one `kiln serve` (ONNX Runtime, {result['threads']} engine threads, "
          f"max_batch_size {result['max_batch_size']}, max_queue_delay_microseconds "
          f"{result['max_queue_delay_microseconds']}); {result['rounds']} rounds, tools in "
          f"rotated order; {result['window_ms']} ms windows, at most "
          f"{result.get('max_windows', 10)} per level; perf_analyzer stabilizes on "
          f"{'p' + str(pct) if pct else 'average'} latency; "
          "batch-1 binary (HTTP) / raw_input_contents (gRPC) tensor requests; at a request rate "
          f"both tools have {RATE_THREADS} sender threads and count latency from when a request "
          "left. Spread: min–max over the rounds; paired: the ratio within each round.", ""]
    text = "\n".join(md + markdown(result)) + "\n"
    write_atomic(os.path.join(out, "perf_vs_loadgen.md"), text)
    print(text)


def render(folder):
    """Re-summarizes and re-renders a finished run from its perf_vs_loadgen.json."""
    with open(os.path.join(folder, "perf_vs_loadgen.json")) as f:
        result = json.load(f)
    levels = []
    for x in result["runs"]:
        if (x["kind"], x["level"]) not in levels:
            levels.append((x["kind"], x["level"]))
    result["table"] = summarize(result["runs"], levels, result["rounds"])
    write_report(result, folder)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--render", metavar="OUT",
                   help="only re-render OUT/perf_vs_loadgen.md from OUT/perf_vs_loadgen.json")
    p.add_argument("--model", help="an ONNX model exported by kiln export")
    p.add_argument("--name", default="cifar", help="the served model's name")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "perf-vs-loadgen"))
    p.add_argument("--kiln", default=os.path.join(ROOT, "build", "release", "kiln"))
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--request-rate", default="200,500", help="requests/s, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window-ms", type=int, default=2000)
    p.add_argument("--max-windows", type=int, default=10,
                   help="measured windows per level at most (perf_analyzer -r; kiln loadgen "
                        "gets one more, its warm-up)")
    p.add_argument("--pa-percentile", type=int, default=None,
                   help="perf_analyzer --percentile: stabilize on this latency percentile "
                        "instead of its default, the average latency (kiln loadgen always "
                        "uses p99)")
    p.add_argument("--threads", type=int, default=2, help="kiln serve engine threads")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--queue-delay-us", type=int, default=500)
    a = p.parse_args()
    if a.render:
        return render(a.render)
    if not a.model or not os.path.exists(a.model):
        sys.exit(f"perf_vs_loadgen: {a.model} not found")
    levels = [("concurrency", float(c)) for c in a.concurrency.split(",") if c]
    levels += [("rate", float(r)) for r in a.request_rate.split(",") if r]
    os.makedirs(a.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="kiln-perf-vs-loadgen-")
    proc = None
    try:
        proc, server = start_server(a.kiln, os.path.abspath(a.model), a.name, work, a.threads,
                                    a.max_batch, a.queue_delay_us)
        v = subprocess.run([PERF_ANALYZER, "--version"], capture_output=True, text=True)
        version = (v.stdout + v.stderr).strip()
        result = measure(server, a.kiln, levels, a.rounds, a.window_ms, os.path.join(a.out, "raw"),
                         a.pa_percentile, a.max_windows)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    result.update({"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "command": " ".join(sys.argv), "perf_analyzer_version": version,
                   "model": os.path.abspath(a.model), "window_ms": a.window_ms,
                   "rounds": a.rounds, "threads": a.threads, "max_batch_size": a.max_batch,
                   "max_queue_delay_microseconds": a.queue_delay_us,
                   "max_windows": a.max_windows, "pa_percentile": a.pa_percentile})
    write_report(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
