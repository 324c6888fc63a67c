#!/usr/bin/env python3
"""Reads perf_analyzer's `-f` CSV and `kiln loadgen --csv` with one parser, and prints them side
by side.

Both files have one row per load level; the first column names the level ("Concurrency" or
"Request Rate"), then perf_analyzer's columns: Inferences/Second, the client/server split
(Client Send, Network+Server Send/Recv, Server Queue, Server Compute Input/Infer/Output, Client
Recv) and p50/p90/p95/p99 latency, all times in microseconds. perf_analyzer's --verbose-csv adds
"Avg latency" (only when it stabilizes on the average latency, its default; not with
--percentile), then request/response and response wait (their sum is the average request time;
with --collect-metrics, GPU columns follow). `kiln loadgen --csv` stabilizes on p99 and writes
what perf_analyzer --percentile=99 --verbose-csv writes. load() refuses a file whose columns are not these (an
unknown column, a missing one, another order), so a format drift fails loudly.

  bench/perf_csv.py pa.csv loadgen.csv            # a table of both, level by level
  bench/perf_csv.py --json pa.csv                 # the rows as JSON
"""
import argparse
import csv
import json
import sys

LEVEL_COLUMNS = ("Concurrency", "Request Rate")
# perf_analyzer's -f columns, in its order (client_backend-independent part).
BASE_COLUMNS = ["Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
                "Server Compute Input", "Server Compute Infer", "Server Compute Output",
                "Client Recv", "p50 latency", "p90 latency", "p95 latency", "p99 latency"]
# Added by --verbose-csv when perf_analyzer stabilizes on the average latency (no --percentile).
AVG_COLUMN = "Avg latency"
# Added by perf_analyzer's --verbose-csv.
VERBOSE_COLUMNS = ["request/response", "response wait"]
# Added by --collect-metrics (with --verbose-csv): the server's GPU metrics.
METRIC_COLUMNS = ["Avg GPU Utilization", "Avg GPU Power Usage", "Max GPU Memory Usage",
                  "Total GPU Memory"]
# Every time column is in microseconds in both tools.
TIME_COLUMNS = [c for c in BASE_COLUMNS + [AVG_COLUMN] + VERBOSE_COLUMNS
                if c != "Inferences/Second"]


class FormatError(ValueError):
    pass


def parse(text, name="<csv>"):
    """CSV text -> {"level": "Concurrency"|"Request Rate", "columns": [...], "rows": [dict]}.

    Each row maps every column to a float; times in microseconds. perf_analyzer writes a
    summary block after a blank line in some modes (and GPU metric columns with
    --collect-metrics); only the first table is read and the metric columns are kept as they are.
    """
    lines = []
    for line in text.splitlines():
        if not line.strip():
            break
        lines.append(line)
    if not lines:
        raise FormatError(f"{name}: empty")
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader)]
    if header[0] not in LEVEL_COLUMNS:
        raise FormatError(f"{name}: first column '{header[0]}', expected one of {LEVEL_COLUMNS}")
    rest = header[1:]
    if rest[:len(BASE_COLUMNS)] != BASE_COLUMNS:
        raise FormatError(f"{name}: columns {rest[:len(BASE_COLUMNS)]} are not perf_analyzer's "
                          f"{BASE_COLUMNS}")
    extra = rest[len(BASE_COLUMNS):]
    if extra[:1] == [AVG_COLUMN]:
        extra = extra[1:]
    if extra and (extra[:len(VERBOSE_COLUMNS)] != VERBOSE_COLUMNS
                  or not set(extra[len(VERBOSE_COLUMNS):]) <= set(METRIC_COLUMNS)):
        raise FormatError(f"{name}: columns after p99 latency are {extra}, expected "
                          f"{VERBOSE_COLUMNS} (perf_analyzer --verbose-csv), then only "
                          f"{METRIC_COLUMNS} (--collect-metrics)")
    rows = []
    for n, values in enumerate(reader, start=2):
        if len(values) != len(header):
            raise FormatError(f"{name}:{n}: {len(values)} values for {len(header)} columns")
        row = {}
        for column, value in zip(header, values):
            try:
                row[column] = float(value)
            except ValueError:
                raise FormatError(f"{name}:{n}: {column} = '{value}' is not a number") from None
        rows.append(row)
    return {"level": header[0], "columns": header, "rows": rows}


def load(path):
    with open(path, newline="") as f:
        return parse(f.read(), path)


def summary(row):
    """The numbers a comparison uses, in images/s and milliseconds."""
    server_compute = (row["Server Compute Input"] + row["Server Compute Infer"]
                      + row["Server Compute Output"])
    out = {"throughput": row["Inferences/Second"], "p50_ms": row["p50 latency"] / 1e3,
           "p90_ms": row["p90 latency"] / 1e3, "p95_ms": row["p95 latency"] / 1e3,
           "p99_ms": row["p99 latency"] / 1e3, "server_queue_ms": row["Server Queue"] / 1e3,
           "server_compute_ms": server_compute / 1e3}
    if AVG_COLUMN in row:
        out["avg_ms"] = row[AVG_COLUMN] / 1e3
    elif "response wait" in row:
        out["avg_ms"] = (row["request/response"] + row["response wait"]) / 1e3
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("csv", nargs="+", help="perf_analyzer -f or kiln loadgen --csv files")
    p.add_argument("--json", action="store_true", help="print the parsed rows as JSON")
    a = p.parse_args()
    try:
        tables = [(path, load(path)) for path in a.csv]
    except (OSError, FormatError) as e:
        sys.exit(f"perf_csv: {e}")
    if a.json:
        json.dump({path: t for path, t in tables}, sys.stdout, indent=2)
        print()
        return 0
    print("| file | level | images/s | p50 ms | p99 ms | server queue ms | server compute ms |")
    print("|---|---|---|---|---|---|---|")
    for path, t in tables:
        for row in t["rows"]:
            s = summary(row)
            print(f"| {path} | {t['level']} {row[t['level']]:g} | {s['throughput']:.1f} | "
                  f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['server_queue_ms']:.2f} | "
                  f"{s['server_compute_ms']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
