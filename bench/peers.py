#!/usr/bin/env python3
"""Peers for `kiln bench`: the same model, weights and inputs in Python PyTorch.

  pytorch-eager       an nn.Module whose forward() is the TorchScript file's own forward source
                      executed as plain Python (eager PyTorch, op by op: the reference project's
                      baseline)
  torchscript-python  torch.jit.load of the same file, run by the TorchScript interpreter

Same method as Kiln's C++ harness (warm-up, then timed runs until the medians of the two halves
of the runs agree within the tolerance). Writes JSON; exits 0 with {"available": false, ...} in
the output file when torch cannot be imported, so the report can say why.

Run by `kiln bench` with Debian's /usr/bin/python3 (which sees python3-torch).
"""
import argparse
import json
import statistics
import sys
import time


def percentile(values, p):
    v = sorted(values)
    rank = p / 100.0 * (len(v) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (rank - lo)


def measure(fn, x, a):
    start = time.perf_counter()
    runs = 0
    while runs < a.warmup_runs or time.perf_counter() - start < a.warmup_seconds:
        fn(x)
        runs += 1
    ms = []
    start = time.perf_counter()
    stable = False
    while True:
        t0 = time.perf_counter()
        fn(x)
        ms.append((time.perf_counter() - t0) * 1000.0)
        elapsed = time.perf_counter() - start
        if len(ms) >= a.min_runs and elapsed >= a.min_seconds:
            half = len(ms) // 2
            m1 = statistics.median(ms[:half])
            m2 = statistics.median(ms[half:])
            if abs(m1 - m2) <= a.stable_tolerance * max(m1, m2):
                stable = True
                break
        if elapsed >= a.max_seconds and len(ms) >= 3:
            break
    return ms, stable


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torchscript", required=True)
    p.add_argument("--inputs", required=True, help="raw float32 images, NCHW")
    p.add_argument("--images", type=int, required=True)
    p.add_argument("--shape", required=True, help="C,H,W")
    p.add_argument("--batch-sizes", default="1,8,32,64,256")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--warmup-runs", type=int, default=3)
    p.add_argument("--warmup-seconds", type=float, default=0.2)
    p.add_argument("--min-runs", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=5.0)
    p.add_argument("--stable-tolerance", type=float, default=0.03)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--output", required=True)
    p.add_argument("--variant", default="fp32", help="name of the variant in the report")
    a = p.parse_args()

    def write(obj):
        with open(a.output, "w") as f:
            json.dump(obj, f, indent=2)

    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means "no peer"
        write({"available": False, "reason": f"{sys.executable} cannot import torch ({e}); "
               "install Debian's python3-torch"})
        return 0

    c, h, w = (int(v) for v in a.shape.split(","))
    data = torch.from_file(a.inputs, size=a.images * c * h * w, dtype=torch.float32)
    data = data.reshape(a.images, c, h, w)

    scripted = torch.jit.load(a.torchscript, map_location="cpu").eval()

    # Eager: the scripted forward's source as ordinary Python over the same parameters.
    class Eager(torch.nn.Module):
        pass

    eager = Eager()
    for name, value in scripted.named_parameters():
        eager.register_parameter(name, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
    namespace = {"torch": torch, "Tensor": torch.Tensor}
    source = scripted.code
    exec(source, namespace)  # defines forward(self, ...)
    forward = namespace["forward"]
    eager.forward = forward.__get__(eager)
    eager.eval()

    pooled = {}  # (threads, engine, batch) -> [all runs], [round medians], stable
    with torch.inference_mode():
        top1 = eager(data).argmax(1).tolist()
        check = (eager(data[:8]) - scripted(data[:8])).abs().max().item()
        for rnd in range(a.rounds):
            for threads in (int(t) for t in a.threads.split(",")):
                torch.set_num_threads(threads)
                for engine, fn in (("pytorch-eager", eager), ("torchscript-python", scripted)):
                    for batch in (int(b) for b in a.batch_sizes.split(",")):
                        x = data[:batch].contiguous()
                        ms, stable = measure(fn, x, a)
                        entry = pooled.setdefault((threads, engine, batch), [[], [], True])
                        entry[0].extend(ms)
                        entry[1].append(statistics.median(ms))
                        entry[2] = entry[2] and stable
                        print(f"[peers] round {rnd + 1}/{a.rounds} {engine:20s} threads {threads} "
                              f"batch {batch:4d}: median {entry[1][-1]:8.3f} ms, "
                              f"{1000.0 * batch / entry[1][-1]:9.1f} img/s", file=sys.stderr, flush=True)
    results = []
    for (threads, engine, batch), (ms, medians, stable) in pooled.items():
        median = statistics.median(ms)
        results.append({"variant": a.variant, "engine": engine, "threads": threads, "batch": batch,
                        "runs": len(ms), "stable": stable, "median_ms": median,
                        "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
                        "min_ms": min(ms), "max_ms": max(ms), "round_medians_ms": medians,
                        "runs_ms": ms,
                        "images_per_second": 1000.0 * batch / median})
    write({"available": True, "torch_version": torch.__version__, "python": sys.version.split()[0],
           "eager_vs_torchscript_max_abs_diff": check, "top1": top1, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
