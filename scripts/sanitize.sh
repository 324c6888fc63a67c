#!/usr/bin/env bash
# Builds and runs Kiln's sanitizer stages; CI runs both after the release suite (scripts/test.sh).
#
#   scripts/sanitize.sh           both stages: --asan, then --tsan
#   scripts/sanitize.sh --asan    preset `asan` (ASan + UBSan, -O1, the serving side only:
#                                 KILN_SERVE_ONLY): its unit tests (ctest preset `asan`: core,
#                                 data, backend, model config, the batcher on a manual clock, the
#                                 fuzz corpora), then the serving end-to-end tests (serve_test,
#                                 grpc_test, drift_test, robustness_test of the release build)
#                                 against the sanitized build/asan/kiln (ctest preset `asan-serve`)
#   scripts/sanitize.sh --tsan    preset `tsan` (ThreadSanitizer, the same serving-side build):
#                                 its unit tests (ctest preset `tsan-unit`; the batcher test runs
#                                 the engine's threads in process), then the same serving tests
#                                 against build/tsan/kiln (ctest preset `tsan`)
#   scripts/sanitize.sh --asan -- -R ServeTest    arguments after `--` go to every ctest run
#
# The whole project under ASan (training, export, optimization too) is the `debug` preset:
# `cmake --preset debug && cmake --build --preset debug && ctest --preset debug`.
# The serving tests are drivers: what runs sanitized is the `kiln serve` process they start
# (KILN_BINARY), and a report in its log fails the test. The sanitizer options (ASAN_OPTIONS,
# UBSAN_OPTIONS, TSAN_OPTIONS with tests/sanitizers/tsan.supp) are set by those ctest presets in
# CMakePresets.json, so running a preset by hand behaves the same. Every stage runs even when an
# earlier one failed; the exit code is non-zero when any did. What runs where, what is left out
# and why: docs/decisions.md ("Sanitizers in CI").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STAGES=()
CTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --asan) STAGES+=(asan) ;;
    --tsan) STAGES+=(tsan) ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; CTEST_ARGS=("$@"); break ;;
    *) echo "sanitize.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#STAGES[@]} -gt 0 ] || STAGES=(asan tsan)

# The serving tests' drivers, from the release build (nothing to build after the release suite).
SERVE_TESTS=(kiln serve_test grpc_test drift_test robustness_test)

say() { printf '\033[1m[sanitize]\033[0m %s\n' "$*"; }

build() {  # <preset> <targets...>
  local preset="$1"
  shift
  local start=$SECONDS
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" --target "$@"
  say "built $preset ($*) in $((SECONDS - start)) s"
}

tests() {  # <ctest preset>
  local start=$SECONDS rc=0
  ctest --preset "$1" "${CTEST_ARGS[@]}" || rc=$?
  say "ctest --preset $1: $((SECONDS - start)) s, exit $rc"
  return $rc
}

failed=()
for stage in "${STAGES[@]}"; do
  case "$stage" in
    asan)
      say "ASan + UBSan"
      if build asan all && build release "${SERVE_TESTS[@]}"; then
        tests asan || failed+=(asan-unit)
        tests asan-serve || failed+=(asan-serve)
      else
        failed+=(asan-build)
      fi ;;
    tsan)
      say "TSan"
      if build tsan all && build release "${SERVE_TESTS[@]}"; then
        tests tsan-unit || failed+=(tsan-unit)
        tests tsan || failed+=(tsan)
      else
        failed+=(tsan-build)
      fi ;;
  esac
done
if [ ${#failed[@]} -gt 0 ]; then
  say "failed: ${failed[*]}"
  exit 1
fi
say "all sanitizer stages passed"
