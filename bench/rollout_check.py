#!/usr/bin/env python3
"""Measures kiln serve's traffic routing on a pipeline's real models (docs/rollout.md).

Starts `kiln serve` (explicit mode) on a repository with one model whose version 1 is a
manifest's FP32 model and version 2 its INT8 model, then measures, through the HTTP API a user
would use:

  split     a weighted split (--weights, default 90/10) over --requests image uploads without a
            version: the observed share of each version against the weights, with the binomial
            standard deviation;
  sticky    --keys routing keys (X-Kiln-Routing-Key) sent --repeat times each: every key must
            reach one version;
  shadow    version 2 shadowing version 1 over the test images: the server's
            kiln_shadow_disagreement_total against the manifest's top-1 agreement of INT8 with
            FP32 on the same 10,000 test images (kiln optimize computed it offline);
  rollback  version 3, the FP32 model made to fail at run time, as a canary at 50% with
            automatic rollback: how many client requests failed (must be 0), when the server
            rolled it back, and what answered meanwhile.

Every number printed is measured in this run. Run with the project's venv (onnx, numpy):

  .venv/bin/python bench/rollout_check.py --manifest runs/pq/optimized/manifest.json \\
      --data ../shared/data/cifar-10-binary.tar.gz
"""
import argparse
import concurrent.futures
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import onnx
from onnx import helper, numpy_helper


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, body=None, headers=None, method=None):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError) as e:
        return 0, str(e).encode()


def broken_at_run_time(src, dst):
    """The model with a Reshape to [7, -1] first: fails for any batch not a multiple of 7."""
    m = onnx.load(src)
    g = m.graph
    name = g.input[0].name
    for node in g.node:
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = "broken_back"
    g.initializer.extend([
        numpy_helper.from_array(np.array([7, -1], dtype=np.int64), "broken_shape"),
        numpy_helper.from_array(np.array([-1, 3, 32, 32], dtype=np.int64), "back_shape")])
    nodes = [helper.make_node("Reshape", [name, "broken_shape"], ["broken_7"]),
             helper.make_node("Reshape", ["broken_7", "back_shape"], ["broken_back"])]
    nodes += list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(m, dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True, help="kiln optimize's manifest.json")
    ap.add_argument("--data", required=True, help="the CIFAR-10 archive (for the test images)")
    ap.add_argument("--kiln", default="build/release/kiln", help="the kiln binary")
    ap.add_argument("--requests", type=int, default=5000, help="split: requests")
    ap.add_argument("--weights", default="90,10", help="split: weights of versions 1,2")
    ap.add_argument("--keys", type=int, default=200, help="sticky: routing keys")
    ap.add_argument("--repeat", type=int, default=5, help="sticky: requests per key")
    ap.add_argument("--images", type=int, default=0,
                    help="shadow: test images (default: as many as kiln optimize evaluated, so "
                         "that the counts compare)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients")
    a = ap.parse_args()

    manifest = json.load(open(a.manifest))
    mdir = os.path.dirname(os.path.abspath(a.manifest))
    variants = {v["name"]: v for v in manifest["variants"]}
    fp32, int8 = variants["fp32"], variants["int8-static"]
    if a.images <= 0:
        a.images = int(int8["test_images"])
    tmp = tempfile.mkdtemp(prefix="kiln-rollout-")
    server = None
    try:
        images = os.path.join(tmp, "images")
        subprocess.run([a.kiln, "data", "images", "--data", a.data, "--count", str(a.images),
                        "--out", images], check=True, stdout=subprocess.DEVNULL)
        pngs = sorted(os.listdir(images))
        blobs = [open(os.path.join(images, p), "rb").read() for p in pngs]
        repo = os.path.join(tmp, "models")
        model = os.path.join(repo, "cifar")
        for v, f in ((1, fp32["file"]), (2, int8["file"])):
            os.makedirs(os.path.join(model, str(v)))
            shutil.copy(os.path.join(mdir, f), os.path.join(model, str(v), "model.onnx"))
        os.makedirs(os.path.join(model, "3"))
        broken_at_run_time(os.path.join(mdir, fp32["file"]), os.path.join(model, "3", "model.onnx"))
        with open(os.path.join(model, "config.pbtxt"), "w") as f:
            f.write('platform: "onnxruntime_onnx"\nmax_batch_size: 32\n'
                    'version_policy: { specific: { versions: [1, 2] } }\n'
                    'dynamic_batching { max_queue_delay_microseconds: 500 }\n')
        port, grpc, metrics = free_port(), free_port(), free_port()
        log = open(os.path.join(tmp, "serve.log"), "w")
        server = subprocess.Popen([a.kiln, "serve", "--models", repo, "--port", str(port),
                                   "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                                   "--model-control-mode", "explicit", "--load-model", "cifar"],
                                  stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if request(base + "/v2/models/cifar/ready")[0] == 200:
                break
            time.sleep(0.1)
        else:
            sys.exit("kiln serve did not become ready: " + open(log.name).read())

        def routing(policy=None):
            if policy is None:
                return json.loads(request(base + "/v2/repository/models/cifar/routing")[1])
            code, body = request(base + "/v2/repository/models/cifar/routing",
                                 json.dumps(policy).encode(), {"Content-Type": "application/json"})
            if code != 200:
                sys.exit(f"routing {policy}: {code} {body[:300]}")
            return json.loads(body)

        def predict(i, key=None):
            h = {"Content-Type": "image/png"}
            if key:
                h["X-Kiln-Routing-Key"] = key
            code, body = request(base + "/predict?model=cifar", blobs[i % len(blobs)], h)
            return code, (json.loads(body) if code == 200 else body)

        pool = concurrent.futures.ThreadPoolExecutor(a.clients)

        # --- split ---------------------------------------------------------------------------
        w = [float(x) for x in a.weights.split(",")]
        routing({"weights": {"1": w[0], "2": w[1]}})
        t0 = time.time()
        answers = list(pool.map(predict, range(a.requests)))
        secs = time.time() - t0
        versions = [b["model_version"] for c, b in answers if c == 200]
        p2 = w[1] / sum(w)
        n2 = versions.count("2")
        sd = math.sqrt(a.requests * p2 * (1 - p2))
        print(f"split {w[0]:g}/{w[1]:g}: {a.requests} requests in {secs:.1f} s, "
              f"{len(answers) - len(versions)} failed; version 2 answered {n2} "
              f"({100.0 * n2 / a.requests:.2f}%, expected {100 * p2:.2f}% +- "
              f"{100 * sd / a.requests:.2f} points (1 sd); z = {(n2 - a.requests * p2) / sd:+.2f})")

        # --- sticky --------------------------------------------------------------------------
        keyed = list(pool.map(lambda i: (i // a.repeat, predict(i, f"user-{i // a.repeat}")),
                              range(a.keys * a.repeat)))
        by_key = {}
        for k, (c, b) in keyed:
            by_key.setdefault(k, set()).add(b["model_version"] if c == 200 else "failed")
        mixed = sum(1 for v in by_key.values() if len(v) > 1)
        on2 = sum(1 for v in by_key.values() if v == {"2"})
        print(f"sticky: {a.keys} keys x {a.repeat} requests: {mixed} keys reached more than one "
              f"version; {on2} keys ({100.0 * on2 / a.keys:.1f}%) live on version 2")

        # --- shadow --------------------------------------------------------------------------
        routing({"weights": {"1": 1}, "shadow": {"version": 2, "share": 1.0}})
        t0 = time.time()
        shadowed = list(pool.map(predict, range(a.images)))
        secs = time.time() - t0
        for _ in range(600):
            s = routing()["shadow"].get("2", {})
            if s.get("requests", 0) + s.get("dropped", 0) >= a.images:
                break
            time.sleep(0.1)
        s = routing()["shadow"]["2"]
        offline = round((1.0 - int8["agreement_with_fp32"]) * int8["test_images"])
        served_v1 = sum(1 for c, b in shadowed if c == 200 and b["model_version"] == "1")
        print(f"shadow: {a.images} test images in {secs:.1f} s, all answered by version 1: "
              f"{served_v1 == a.images}; shadow compared {s['images']} images, dropped "
              f"{s['dropped']} copies, disagreed on {s['disagreements']} "
              f"(agreement {s['agreement']:.4f}); kiln optimize's offline count on the same "
              f"{int8['test_images']} test images: {offline} disagreements "
              f"(agreement {int8['agreement_with_fp32']:.4f})")

        # --- rollback ------------------------------------------------------------------------
        # Version 3 joins through Triton's load with a configuration override (every version).
        config = {"platform": "onnxruntime_onnx", "max_batch_size": 32,
                  "version_policy": {"all": {}},
                  "dynamic_batching": {"max_queue_delay_microseconds": 500}}
        code, body = request(base + "/v2/repository/models/cifar/load",
                             json.dumps({"parameters": {"config": json.dumps(config)}}).encode(),
                             {"Content-Type": "application/json"}, "POST")
        if code != 200:
            sys.exit(f"load with version 3: {code} {body[:300]}")
        routing({"weights": {"1": 50, "3": 50},
                 "rollout": {"canary": 3, "min_requests": 50}})
        t0 = time.time()
        canary = list(pool.map(predict, range(1000)))
        secs = time.time() - t0
        failed = sum(1 for c, b in canary if c != 200)
        by_version = {}
        for c, b in canary:
            if c == 200:
                by_version[b["model_version"]] = by_version.get(b["model_version"], 0) + 1
        state = routing()
        print(f"rollback: 1000 requests in {secs:.1f} s with a broken canary at 50%: {failed} "
              f"failed; answered by {by_version}; canary requests {state['versions']['3']['requests']}, "
              f"fallbacks {state['versions']['3']['fallbacks']}; decisions: {state['decisions']}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
