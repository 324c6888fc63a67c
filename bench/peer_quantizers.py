#!/usr/bin/env python3
"""Peer INT8 quantizers for `kiln optimize`: the same FP32 ONNX model and the same calibration
tensors Kiln's own quantizer uses, quantized by the field's tools, so that accuracy, size and
speed can be compared side by side with Kiln's int8-static.

  ort-minmax   onnxruntime.quantization.quantize_static: QDQ, per-channel INT8 weights, UINT8
               activations, MinMax calibration (ONNX Runtime's documented static recipe, after
               its quant_pre_process)
  ort-entropy  the same with CalibrationMethod.Entropy
  nncf         NNCF's post-training quantization of the ONNX model (nncf.quantize, default
               preset), one calibration image per sample

Input: --model (FP32 ONNX), --calibration (raw float32, N x C x H x W, already normalized; what
`kiln optimize` writes), --shape C,H,W. Output: <out-dir>/<name>.onnx for each quantizer and a
JSON summary (--json): tool versions, settings, seconds, and per quantizer either "file" or
"error". Exits 0 when the JSON was written, even if a quantizer failed (the summary says why);
2 on bad arguments.

Run by `kiln optimize` with the project's .venv/bin/python (scripts/setup.sh installs the pinned
onnxruntime, onnx and nncf there):
  .venv/bin/python bench/peer_quantizers.py --model runs/x/optimized/fp32.onnx \\
      --calibration calib.f32 --shape 3,32,32 --out-dir runs/x/optimized --json peers.json
"""
import argparse
import json
import os
import sys
import tempfile
import time

QUANTIZERS = ("ort-minmax", "ort-entropy", "nncf")


def load_calibration(path, shape):
    import numpy as np

    per = 1
    for d in shape:
        per *= d
    data = np.fromfile(path, dtype=np.float32)
    if data.size == 0 or data.size % per:
        raise ValueError(f"{path}: {data.size} floats is not a whole number of {shape} images")
    return data.reshape((-1,) + tuple(shape))


def input_name(model_path):
    import onnx

    m = onnx.load(model_path, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ValueError(f"{model_path}: expected one input, found {names}")
    return names[0]


def ort_quantize(model, images, name, out, method, batch):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(images):
                return None
            x = images[self.i:self.i + batch]
            self.i += batch
            return {name: x}

        def rewind(self):
            self.i = 0

    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        # ONNX Runtime's documented first step: shape inference + graph cleanup. Its symbolic
        # shape inference needs sympy, which the pinned .venv does not have; Kiln's exports
        # have static shapes apart from the batch, which ONNX's own shape inference covers.
        quant_pre_process(model, pre, skip_symbolic_shape=True)
        settings = {
            "quant_format": "QDQ",
            "per_channel": True,
            "weight_type": "QInt8",
            "activation_type": "QUInt8",
            "calibrate_method": method,
            "calibration_images": int(len(images)),
            "calibration_batch": batch,
            "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process "
                           "(skip_symbolic_shape=True)",
        }
        quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
    return settings


def nncf_quantize(model, images, name, out):
    import nncf
    import onnx

    m = onnx.load(model)
    # One image per sample: NNCF's statistics (and its bias correction) assume batch 1.
    dataset = nncf.Dataset(list(range(len(images))), lambda i: {name: images[i:i + 1]})
    q = nncf.quantize(m, dataset, subset_size=len(images))
    onnx.save(q, out)
    return {"api": "nncf.quantize", "preset": "default (performance: symmetric)",
            "subset_size": int(len(images)), "calibration_batch": 1}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the FP32 ONNX model")
    p.add_argument("--calibration", required=True,
                   help="raw float32 calibration images, N x C x H x W, normalized")
    p.add_argument("--shape", required=True, help="C,H,W of one image")
    p.add_argument("--out-dir", required=True, help="where <quantizer>.onnx files go")
    p.add_argument("--quantizers", default=",".join(QUANTIZERS),
                   help="comma-separated, of: " + ", ".join(QUANTIZERS))
    p.add_argument("--batch", type=int, default=64, help="calibration batch for ONNX Runtime")
    p.add_argument("--json", required=True, help="summary output")
    a = p.parse_args()
    wanted = [q for q in a.quantizers.split(",") if q]
    for q in wanted:
        if q not in QUANTIZERS:
            p.error(f"unknown quantizer {q!r} (known: {', '.join(QUANTIZERS)})")
    shape = [int(x) for x in a.shape.split(",")]

    summary = {"python": sys.version.split()[0], "versions": {}, "results": {}}
    for mod in ("onnxruntime", "onnx", "nncf", "numpy"):
        try:
            summary["versions"][mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            summary["versions"][mod] = f"unavailable ({e})"
    try:
        images = load_calibration(a.calibration, shape)
        name = input_name(a.model)
    except Exception as e:  # noqa: BLE001
        summary["error"] = f"{type(e).__name__}: {e}"
        images = None
    os.makedirs(a.out_dir, exist_ok=True)
    for q in wanted if images is not None else []:
        out = os.path.join(a.out_dir, q + ".onnx")
        t0 = time.time()
        try:
            if q == "ort-minmax":
                settings = ort_quantize(a.model, images, name, out, "MinMax", a.batch)
            elif q == "ort-entropy":
                settings = ort_quantize(a.model, images, name, out, "Entropy", a.batch)
            else:
                settings = nncf_quantize(a.model, images, name, out)
            summary["results"][q] = {"file": out, "settings": settings,
                                     "seconds": time.time() - t0}
        except Exception as e:  # noqa: BLE001 - one quantizer failing must not hide the others
            summary["results"][q] = {"error": f"{type(e).__name__}: {e}",
                                     "seconds": time.time() - t0}
        print(f"[peer_quantizers] {q}: {summary['results'][q].get('error', 'ok')} "
              f"({summary['results'][q]['seconds']:.1f} s)", file=sys.stderr)
    tmp = a.json + ".tmp"
    with open(tmp, "w") as f:  # written whole, then renamed in
        json.dump(summary, f, indent=1)
    os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
