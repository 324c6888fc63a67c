#!/usr/bin/env python3
"""bench/compare_reports.py on synthetic reports: machine drift alone passes on ratios (while the
absolute medians disagree), a cell whose speed changed against its reference fails, and reports
without ratios are judged on absolute medians."""
import copy
import json
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench",
                      "compare_reports.py")


def cell(variant, engine, rounds, ref_rounds):
    ratios = [r / c for r, c in zip(ref_rounds, rounds)]
    mean = sum(ratios) / len(ratios)
    return {"variant": variant, "engine": engine, "threads": 2, "batch": 1,
            "median_ms": sorted(rounds)[1], "p90_ms": max(rounds) * 1.01,
            "round_medians_ms": rounds, "ci95_ms": [min(rounds), max(rounds)],
            "speedup": {"reference": "fp32 / onnxruntime", "round_ratios": ratios,
                        "value": mean, "interleaved": True,
                        "ci95": [min(ratios) - 0.01 * mean, max(ratios) + 0.01 * mean]}}


def report(scale=1.0, int8_scale=1.0):
    ref = [1.00 * scale, 1.01 * scale, 1.02 * scale]
    int8 = [x * 0.4 * int8_scale for x in ref]
    return {"results": [cell("fp32", "onnxruntime", ref, ref),
                        cell("int8-static", "onnxruntime", int8, ref)]}


class CompareReports(unittest.TestCase):
    def run_on(self, a, b):
        with tempfile.TemporaryDirectory() as d:
            paths = []
            for name, r in (("a.json", a), ("b.json", b)):
                paths.append(os.path.join(d, name))
                with open(paths[-1], "w") as f:
                    json.dump(r, f)
            p = subprocess.run([sys.executable, SCRIPT, *paths], capture_output=True, text=True)
            return p.returncode, p.stdout

    def test_machine_drift_passes_on_ratios(self):
        code, out = self.run_on(report(), report(scale=1.10))
        self.assertEqual(code, 0, out)
        self.assertIn("speedups over the reference (fp32 / onnxruntime) agree: 1/1", out)
        self.assertIn("absolute disagrees", out)
        self.assertIn("median +10.0%", out)

    def test_a_changed_ratio_fails(self):
        code, out = self.run_on(report(), report(scale=1.10, int8_scale=1.10))
        self.assertEqual(code, 1, out)
        self.assertIn("speedup disagrees: ('int8-static', 'onnxruntime', '2', 1)", out)

    def test_reports_without_ratios_use_absolute_medians(self):
        a, b = report(), report(scale=1.10)
        for r in (a, b):
            for c in r["results"]:
                del c["speedup"]
        code, out = self.run_on(a, b)
        self.assertEqual(code, 1, out)
        self.assertIn("no speedups in these reports", out)
        code, out = self.run_on(a, copy.deepcopy(a))
        self.assertEqual(code, 0, out)


if __name__ == "__main__":
    unittest.main()
