#!/usr/bin/env bash
# Kiln's main job on a fresh machine: set up, build, then run the whole pipeline on the shared
# CIFAR-10 archive (train -> export -> optimize -> bench; about 35 minutes on 2 cores) into
# runs/pipeline, print the best model and where the report is, then serve it. Re-running
# reuses finished stages. Extra arguments go to `kiln pipeline` (e.g. --quick for a few-minute smoke run).
#   DATA=path/to/cifar-10-binary.tar.gz scripts/main.sh --quick
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="${DATA:-$ROOT/../shared/data/cifar-10-binary.tar.gz}"
scripts/setup.sh
cmake --preset release
cmake --build --preset release
build/release/kiln data verify --data "$DATA"
build/release/kiln pipeline --data "$DATA" --out runs/pipeline "$@"
# Then write every model that passed its accuracy gate as a Triton model repository (complete
# configs: Triton loads the same folder) and serve it with auto-completion off:
# http://127.0.0.1:8000 (web page at /), gRPC on 8001, Ctrl-C to stop.
REPO=runs/pipeline/model_repository
build/release/kiln repo write --manifest runs/pipeline/optimized/manifest.json --out "$REPO" \
  --data "$DATA" --force
exec build/release/kiln serve --models "$REPO" --disable-auto-complete-config
