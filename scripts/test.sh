#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds the release preset and runs the default test suite
# (every ctest test not labelled `slow`), then the sanitizer stages (scripts/sanitize.sh: ASan +
# UBSan, then TSan). Extra arguments go to the release suite's ctest, e.g. `-L unit`;
# KILN_SANITIZE_STAGES=0 skips the sanitizer stages (a quick local run). Every stage runs even
# when an earlier one failed; the exit code is non-zero when any did.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
cmake --preset release
cmake --build --preset release
rc=0
ctest --preset release "$@" || rc=$?
if [ "${KILN_SANITIZE_STAGES:-1}" != 0 ]; then
  scripts/sanitize.sh || rc=1
fi
exit $rc
