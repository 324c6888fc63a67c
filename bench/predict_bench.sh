#!/usr/bin/env bash
# Side by side, from one run: images/s and latency of 32x32 PNG uploads to /predict for
# `kiln serve` (the ONNX and the TorchScript export of one checkpoint) and for the FastAPI
# baseline (bench/fastapi_baseline.py, the TorchScript export), with wrk on the same machine.
#
#   bench/predict_bench.sh EXPORT_DIR IMAGE.png [CONCURRENCY...]    (default concurrency: 1 8 32)
#   e.g. bench/predict_bench.sh runs/kiln-resnet/export cat32.png
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXPORT="$(cd "$1" && pwd)"; IMAGE="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2
LEVELS=("${@:-1 8 32}"); [ $# -eq 0 ] && LEVELS=(1 8 32)
DURATION="${DURATION:-15s}"
REPO="$(mktemp -d)"; trap 'rm -rf "$REPO"; kill $(jobs -p) 2>/dev/null || true' EXIT
for m in onnx pt; do
  mkdir -p "$REPO/kiln-$m/1"; cp "$EXPORT/model.$m" "$REPO/kiln-$m/1/"
  printf 'max_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 500 }\n' > "$REPO/kiln-$m/config.pbtxt"
done
run() {  # name url
  for c in "${LEVELS[@]}"; do
    out=$(wrk -t1 -c"$c" -d"$DURATION" -s "$ROOT/bench/predict_png.lua" "$2" --latency -- "$IMAGE")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    printf '%-14s c=%-3s images/s %9s  p50 %8s  p99 %8s  non-2xx %s\n' "$1" "$c" "$rps" "$p50" "$p99" "${errors:-0}"
  done
}
"$ROOT/build/release/kiln" serve --models "$REPO" --port 18300 --metrics-port 0 --grpc-port 0 2>/dev/null &
KILN=$!; sleep 3
run kiln-onnx "http://127.0.0.1:18300/predict?model=kiln-onnx"
run kiln-pt "http://127.0.0.1:18300/predict?model=kiln-pt"
curl -s http://127.0.0.1:18300/stats | /usr/bin/python3 -c 'import json, sys
for m in json.load(sys.stdin)["models"]: print("%-14s average batch %.2f" % (m["name"], m["average_batch_size"]))'
kill -TERM $KILN; wait $KILN
/usr/bin/python3 "$ROOT/bench/fastapi_baseline.py" --model "$EXPORT/model.pt" --port 18301 2>/dev/null &
BASE=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18301/health >/dev/null && break; sleep 0.2; done
run fastapi "http://127.0.0.1:18301/predict"
kill $BASE; wait $BASE 2>/dev/null || true
