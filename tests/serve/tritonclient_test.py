#!/usr/bin/env python3
"""Triton's own Python client (tritonclient[http,grpc], pinned in scripts/python/requirements.txt)
against a real `kiln serve`, used exactly as Triton's users use it (ctest tritonclient, label e2e).

  .venv/bin/python tests/serve/tritonclient_test.py --kiln build/release/kiln \\
      --data ../shared/data/cifar-10-binary.tar.gz [-v] [unittest arguments]

The model is made with real kiln commands: `kiln train` (seed-cnn, 1 epoch on 1,000 images),
`kiln export`, `kiln repo write` (two copies, "cifar" and "cifar_b", of one export). `kiln serve`
runs in explicit model-control mode with "cifar" loaded, on free loopback ports (HTTP and gRPC),
and is stopped with SIGTERM at the end (also on failure); its exit code must be 0.

Covered over HTTP and gRPC: liveness and readiness (server and model), server and model metadata,
model config, infer (HTTP JSON and binary tensors, gRPC unary and streaming) checked against
ONNX Runtime run in this process on the exported model.onnx, the classification extension,
statistics, the repository index, load/unload in explicit mode (also with a config override,
`parameters: {"config": ...}`, which the served config then shows), and the client's errors on
bad requests (unknown model, wrong shape, batch over max_batch_size, unknown load parameter, an
override the server refuses, a bad request inside a stream).
"""

import argparse
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ARGS = None  # set in main()
MODEL = "cifar"
SECOND = "cifar_b"  # in the repository, not loaded at start (explicit mode)
TOLERANCE = 1e-4    # served logits vs ONNX Runtime in process (same model file, same engine)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, log):
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        with open(log) as f:
            sys.stderr.write(f.read())
        raise RuntimeError(f"{' '.join(cmd)} exited with {r.returncode}")


class Server:
    """A model repository from a tiny trained model, and `kiln serve` on it."""

    def __init__(self, kiln, data):
        self.tmp = tempfile.mkdtemp(prefix="kiln-tritonclient-")
        self.kiln, self.data, self.proc = kiln, data, None

    def make_models(self):
        t = self.tmp
        run([self.kiln, "train", "--data", self.data, "--arch", "seed-cnn", "--epochs", "1",
             "--train-limit", "1000", "--validation-size", "500", "--threads", "2",
             "--out", f"{t}/run"], f"{t}/train.log")
        run([self.kiln, "export", "--checkpoint", f"{t}/run/best.ckpt", "--data", self.data,
             "--out", f"{t}/export", "--skip-check"], f"{t}/export.log")
        run([self.kiln, "repo", "write", "--model", f"{MODEL}={t}/export/model.onnx",
             "--model", f"{SECOND}={t}/export/model.onnx", "--out", f"{t}/repo",
             "--data", self.data], f"{t}/repo.log")
        self.onnx = f"{t}/export/model.onnx"

    def start(self):
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log = open(f"{self.tmp}/serve.log", "w")
        self.proc = subprocess.Popen(
            [self.kiln, "serve", "--models", f"{self.tmp}/repo", "--host", "127.0.0.1",
             "--port", str(self.http_port), "--grpc-port", str(self.grpc_port),
             "--metrics-port", "0", "--model-control-mode", "explicit", "--load-model", MODEL],
            stdout=self.log, stderr=subprocess.STDOUT)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{self.http_port}")
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kiln serve exited with {self.proc.returncode}: {self.tail()}")
            try:
                if client.is_server_ready():
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
        raise RuntimeError("kiln serve not ready after 60 s: " + self.tail())

    def tail(self):
        self.log.flush()
        with open(f"{self.tmp}/serve.log") as f:
            return f.read()[-3000:]

    def stop(self):
        """SIGTERM; returns the exit code (the process is killed after 60 s)."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        if self.proc is not None:
            self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return code


def images(n, seed=0):
    return np.random.RandomState(seed).randn(n, 3, 32, 32).astype(np.float32)


class TritonClientTest(unittest.TestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = Server(ARGS.kiln, ARGS.data)
        try:
            cls.server.make_models()
            cls.server.start()
        except BaseException:
            cls.server.stop()
            raise
        cls.http = httpclient.InferenceServerClient(f"127.0.0.1:{cls.server.http_port}")
        cls.grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{cls.server.grpc_port}")
        cls.ort = ort.InferenceSession(cls.server.onnx, providers=["CPUExecutionProvider"])

    @classmethod
    def tearDownClass(cls):
        cls.http.close()
        cls.grpc.close()
        code = cls.server.stop()
        if code != 0:
            raise AssertionError(f"kiln serve exited with {code} after SIGTERM")

    def reference(self, x):
        return self.ort.run(["logits"], {"input": x})[0]

    def http_infer(self, x, binary, model=MODEL, outputs=None):
        i = httpclient.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary)
        if outputs is None:
            outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
        return self.http.infer(model, [i], outputs=outputs)

    def grpc_input(self, x):
        i = grpcclient.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        return i

    # -- health and metadata -------------------------------------------------------------------

    def test_liveness_and_readiness(self):
        for c in (self.http, self.grpc):
            self.assertTrue(c.is_server_live())
            self.assertTrue(c.is_server_ready())
            self.assertTrue(c.is_model_ready(MODEL))
            self.assertTrue(c.is_model_ready(MODEL, "1"))
            self.assertFalse(c.is_model_ready(SECOND))  # explicit mode: not loaded
            self.assertFalse(c.is_model_ready("no_such_model"))

    def test_server_metadata(self):
        for meta in (self.http.get_server_metadata(), self.grpc.get_server_metadata(as_json=True)):
            self.assertEqual(meta["name"], "kiln")
            self.assertTrue(meta["version"])
            for ext in ("classification", "model_repository", "statistics"):
                self.assertIn(ext, meta["extensions"])
        self.assertIn("binary_tensor_data", self.http.get_server_metadata()["extensions"])

    def test_model_metadata(self):
        h = self.http.get_model_metadata(MODEL)
        g = self.grpc.get_model_metadata(MODEL, as_json=True)
        for m in (h, g):
            self.assertEqual(m["name"], MODEL)
            self.assertEqual(m["platform"], "onnxruntime_onnx")
            self.assertEqual(m["versions"], ["1"])
            self.assertEqual([(t["name"], t["datatype"]) for t in m["inputs"]], [("input", "FP32")])
            self.assertEqual([(t["name"], t["datatype"]) for t in m["outputs"]], [("logits", "FP32")])
        # JSON numbers over HTTP, int64 as strings in gRPC's JSON form.
        self.assertEqual(h["inputs"][0]["shape"], [-1, 3, 32, 32])
        self.assertEqual([int(d) for d in g["inputs"][0]["shape"]], [-1, 3, 32, 32])
        self.assertEqual([int(d) for d in g["outputs"][0]["shape"]], [-1, 10])

    def test_model_config(self):
        h = self.http.get_model_config(MODEL)
        g = self.grpc.get_model_config(MODEL, as_json=True)["config"]
        for c in (h, g):
            self.assertEqual(c["name"], MODEL)
            self.assertEqual(int(c["max_batch_size"]), 32)
            self.assertEqual(c["input"][0]["name"], "input")
            self.assertEqual([int(d) for d in c["input"][0]["dims"]], [3, 32, 32])
            self.assertEqual(c["output"][0]["label_filename"], "labels.txt")
            self.assertIn("dynamic_batching", c)
        # The gRPC one is a real ModelConfig protobuf.
        proto = self.grpc.get_model_config(MODEL).config
        self.assertEqual(proto.max_batch_size, 32)
        self.assertEqual(proto.output[0].dims, [10])

    # -- inference -----------------------------------------------------------------------------

    def test_http_infer_json_and_binary(self):
        x = images(4)
        want = self.reference(x)
        for binary in (False, True):
            with self.subTest(binary=binary):
                r = self.http_infer(x, binary)
                got = r.as_numpy("logits")
                self.assertEqual(got.shape, (4, 10))
                self.assertEqual(got.dtype, np.float32)
                np.testing.assert_allclose(got, want, atol=TOLERANCE)
                out = r.get_output("logits")
                self.assertEqual(out["shape"], [4, 10])
                self.assertEqual("binary_data_size" in out.get("parameters", {}), binary)
                self.assertEqual(r.get_response()["model_name"], MODEL)

    def test_http_infer_async(self):
        xs = [images(1, seed) for seed in range(8)]
        pending = []
        for x in xs:
            i = httpclient.InferInput("input", [1, 3, 32, 32], "FP32")
            i.set_data_from_numpy(x, binary_data=True)
            pending.append(self.http.async_infer(MODEL, [i]))
        for x, p in zip(xs, pending):
            np.testing.assert_allclose(p.get_result().as_numpy("logits"), self.reference(x),
                                       atol=TOLERANCE)

    def test_grpc_infer(self):
        x = images(3, seed=1)
        r = self.grpc.infer(MODEL, [self.grpc_input(x)], request_id="req-7",
                            outputs=[grpcclient.InferRequestedOutput("logits")])
        np.testing.assert_allclose(r.as_numpy("logits"), self.reference(x), atol=TOLERANCE)
        resp = r.get_response()
        self.assertEqual(resp.id, "req-7")
        self.assertEqual(resp.model_name, MODEL)

    def test_grpc_streaming(self):
        results = queue.Queue()
        self.grpc.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            xs = {str(k): images(1, seed=10 + k) for k in range(6)}
            for rid, x in xs.items():
                self.grpc.async_stream_infer(MODEL, [self.grpc_input(x)], request_id=rid)
            seen = set()
            for _ in xs:
                result, error = results.get(timeout=30)
                self.assertIsNone(error)
                rid = result.get_response().id
                np.testing.assert_allclose(result.as_numpy("logits"), self.reference(xs[rid]),
                                           atol=TOLERANCE)
                seen.add(rid)
            self.assertEqual(seen, set(xs))
            # A bad request inside the stream comes back as that request's error; the stream
            # stays usable.
            bad = grpcclient.InferInput("input", [1, 3, 31, 32], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 3, 31, 32), np.float32))
            self.grpc.async_stream_infer(MODEL, [bad], request_id="bad")
            result, error = results.get(timeout=30)
            self.assertIsNone(result)
            self.assertIsInstance(error, InferenceServerException)
            self.assertIn("shape", error.message())
            x = images(1, seed=99)
            self.grpc.async_stream_infer(MODEL, [self.grpc_input(x)], request_id="after")
            result, error = results.get(timeout=30)
            self.assertIsNone(error)
            np.testing.assert_allclose(result.as_numpy("logits"), self.reference(x), atol=TOLERANCE)
        finally:
            self.grpc.stop_stream()

    def test_classification(self):
        x = images(2, seed=3)
        want = self.reference(x)
        labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                  "truck"]
        h = self.http_infer(x, True, outputs=[
            httpclient.InferRequestedOutput("logits", binary_data=True, class_count=3)])
        g = self.grpc.infer(MODEL, [self.grpc_input(x)],
                            outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)])
        for r in (h, g):
            classes = r.as_numpy("logits")
            self.assertEqual(classes.shape, (2, 3))
            for row, logits in zip(classes, want):
                top = np.argsort(-logits)[:3]
                parsed = [c.decode().split(":") for c in row]
                self.assertEqual([int(p[1]) for p in parsed], list(top))
                self.assertEqual([p[2] for p in parsed], [labels[i] for i in top])
                np.testing.assert_allclose([float(p[0]) for p in parsed], logits[top], atol=1e-5)

    # -- statistics and repository -------------------------------------------------------------

    def test_statistics(self):
        def counts(stats):
            s = stats["model_stats"][0]
            return int(s["inference_count"]), int(s["inference_stats"]["success"]["count"])

        before = counts(self.http.get_inference_statistics(MODEL))
        self.http_infer(images(5), True)
        self.grpc.infer(MODEL, [self.grpc_input(images(2))])
        h = self.http.get_inference_statistics(MODEL)
        g = self.grpc.get_inference_statistics(MODEL, as_json=True)
        self.assertEqual(counts(h), (before[0] + 7, before[1] + 2))
        self.assertEqual(counts(g), counts(h))
        st = h["model_stats"][0]
        self.assertEqual((st["name"], st["version"]), (MODEL, "1"))
        for key in ("queue", "compute_input", "compute_infer", "compute_output"):
            self.assertGreater(st["inference_stats"][key]["ns"], 0, key)
        self.assertTrue(st["batch_stats"])
        # Every model at once.
        names = {s["name"] for s in self.http.get_inference_statistics()["model_stats"]}
        self.assertIn(MODEL, names)

    def test_repository_index(self):
        h = {m["name"]: m for m in self.http.get_model_repository_index()}
        g = {m["name"]: m for m in self.grpc.get_model_repository_index(as_json=True)["models"]}
        for index in (h, g):
            self.assertEqual(set(index), {MODEL, SECOND})
            self.assertEqual(index[MODEL]["state"], "READY")
            self.assertEqual(index[MODEL]["version"], "1")
            self.assertNotEqual(index[SECOND]["state"], "READY")

    def test_load_unload_explicit(self):
        for c in (self.http, self.grpc):
            name = type(c).__module__
            with self.subTest(client=name):
                self.assertFalse(c.is_model_ready(SECOND))
                c.load_model(SECOND)
                self.assertTrue(c.is_model_ready(SECOND))
                x = images(2, seed=5)
                if c is self.http:
                    got = self.http_infer(x, True, model=SECOND).as_numpy("logits")
                else:
                    got = c.infer(SECOND, [self.grpc_input(x)]).as_numpy("logits")
                np.testing.assert_allclose(got, self.reference(x), atol=TOLERANCE)
                c.unload_model(SECOND)
                self.assertFalse(c.is_model_ready(SECOND))
                with self.assertRaises(InferenceServerException):
                    if c is self.http:
                        self.http_infer(x, True, model=SECOND)
                    else:
                        c.infer(SECOND, [self.grpc_input(x)])

    def test_load_with_config_override(self):
        for c in (self.http, self.grpc):
            with self.subTest(client=type(c).__module__):
                base = self.http.get_model_config(MODEL)
                override = json.loads(json.dumps(base))
                override["name"] = SECOND
                override["max_batch_size"] = 4
                override["dynamic_batching"] = {"preferred_batch_size": [2, 4],
                                                "max_queue_delay_microseconds": 100}
                override["model_warmup"] = []
                c.load_model(SECOND, config=json.dumps(override))
                try:
                    served = self.http.get_model_config(SECOND)
                    self.assertEqual(served["max_batch_size"], 4)
                    self.assertEqual(served["dynamic_batching"]["preferred_batch_size"], [2, 4])
                    np.testing.assert_allclose(self.http_infer(images(4), True, model=SECOND)
                                               .as_numpy("logits"), self.reference(images(4)),
                                               atol=TOLERANCE)
                    with self.assertRaises(InferenceServerException) as e:
                        self.http_infer(images(5), True, model=SECOND)
                    self.assertEqual(e.exception.status(), "400")
                    self.assertIn("max_batch_size", e.exception.message())
                finally:
                    c.unload_model(SECOND)
        # Loaded again without an override: the repository's config.pbtxt.
        self.http.load_model(SECOND)
        try:
            self.assertEqual(self.http.get_model_config(SECOND)["max_batch_size"], 32)
        finally:
            self.http.unload_model(SECOND)

    # -- errors --------------------------------------------------------------------------------

    def test_errors_http(self):
        with self.assertRaises(InferenceServerException) as e:
            self.http.get_model_metadata("no_such_model")
        self.assertEqual(e.exception.status(), "404")
        self.assertIn("no_such_model", e.exception.message())
        with self.assertRaises(InferenceServerException) as e:
            self.http_infer(images(1), True, model="no_such_model")
        self.assertEqual(e.exception.status(), "404")
        bad = np.zeros((1, 3, 31, 32), np.float32)
        for binary in (False, True):
            with self.assertRaises(InferenceServerException) as e:
                self.http_infer(bad, binary)
            self.assertEqual(e.exception.status(), "400")
            self.assertIn("shape", e.exception.message())
        with self.assertRaises(InferenceServerException) as e:
            self.http_infer(images(33), True)
        self.assertEqual(e.exception.status(), "400")
        self.assertIn("max_batch_size", e.exception.message())
        with self.assertRaises(InferenceServerException) as e:
            self.http_infer(images(1), True, outputs=[httpclient.InferRequestedOutput("nope")])
        self.assertEqual(e.exception.status(), "400")
        with self.assertRaises(InferenceServerException) as e:
            self.http.load_model(SECOND, files={"file:1/model.onnx": b"x"})
        self.assertEqual(e.exception.status(), "400")
        self.assertIn("file:", e.exception.message())
        self.assertFalse(self.http.is_model_ready(SECOND))
        # An override the server refuses (a warmup over the overridden max_batch_size).
        cfg = self.http.get_model_config(MODEL)
        cfg["name"] = SECOND
        cfg["max_batch_size"] = 2
        with self.assertRaises(InferenceServerException) as e:
            self.http.load_model(SECOND, config=json.dumps(cfg))
        self.assertIn("max_batch_size", e.exception.message())
        self.assertFalse(self.http.is_model_ready(SECOND))
        with self.assertRaises(InferenceServerException):
            self.http.load_model("no_such_model")

    def test_errors_grpc(self):
        with self.assertRaises(InferenceServerException) as e:
            self.grpc.get_model_metadata("no_such_model")
        self.assertEqual(e.exception.status(), "StatusCode.NOT_FOUND")
        with self.assertRaises(InferenceServerException) as e:
            self.grpc.infer("no_such_model", [self.grpc_input(images(1))])
        self.assertEqual(e.exception.status(), "StatusCode.NOT_FOUND")
        bad = grpcclient.InferInput("input", [1, 3, 31, 32], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 31, 32), np.float32))
        with self.assertRaises(InferenceServerException) as e:
            self.grpc.infer(MODEL, [bad])
        self.assertEqual(e.exception.status(), "StatusCode.INVALID_ARGUMENT")
        self.assertIn("shape", e.exception.message())
        with self.assertRaises(InferenceServerException) as e:
            self.grpc.infer(MODEL, [self.grpc_input(images(33))])
        self.assertEqual(e.exception.status(), "StatusCode.INVALID_ARGUMENT")
        with self.assertRaises(InferenceServerException) as e:
            self.grpc.load_model(SECOND, config="{not json")
        self.assertEqual(e.exception.status(), "StatusCode.INVALID_ARGUMENT")
        self.assertFalse(self.grpc.is_model_ready(SECOND))


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kiln", required=True, help="the kiln binary")
    p.add_argument("--data", required=True, help="the CIFAR-10 archive")
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest)


if __name__ == "__main__":
    main()
