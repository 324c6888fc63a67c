#!/usr/bin/env bash
# Builds and runs Kiln's sanitizer stages; CI runs both after the release suite (scripts/test.sh).
#
#   scripts/sanitize.sh           both stages: --asan, then --tsan
#   scripts/sanitize.sh --asan    preset `debug` (ASan + UBSan): the unit tests (ctest preset
#                                 `debug`), then the serving end-to-end tests (serve_test,
#                                 robustness_test, grpc_test, drift_test of the release build)
#                                 against the sanitized build/debug/kiln (ctest preset
#                                 `asan-serve`)
#   scripts/sanitize.sh --tsan    preset `tsan` (ThreadSanitizer): builds only `kiln`; the same
#                                 serving tests against build/tsan/kiln (ctest preset `tsan`)
#   scripts/sanitize.sh --asan -- -R ServeTest    arguments after `--` go to every ctest run
#
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
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; CTEST_ARGS=("$@"); break ;;
    *) echo "sanitize.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#STAGES[@]} -gt 0 ] || STAGES=(asan tsan)

# The unit tests built with ASan + UBSan (every executable with tests labelled `unit`).
UNIT_TESTS=(core_test data_test train_test backend_test export_test optimize_test bench_test
            serve_unit_test)
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
      if build debug kiln "${UNIT_TESTS[@]}" && build release "${SERVE_TESTS[@]}"; then
        tests debug || failed+=(asan-unit)
        tests asan-serve || failed+=(asan-serve)
      else
        failed+=(asan-build)
      fi ;;
    tsan)
      say "TSan"
      if build tsan kiln && build release "${SERVE_TESTS[@]}"; then
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
