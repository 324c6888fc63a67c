#!/usr/bin/env python3
"""bench/perf_csv.py on the two CSV formats it reads (ctest perf_csv, label integration).

  .venv/bin/python tests/bench/perf_csv_test.py --kiln build/release/kiln \\
      --data ../shared/data/cifar-10-binary.tar.gz

Real output of both tools: a tiny model (kiln train/export/repo write, as in
tests/serve/tritonclient_test.py) behind `kiln serve` on free loopback ports; Triton's
perf_analyzer (scripts/perf_analyzer.sh, provisioned by scripts/setup.sh) writes `-f` CSVs with
and without --verbose-csv and --percentile=99, at a concurrency and at a request rate, over HTTP
and (at the concurrency) over gRPC; `kiln loadgen --csv` measures the same levels over the same
protocols. perf_csv.load reads all of them; the loadgen CSV has exactly perf_analyzer's
verbose columns in its order; every file's times are in microseconds (checked by Little's law
on the file's own numbers: closed loop, throughput x average latency = concurrency). Then the
parser's refusals, on edited copies of the real files.
"""
import argparse
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests", "serve"))
import perf_csv  # noqa: E402
from tritonclient_test import Server  # noqa: E402

ARGS = None
CONCURRENCY = 2
RATE = 100
# The test reads formats, not speeds: any three windows count as stable (a loaded 2-core
# machine need not settle within 10%, and perf_analyzer writes no row for a level it gives up on).
STABILITY = 1000


class PerfCsvTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(ARGS.kiln, ARGS.data)
        cls.files = {}
        try:
            cls.server.make_models()
            cls.server.start()
            t, http = cls.server.tmp, f"127.0.0.1:{cls.server.http_port}"
            pa = [os.path.join(ROOT, "scripts", "perf_analyzer.sh"), "-m", "cifar", "-u", http,
                  "-p", "500", "--percentile=99", "-s", str(STABILITY)]
            runs = {
                "pa_concurrency": pa + ["--concurrency-range", str(CONCURRENCY)],
                "pa_concurrency_verbose": pa + ["--concurrency-range", str(CONCURRENCY),
                                                "--verbose-csv"],
                "pa_rate_verbose": pa + ["--request-rate-range", str(RATE), "--verbose-csv"],
            }
            grpc = f"127.0.0.1:{cls.server.grpc_port}"
            runs["pa_grpc_concurrency_verbose"] = (
                [a if a != http else grpc for a in pa]
                + ["-i", "grpc", "--concurrency-range", str(CONCURRENCY), "--verbose-csv"])
            # perf_analyzer's default stabilization (average latency) adds "Avg latency".
            runs["pa_default_verbose"] = [a for a in runs["pa_concurrency_verbose"]
                                          if a != "--percentile=99"]
            lg = [ARGS.kiln, "loadgen", "--url", "http://" + http, "-m", "cifar", "--mode",
                  "binary", "--window-ms", "500", "--max-windows", "6",
                  "--stability", str(STABILITY)]
            runs["loadgen_concurrency"] = lg + ["--concurrency", str(CONCURRENCY)]
            runs["loadgen_rate"] = lg + ["--request-rate", str(RATE)]
            runs["loadgen_grpc_concurrency"] = (
                [a if a != "http://" + http else grpc for a in lg]
                + ["-i", "grpc", "--concurrency", str(CONCURRENCY)])
            for name, cmd in runs.items():
                path = os.path.join(t, name + ".csv")
                cmd = cmd + (["-f", path] if name.startswith("pa_") else ["--csv", path])
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} exited with {r.returncode}:\n"
                                       f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
                cls.files[name] = path
        except BaseException:
            cls.server.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        if code != 0:
            raise AssertionError(f"kiln serve exited with {code} after SIGTERM")

    def test_both_tools_read_with_one_parser(self):
        tables = {name: perf_csv.load(path) for name, path in self.files.items()}
        for name, t in tables.items():
            with self.subTest(file=name):
                self.assertEqual(len(t["rows"]), 1)
                row = t["rows"][0]
                want_level = "Request Rate" if "rate" in name else "Concurrency"
                self.assertEqual(t["level"], want_level)
                self.assertEqual(row[want_level], RATE if "rate" in name else CONCURRENCY)
                s = perf_csv.summary(row)
                self.assertGreater(s["throughput"], 0)
                self.assertLessEqual(s["p50_ms"], s["p99_ms"])
                self.assertGreater(s["server_compute_ms"], 0)
        # kiln loadgen writes perf_analyzer's --verbose-csv columns, in its order.
        self.assertEqual(tables["loadgen_concurrency"]["columns"],
                         tables["pa_concurrency_verbose"]["columns"])
        self.assertEqual(tables["loadgen_rate"]["columns"], tables["pa_rate_verbose"]["columns"])
        self.assertEqual(tables["loadgen_grpc_concurrency"]["columns"],
                         tables["pa_grpc_concurrency_verbose"]["columns"])
        # Stabilizing on the average latency, perf_analyzer also writes it.
        pct = tables["pa_concurrency_verbose"]["columns"]
        n = 1 + len(perf_csv.BASE_COLUMNS)
        self.assertEqual(tables["pa_default_verbose"]["columns"],
                         pct[:n] + [perf_csv.AVG_COLUMN] + pct[n:])
        # Without --verbose-csv perf_analyzer writes the base columns only.
        self.assertEqual(tables["pa_concurrency"]["columns"][1:], perf_csv.BASE_COLUMNS)

    def test_times_are_microseconds_in_both(self):
        # Closed loop: each of the `c` clients has one request in flight at all times, so
        # throughput (1/s) x average latency (s) = c. A file in milliseconds would give c/1000.
        for name in ("pa_concurrency_verbose", "pa_default_verbose", "loadgen_concurrency",
                     "pa_grpc_concurrency_verbose", "loadgen_grpc_concurrency"):
            with self.subTest(file=name):
                s = perf_csv.summary(perf_csv.load(self.files[name])["rows"][0])
                in_flight = s["throughput"] * s["avg_ms"] / 1e3
                self.assertGreater(in_flight, CONCURRENCY * 0.5)
                self.assertLess(in_flight, CONCURRENCY * 1.5)

    def test_refuses_what_is_not_perf_analyzer_format(self):
        with open(self.files["loadgen_concurrency"]) as f:
            good = f.read()
        header, row = good.strip().splitlines()[:2]
        cols = header.split(",")
        cases = {
            "another level column": ",".join(["Threads"] + cols[1:]) + "\n" + row,
            "columns swapped": ",".join([cols[0], cols[2], cols[1]] + cols[3:]) + "\n" + row,
            "a column perf_analyzer does not write": header + ",Avg latency\n" + row + ",1",
            "a value missing": header + "\n" + row.rsplit(",", 1)[0],
            "not a number": header + "\n" + row.replace(",", ",x", 1),
            "empty": "",
        }
        for what, text in cases.items():
            with self.subTest(case=what):
                with self.assertRaises(perf_csv.FormatError):
                    perf_csv.parse(text, what)
        # perf_analyzer's own trailing summary block (after a blank line) is not a row.
        self.assertEqual(len(perf_csv.parse(good + "\nServer Metrics,x\n")["rows"]), 1)


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kiln", required=True)
    p.add_argument("--data", required=True)
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest)


if __name__ == "__main__":
    main()
