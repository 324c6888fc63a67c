#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds the release preset and runs the default test suite
# (every ctest test not labelled `slow`). Extra arguments go to ctest, e.g. `-L unit`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
cmake --preset release
cmake --build --preset release
ctest --preset release "$@"
