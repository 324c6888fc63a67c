#!/usr/bin/env bash
# Kiln's main job on a fresh machine: set up, build, then train the default model on the
# shared CIFAR-10 archive and report its test accuracy. Extra arguments go to `kiln train`.
#   DATA=path/to/cifar-10-binary.tar.gz scripts/main.sh --epochs 5
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="${DATA:-$ROOT/../shared/data/cifar-10-binary.tar.gz}"
scripts/setup.sh
cmake --preset release
cmake --build --preset release
build/release/kiln data verify --data "$DATA"
exec build/release/kiln train --data "$DATA" --out runs/kiln-resnet "$@"
