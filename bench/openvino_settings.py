#!/usr/bin/env python3
"""Which of OpenVINO's default CPU settings makes its defaults slower than Kiln's settings.

Times one ONNX model at batch 1 through OpenVINO's Python API (the same runtime version as Kiln's
C++ engine, from the project's .venv) under its own defaults and with one setting at a time
changed towards Kiln's (f32 precision, pinning off, 2 threads, the LATENCY hint), interleaved:
every round measures every setting once, in turn, so drift hits all alike. Prints each setting's
median latency over the rounds, its min-max and the property values OpenVINO compiled with.

  .venv/bin/python bench/openvino_settings.py --model runs/pq/optimized/fp32.onnx --rounds 5
"""
import argparse
import statistics
import time

import numpy as np
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints


def settings():
    kiln = {hints.performance_mode: hints.PerformanceMode.LATENCY, props.inference_num_threads: 2,
            hints.inference_precision: ov.Type.f32, hints.enable_cpu_pinning: False}
    yield "defaults", {}
    yield "defaults + f32", {hints.inference_precision: ov.Type.f32}
    yield "defaults + no pinning", {hints.enable_cpu_pinning: False}
    yield "defaults + 2 threads", {props.inference_num_threads: 2}
    yield "defaults + LATENCY", {hints.performance_mode: hints.PerformanceMode.LATENCY}
    yield "Kiln's (LATENCY, 2 threads, f32, no pinning)", kiln


def time_once(request, x, seconds):
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        t0 = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="ONNX model file")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per setting and round")
    a = p.parse_args()
    core = ov.Core()
    model = core.read_model(a.model)
    shape = [1] + [d.get_length() for d in model.inputs[0].get_partial_shape()[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    compiled = {}
    for name, config in settings():
        c = core.compile_model(model, "CPU", config)
        r = c.create_infer_request()
        time_once(r, x, 0.3)  # warm-up
        compiled[name] = (c, r, [])
    for k in range(a.rounds):
        for name, (c, r, medians) in compiled.items():
            medians.append(time_once(r, x, a.seconds))
        print(f"round {k + 1}/{a.rounds} done", flush=True)
    base = statistics.median(compiled["defaults"][2])
    print(f"OpenVINO {ov.get_version()}, {a.model}, batch 1, {a.rounds} rounds")
    print(f"{'setting':48} {'median ms':>9} {'min-max ms':>15} {'vs defaults':>11}  compiled with")
    for name, (c, r, medians) in compiled.items():
        m = statistics.median(medians)
        got = (f"hint={c.get_property(hints.performance_mode)} threads={c.get_property(props.inference_num_threads)} "
               f"streams={c.get_property(props.num_streams)} precision={c.get_property(hints.inference_precision)} "
               f"pinning={c.get_property(hints.enable_cpu_pinning)}")
        print(f"{name:48} {m * 1e3:9.3f} {min(medians) * 1e3:7.3f}-{max(medians) * 1e3:<7.3f} {base / m:11.2f}x  {got}")


if __name__ == "__main__":
    main()
