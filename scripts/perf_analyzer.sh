#!/usr/bin/env bash
# Triton's perf_analyzer (the pinned perf-analyzer wheel's binary, provisioned by
# scripts/setup.sh into third_party/perf_analyzer), run through the Debian 13 dynamic loader
# unpacked beside it: the binary needs glibc 2.38 and libstdc++ GLIBCXX_3.4.32, Debian 12 has
# 2.36. Every argument goes to perf_analyzer, e.g.
#
#   scripts/perf_analyzer.sh -m cifar -u 127.0.0.1:8000 -i http --concurrency-range 1:16:x2 -f pa.csv
#
# perf_analyzer has no --help of its own; -h/--help here prints this and then its usage.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PA="$ROOT/third_party/perf_analyzer"
if [ ! -x "$PA/bin/perf_analyzer" ] || [ ! -f "$PA/lib/ld-linux-x86-64.so.2" ]; then
  echo "perf_analyzer.sh: $PA is not provisioned: run scripts/setup.sh" >&2
  exit 2
fi
run() { exec "$PA/lib/ld-linux-x86-64.so.2" --library-path "$PA/lib" "$PA/bin/perf_analyzer" "$@"; }
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^set -e/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
  echo
  run
fi
run "$@"
