#!/usr/bin/env bash
# Builds the fuzz preset's libFuzzer targets (tests/fuzz/) and runs each for a fixed time on a
# scratch copy of its seed corpus and regression inputs; prints executions, exec/s and coverage
# per target and a final table. Runs unattended (CI); exits 1 on any crash, leak, timeout, OOM
# or sanitizer report, leaving the input under build/fuzz/crashes/<target>/.
#
#   scripts/fuzz.sh                       every target, 30 s each
#   scripts/fuzz.sh --seconds 600 --target predict
#   scripts/fuzz.sh --jobs 2              two targets at a time (one per core)
#
# Options:
#   --seconds N     fuzzing time per target (-max_total_time; default 30)
#   --target NAME   only this target (repeatable): image multipart kserve_json kserve_binary
#                   model_config predict
#   --jobs N        targets run at the same time (default 1)
#   --no-build      use the binaries already in build/fuzz
#   --keep-corpus   print where each scratch corpus is (it grows; tests/fuzz/corpus never does)
#
# Each target runs with -timeout=10 -rss_limit_mb=2048 and its dictionary (tests/fuzz/dicts/).
# Logs: build/fuzz/fuzz-logs/<target>.log. Reproduce a crash:
#   build/fuzz/fuzz/fuzz_<target> build/fuzz/crashes/<target>/crash-...
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ALL_TARGETS=(image multipart kserve_json kserve_binary model_config predict)
SECONDS_PER=30
JOBS=1
BUILD=1
KEEP=0
TARGETS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER="${2:?--seconds needs a number}"; shift 2 ;;
    --target) TARGETS+=("${2:?--target needs a name}"); shift 2 ;;
    --jobs) JOBS="${2:?--jobs needs a number}"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep-corpus) KEEP=1; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$SECONDS_PER" =~ ^[0-9]+$ ]] && [ "$SECONDS_PER" -ge 1 ] ||
  { echo "fuzz.sh: --seconds must be a positive integer" >&2; exit 2; }
[[ "$JOBS" =~ ^[0-9]+$ ]] && [ "$JOBS" -ge 1 ] ||
  { echo "fuzz.sh: --jobs must be a positive integer" >&2; exit 2; }
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] ||
    { echo "fuzz.sh: unknown target '$t' (one of: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

BIN="$ROOT/build/fuzz/fuzz"
WORK="$ROOT/build/fuzz/fuzz-work"   # scratch corpora and dictionaries, recreated every run
LOGS="$ROOT/build/fuzz/fuzz-logs"
CRASHES="$ROOT/build/fuzz/crashes"
started=$(date +%s)

if [ "$BUILD" -eq 1 ]; then
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
  [ -f build/fuzz/CMakeCache.txt ] || cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz --target "${TARGETS[@]/#/fuzz_}"
fi
built=$(date +%s)

dict_of() {
  case "$1" in
    image) echo image.dict ;;
    multipart) echo multipart.dict ;;
    kserve_json|kserve_binary) echo kserve.dict ;;
    model_config) echo model_config.dict ;;
    predict) echo "multipart.dict image.dict" ;;
  esac
}

# Runs one target; writes its summary line to $WORK/<target>.result.
run_one() {
  local t="$1" exe="$BIN/fuzz_$1" work="$WORK/$1" log="$LOGS/$1.log" dict
  [ -x "$exe" ] || { echo "$t: $exe not built" >&2; echo "$t FAIL - - - - not-built" > "$WORK/$t.result"; return; }
  rm -rf "$work" "$CRASHES/$t"
  mkdir -p "$work/corpus" "$CRASHES/$t"
  cp -r tests/fuzz/corpus/"$t"/. "$work/corpus/"
  # Regression inputs join the scratch corpus: each one is replayed before fuzzing starts.
  [ -d tests/fuzz/regressions/"$t" ] && cp -r tests/fuzz/regressions/"$t"/. "$work/corpus/"
  dict="$work/$t.dict"
  : > "$dict"
  for d in $(dict_of "$t"); do cat "tests/fuzz/dicts/$d" >> "$dict"; done
  local rc=0
  LSAN_OPTIONS="suppressions=$ROOT/tests/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}" "$exe" "$work/corpus" -max_total_time="$SECONDS_PER" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -dict="$dict" -artifact_prefix="$CRASHES/$t/" \
    >"$log" 2>&1 || rc=$?
  local execs eps cov ft corp verdict=ok
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | awk '{print $2}')
  if [ "$rc" -ne 0 ] || grep -qE '^==[0-9]+==ERROR|runtime error:|ERROR: libFuzzer|fuzz check failed|ALARM: working on the last Unit' "$log" \
      || [ -n "$(ls -A "$CRASHES/$t")" ]; then
    verdict=FAIL
  fi
  rmdir "$CRASHES/$t" 2>/dev/null || true
  echo "$t $verdict ${execs:--} ${eps:--} ${cov:--} ${ft:--} ${corp:--}" > "$WORK/$t.result"
  printf '%-14s %-4s executions %-9s exec/s %-7s cov %-6s ft %-6s corpus %s\n' \
    "$t" "$verdict" "${execs:--}" "${eps:--}" "${cov:--}" "${ft:--}" "${corp:--}"
  if [ "$verdict" = FAIL ]; then
    echo "---- $t: last lines of $log ----"
    tail -n 40 "$log"
    echo "---- inputs left in $CRASHES/$t/: $(ls "$CRASHES/$t" 2>/dev/null | tr '\n' ' ')"
  fi
}

rm -rf "$WORK"
mkdir -p "$WORK" "$LOGS"
echo "fuzzing ${#TARGETS[@]} target(s), ${SECONDS_PER} s each, ${JOBS} at a time"
running=0
for t in "${TARGETS[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
done
wait

failed=0
echo
printf '%-14s %-7s %12s %9s %7s %7s %12s\n' target result executions exec/s cov ft corpus
for t in "${TARGETS[@]}"; do
  read -r name verdict execs eps cov ft corp < "$WORK/$t.result"
  printf '%-14s %-7s %12s %9s %7s %7s %12s\n' "$name" "$verdict" "$execs" "$eps" "$cov" "$ft" "$corp"
  [ "$verdict" = ok ] || failed=1
done
finished=$(date +%s)
echo "build $((built - started)) s, fuzzing $((finished - built)) s, total $((finished - started)) s"
[ "$KEEP" -eq 1 ] && echo "scratch corpora: $WORK/<target>/corpus"
if [ "$failed" -ne 0 ]; then
  echo "fuzz.sh: FAILED: crashing inputs under build/fuzz/crashes/<target>/; add each to" \
       "tests/fuzz/regressions/<target>/ with its fix" >&2
  exit 1
fi
echo "fuzz.sh: no crash"
