#!/usr/bin/env bash
# The compose stack brought up for real, end to end, with rootful podman (ctest deploy_stack,
# label slow; docs/deploy.md):
#   1. a tiny model (kiln train: seed-cnn, 1 epoch on 1,000 images; kiln export) in a model
#      repository, and 20 test images as PNG files (kiln data images);
#   2. the images: deploy/local-images.sh --kiln (the base image by debootstrap when missing,
#      the Debian-packaged services, kiln:latest from deploy/Dockerfile), timed, with the size;
#   3. `podman system service` on a private socket, and docker-compose through it
#      (DOCKER_HOST) bringing up compose.yaml + compose.local.yaml (kiln, nginx, prometheus,
#      alertmanager, node-exporter, nginx-exporter) under a project name of its own, with
#      nginx published on free ports of 127.0.0.1 only; without systemd, podman runs no health
#      check by itself, so this script runs each container's check every 2 s
#      (`podman healthcheck run`), which depends_on service_healthy waits for;
#   4. through nginx: /v2/health/ready; every PNG uploaded to /predict, answered as kiln answers
#      inside its container (direct) and with the label `kiln predict` gives on the host; KServe
#      JSON and binary infer requests answered as direct; `kiln loadgen` at 100 requests/s
#      (under nginx's rate limit) without errors; the container's limits, user and read-only root file system as compose.yaml says;
#   5. Prometheus (through its HTTP API, inside its container): up == 1 for kiln and
#      node-exporter (and nginx's exporter), kiln's request counter, the Alertmanager it sends
#      to, and the prometheus-adapter query of deploy/k8s on live data;
#   6. docker-compose down -v: no container, volume or network of the project left, the API
#      service and the health-check loop stopped. Also on failure (trap).
#
# Usage: tests/deploy/stack_test.sh --kiln build/release/kiln --data ../shared/data/cifar-10-binary.tar.gz
#        [--keep-images] [--keep-logs DIR]
#   --keep-logs DIR  copy every container's log and the timings there
# Needs root, podman, runc, debootstrap and docker-compose (scripts/setup.sh). Prints the image
# build time, the image size and the time of each phase.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KILN=""
DATA=""
LOGS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kiln) KILN="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --keep-logs) LOGS="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "stack_test.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$KILN" ] || { echo "stack_test.sh: --kiln must name the kiln binary" >&2; exit 2; }
[ -e "$DATA" ] || { echo "stack_test.sh: --data must name the CIFAR-10 archive" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "stack_test.sh: needs root (rootful podman)" >&2; exit 2; }
for tool in podman docker-compose debootstrap curl; do
  command -v "$tool" >/dev/null || { echo "stack_test.sh: $tool missing (scripts/setup.sh)" >&2; exit 2; }
done

export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/deploy/podman/containers.conf}"
PROJECT="kiln-stacktest-$$"
TMP="$(mktemp -d /tmp/kiln-stack-test.XXXXXX)"
SOCKET="$TMP/podman.sock"
export DOCKER_HOST="unix://$SOCKET"
COMPOSE=(docker-compose -p "$PROJECT" -f "$ROOT/deploy/compose.yaml" -f "$ROOT/deploy/compose.local.yaml")
SERVICE_PID=""
HEALTH_PID=""
T0=$(date +%s)

say() { printf '[stack_test %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { say "FAIL: $*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$LOGS" ]; then
    mkdir -p "$LOGS"
    for c in $(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
      podman logs "$c" > "$LOGS/$c.log" 2>&1
    done
    cp "$TMP"/*.txt "$LOGS/" 2>/dev/null
  fi
  if [ "$rc" -ne 0 ]; then
    for c in $(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
      echo "----- $c (last lines)"; podman logs --tail 15 "$c" 2>&1
    done
  fi
  say "tearing down (docker-compose down -v)"
  if [ -S "$SOCKET" ]; then
    timeout 180 "${COMPOSE[@]}" down -v --remove-orphans -t 20 > "$TMP/down.log" 2>&1 \
      || { cat "$TMP/down.log"; rc=1; }
  fi
  [ -n "$HEALTH_PID" ] && kill "$HEALTH_PID" 2>/dev/null && wait "$HEALTH_PID" 2>/dev/null
  [ -n "$SERVICE_PID" ] && kill "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null
  # Nothing of the project may be left: containers, volumes, networks.
  local left
  left="$(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}')
$(podman volume ls --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Name}}')
$(podman network ls --format '{{.Name}}' | grep "^${PROJECT}_" || true)"
  if [ -n "$(echo "$left" | tr -d '[:space:]')" ]; then
    echo "left behind after down:"; echo "$left"
    # Remove them anyway, so that a failed run does not leak, but fail.
    podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}' \
      | xargs -r podman rm -f -t 0 >/dev/null 2>&1
    podman volume ls --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Name}}' \
      | xargs -r podman volume rm -f >/dev/null 2>&1
    podman network ls --format '{{.Name}}' | grep "^${PROJECT}_" | xargs -r podman network rm -f >/dev/null 2>&1
    rc=1
  else
    say "nothing of $PROJECT left (containers, volumes, networks)"
  fi
  rm -rf "$TMP"
  say "total $(( $(date +%s) - T0 )) s, exit $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. a model repository and test images ---------------------------------------------------
say "training a tiny model (seed-cnn, 1 epoch, 1,000 images) and exporting it"
"$KILN" train --data "$DATA" --arch seed-cnn --epochs 1 --train-limit 1000 --validation-size 500 \
  --threads 2 --out "$TMP/run" > "$TMP/train.log" 2>&1 || { tail "$TMP/train.log"; fail "kiln train"; }
"$KILN" export --checkpoint "$TMP/run/best.ckpt" --data "$DATA" --out "$TMP/export" --skip-check \
  > "$TMP/export.log" 2>&1 || { tail "$TMP/export.log"; fail "kiln export"; }
REPO="$TMP/models"
"$KILN" repo write --model "$TMP/export/model.onnx" --out "$REPO" --data "$DATA" \
  > "$TMP/repo.log" 2>&1 || { cat "$TMP/repo.log"; fail "kiln repo write"; }
MODEL="$(ls "$REPO" | head -1)"
chmod -R a+rX "$TMP"
"$KILN" data images --data "$DATA" --count 20 --out "$TMP/images" > /dev/null 2>&1 || fail "kiln data images"
"$KILN" predict --model "$TMP/export/model.onnx" --json -k 1 "$TMP"/images/*.png > "$TMP/predict.json" \
  2> /dev/null || fail "kiln predict"

# --- 2. images ---------------------------------------------------------------------------------
say "building the images (deploy/local-images.sh --kiln)"
b0=$(date +%s)
"$ROOT/deploy/local-images.sh" --kiln > "$TMP/images.log" 2>&1 || { tail -40 "$TMP/images.log"; fail "image build"; }
BUILD_S=$(( $(date +%s) - b0 ))
SIZE=$(podman image inspect --format '{{.Size}}' localhost/kiln:latest)
say "images built in ${BUILD_S} s; kiln:latest is $(numfmt --to=iec "$SIZE") ($SIZE bytes)"
grep -E 'built in|base image' "$TMP/images.log" | sed 's/^/    /'
echo "image_build_s=$BUILD_S image_bytes=$SIZE" > "$TMP/timings.txt"

# --- 3. the stack --------------------------------------------------------------------------------
podman system service --time=0 "unix://$SOCKET" > "$TMP/podman-service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 100); do [ -S "$SOCKET" ] && break; sleep 0.1; done
[ -S "$SOCKET" ] || fail "podman system service did not open $SOCKET"
if [ ! -d /run/systemd/system ]; then
  (
    while true; do
      for c in $(podman ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
        podman healthcheck run "$c" >/dev/null 2>&1 || true
      done
      sleep 2
    done
  ) &
  HEALTH_PID=$!
fi
HTTP_PORT=$(free_port)
GRPC_PORT=$(free_port)
export KILN_MODELS="$REPO" KILN_BIND=127.0.0.1 KILN_HTTP_PORT="$HTTP_PORT" KILN_GRPC_PORT="$GRPC_PORT"
say "docker-compose up (project $PROJECT; nginx on 127.0.0.1:$HTTP_PORT and :$GRPC_PORT)"
u0=$(date +%s)
timeout 600 "${COMPOSE[@]}" up -d --no-build > "$TMP/up.log" 2>&1 || { cat "$TMP/up.log"; fail "docker-compose up"; }
NGINX="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 120); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$NGINX/v2/health/ready")" = 200 ] && break
  sleep 1
done
UP_S=$(( $(date +%s) - u0 ))
[ "$(curl -s -o /dev/null -w '%{http_code}' "$NGINX/v2/health/ready")" = 200 ] \
  || fail "/v2/health/ready through nginx did not answer 200"
say "stack up and ready through nginx in ${UP_S} s"
"${COMPOSE[@]}" ps

container() {  # service -> container name
  podman ps --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -1
}
KILN_C="$(container kiln)"
PROM_C="$(container prometheus)"
[ -n "$KILN_C" ] && [ -n "$PROM_C" ] || fail "kiln or prometheus container missing"

# --- 4. traffic through nginx ------------------------------------------------------------------
say "uploading 20 PNGs to /predict through nginx and directly (inside the kiln container)"
n=0
for png in "$TMP"/images/*.png; do
  via=$(curl -sf -F "file=@$png" "$NGINX/predict?model=$MODEL&top_k=3") || fail "/predict via nginx: $png"
  direct=$(podman exec -i "$KILN_C" curl -sf -F "file=@-;filename=x.png" \
    "http://127.0.0.1:8000/predict?model=$MODEL&top_k=3" < "$png") || fail "/predict direct: $png"
  python3 - "$via" "$direct" "$TMP/predict.json" "$(basename "$png")" <<'EOF' || fail "/predict answers differ for $png"
import json, sys
via, direct = json.loads(sys.argv[1])["predictions"], json.loads(sys.argv[2])["predictions"]
assert [p["label"] for p in via] == [p["label"] for p in direct], (via, direct)
assert all(abs(a["probability"] - b["probability"]) < 1e-6 for a, b in zip(via, direct))
host = json.load(open(sys.argv[3]))
mine = [r for r in host if str(r.get("file", "")).endswith("/" + sys.argv[4])]
assert mine, f"kiln predict printed nothing for {sys.argv[4]}"
top = mine[0]["top_k"][0]["label"]
assert via[0]["label"] == top, (via[0], top)
EOF
  n=$((n + 1))
done
say "$n uploads: same top-3 through nginx as direct, same top-1 as kiln predict on the host"

say "KServe JSON and binary infer through nginx and directly"
python3 - "$NGINX" "$KILN_C" "$MODEL" <<'EOF' || fail "KServe answers differ"
import json, random, struct, subprocess, sys, urllib.request
nginx, kiln_c, model = sys.argv[1:4]
random.seed(3)
data = [random.gauss(0, 1) for _ in range(2 * 3072)]
body = json.dumps({"id": "s1", "inputs": [{"name": "input", "shape": [2, 3, 32, 32],
                                           "datatype": "FP32", "data": data}]}).encode()
def via(path, payload, headers):
    req = urllib.request.Request(nginx + path, data=payload, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read(), dict(r.headers)
def direct(path, payload, headers):
    args = ["podman", "exec", "-i", kiln_c, "curl", "-sf", "-D", "/dev/stderr", "-X", "POST",
            "--data-binary", "@-"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run(args + ["http://127.0.0.1:8000" + path], input=payload,
                         capture_output=True, check=True)
    return out.stdout
path = f"/v2/models/{model}/infer"
a, _ = via(path, body, {"Content-Type": "application/json"})
b = direct(path, body, {"Content-Type": "application/json"})
ja, jb = json.loads(a), json.loads(b)
assert ja["id"] == "s1" and ja["outputs"][0]["shape"] == [2, 10], ja
assert max(abs(x - y) for x, y in zip(ja["outputs"][0]["data"], jb["outputs"][0]["data"])) < 1e-5
header = json.dumps({"inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32",
                                 "parameters": {"binary_data_size": len(data) * 4}}],
                     "outputs": [{"name": ja["outputs"][0]["name"],
                                  "parameters": {"binary_data": True}}]}).encode()
payload = header + struct.pack(f"<{len(data)}f", *data)
h = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
c, headers = via(path, payload, h)
n = int(headers["Inference-Header-Content-Length"])
values = struct.unpack("<20f", c[n:])
assert max(abs(x - y) for x, y in zip(values, ja["outputs"][0]["data"])) < 1e-5
print("KServe JSON and binary: same logits through nginx as direct")
EOF

# An open loop at 100 requests/s: under nginx's limit of 200/s per client address (a closed
# loop at concurrency 8 runs into it: 429 beyond 200/s, by design).
say "kiln loadgen through nginx (KServe JSON, 100 requests/s, a few seconds)"
"$KILN" loadgen --url "$NGINX" -m "$MODEL" --mode json --request-rate 100 --max-threads 8 \
  --window-ms 1000 --max-windows 5 > "$TMP/loadgen.txt" 2>&1 || { cat "$TMP/loadgen.txt"; fail "loadgen"; }
sed 's/^/    /' "$TMP/loadgen.txt" | tail -2
python3 - "$TMP/loadgen.txt" <<'PY' || fail "loadgen saw errors or refusals through nginx"
import sys
lines = open(sys.argv[1]).read().splitlines()
head = next(i for i, l in enumerate(lines) if "errors" in l and "refused" in l)
# A row: level, infer/s, p50, p90, p95, p99, queue, compute, errors, refused[, late][ notes]
rows = [l.split() for l in lines[head + 1:] if l.split() and l.split()[0][0].isdigit()]
assert rows, "no result row"
for r in rows:
    assert int(r[8]) == 0 and int(r[9]) == 0, r
PY

say "the kiln container as compose.yaml says: limits, user, read-only root"
[ "$(podman inspect --format '{{.HostConfig.Memory}}' "$KILN_C")" = 2147483648 ] || fail "memory limit not 2g"
[ "$(podman inspect --format '{{.HostConfig.NanoCpus}}' "$KILN_C")" = 2000000000 ] \
  || [ "$(podman inspect --format '{{.HostConfig.CpuQuota}}' "$KILN_C")" = 200000 ] || fail "CPU limit not 2"
[ "$(podman exec "$KILN_C" id -u)" = 10001 ] || fail "kiln does not run as uid 10001"
podman exec "$KILN_C" touch /usr/local/bin/x 2>/dev/null && fail "the root file system is writable"
[ "$(podman inspect --format '{{.State.Health.Status}}' "$KILN_C")" = healthy ] || fail "kiln not healthy"

# --- 5. Prometheus -----------------------------------------------------------------------------
promql() {  # query -> JSON result, through Prometheus's HTTP API inside its container
  podman exec "$PROM_C" wget -qO- "http://127.0.0.1:9090/api/v1/query?query=$(python3 -c \
    'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1")"
}
value() {  # query -> the first sample's value, or "none"
  promql "$1" | python3 -c 'import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "none")'
}
say "waiting for Prometheus to scrape kiln and node-exporter (scrape interval 15 s)"
for _ in $(seq 60); do
  [ "$(value 'up{job="kiln"}')" = 1 ] && [ "$(value 'up{job="node"}')" = 1 ] \
    && [ "$(value 'up{job="nginx"}')" = 1 ] && break
  sleep 2
done
for job in kiln node nginx; do
  got="$(value "up{job=\"$job\"}")"
  [ "$got" = 1 ] || fail "Prometheus: up{job=\"$job\"} is $got"
  say "Prometheus: up{job=\"$job\"} == 1"
done
for _ in $(seq 30); do
  [ "$(value "sum(nv_inference_request_success{job=\"kiln\",model=\"$MODEL\"})")" != none ] && break
  sleep 2
done
served="$(value "sum(nv_inference_request_success{job=\"kiln\",model=\"$MODEL\"})")"
[ "$served" != none ] && [ "${served%.*}" -gt 0 ] || fail "Prometheus has no served requests of kiln ($served)"
say "Prometheus: kiln served $served requests"
podman exec "$PROM_C" wget -qO- http://127.0.0.1:9090/api/v1/alertmanagers \
  | grep -q 'alertmanager:9093' || fail "Prometheus does not send alerts to alertmanager:9093"
say "Prometheus: sends alerts to alertmanager:9093"
# The autoscaling metric of deploy/k8s (prometheus-adapter's query, grouped by instance here:
# compose has no pods) on live data: two scrapes after the traffic, a number, not NaN or absent.
q="$(python3 - "$ROOT/deploy/k8s/prometheus-adapter/config.yaml" <<'EOF'
import sys, yaml
rule = yaml.safe_load(open(sys.argv[1]))["rules"][0]
print(rule["metricsQuery"].replace("<<.GroupBy>>", "instance")
      .replace("<<.LabelMatchers>>", 'job="kiln"'))
EOF
)"
adapter="none"
for _ in $(seq 30); do
  adapter="$(value "$q")"
  [ "$adapter" != none ] && [ "$adapter" != NaN ] && break
  sleep 2
done
[ "$adapter" != none ] && [ "$adapter" != NaN ] || fail "the adapter query gave $adapter"
say "prometheus-adapter's kiln_queue_seconds_per_request on live data: $adapter s"

STACK_S=$(( $(date +%s) - T0 ))
echo "stack_test_s_before_teardown=$STACK_S up_s=$UP_S" >> "$TMP/timings.txt"
say "all checks passed"
