#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds the release preset and runs the default test suite
# (every ctest test not labelled `slow`), then the fuzz stage (scripts/fuzz.sh: every libFuzzer
# target for 30 s, two at a time), then the sanitizer stages (scripts/sanitize.sh: ASan + UBSan,
# then TSan, each over the serving side). Extra arguments go to the release suite's ctest, e.g.
# `-L unit`. KILN_FUZZ_STAGE=0 skips the fuzz stage, KILN_SANITIZE_STAGES=0 the sanitizer
# stages. Every stage runs even when an earlier one failed; the exit code is non-zero when any
# did.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# ccache (when installed) keys on paths relative to the checkout, so another clone hits it too.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
scripts/setup.sh
cmake --preset release
cmake --build --preset release
rc=0
ctest --preset release "$@" || rc=$?
if [ "${KILN_FUZZ_STAGE:-1}" != 0 ]; then
  scripts/fuzz.sh --seconds 30 --jobs 2 || rc=1
fi
if [ "${KILN_SANITIZE_STAGES:-1}" != 0 ]; then
  scripts/sanitize.sh || rc=1
fi
exit $rc
