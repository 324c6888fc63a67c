#!/usr/bin/python3
"""Reference-style baseline: FastAPI + Uvicorn + PyTorch (Debian's python3-fastapi,
python3-uvicorn, python3-torch, python3-multipart, python3-pil) serving a Kiln TorchScript
export with the same /predict contract as `kiln serve` (multipart 'file' field or a raw image/*
body; optional model, top_k). One request per forward pass, as the reference service did.

    /usr/bin/python3 bench/fastapi_baseline.py --model runs/x/export/model.pt --port 8001
"""
import argparse
import io
import json
import time

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="model.pt written by kiln export")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8001)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()

torch.set_num_threads(args.threads)
extra = {"kiln_metadata.json": ""}
model = torch.jit.load(args.model, map_location="cpu", _extra_files=extra).eval()
meta = json.loads(extra["kiln_metadata.json"])
labels = json.loads(meta["kiln.labels"])
norm = json.loads(meta["kiln.normalization"])
mean = torch.tensor(norm["mean"]).view(3, 1, 1)
std = torch.tensor(norm["std"]).view(3, 1, 1)
shape = json.loads(meta["kiln.input_shape"])  # [N, 3, H, W]
height, width = shape[2], shape[3]

app = FastAPI()


@app.post("/predict")
async def predict(request: Request, top_k: int = 5):
    start = time.perf_counter()
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        if "file" not in form:
            raise HTTPException(400, "multipart/form-data without a 'file' field")
        data = await form["file"].read()
        top_k = int(form.get("top_k", top_k))
    elif content_type.startswith("image/"):
        data = await request.body()
    else:
        raise HTTPException(415, "send multipart/form-data or an image/* body")
    t0 = time.perf_counter()
    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as e:  # noqa: BLE001 - any decoder failure is the client's
        raise HTTPException(400, f"cannot decode image: {e}")
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    x = x.view(height, width, 3).permute(2, 0, 1).float().div(255)
    x = ((x - mean) / std).unsqueeze(0)
    t1 = time.perf_counter()
    with torch.inference_mode():
        probs = torch.softmax(model(x)[0].double(), 0)
    t2 = time.perf_counter()
    p, idx = probs.topk(min(top_k, probs.numel()))
    return JSONResponse({
        "model_name": "baseline",
        "predictions": [{"label": labels[i], "index": i, "probability": float(v)}
                        for v, i in zip(p.tolist(), idx.tolist())],
        "decode_ms": (t1 - t0) * 1e3,
        "inference_ms": (t2 - t1) * 1e3,
        "total_ms": (time.perf_counter() - start) * 1e3,
    })


@app.get("/health")
def health():
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
