#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries a binary loads, one per line, sorted:
# what deploy/Dockerfile's runtime stage installs, so the image carries the libraries `kiln`
# needs and no compiler, header or -dev package. Libraries no package owns (ONNX Runtime, which
# scripts/setup.sh provisions into third_party/) are listed on standard error and left out.
#
# Usage: deploy/runtime-packages.sh BINARY
# Exit 1 when a library cannot be found (ldd's "not found").
set -euo pipefail
case "${1:-}" in
  -h|--help|"") sed -n '2,/^set -e/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ]; exit $? ;;
esac
binary="$1"
[ -x "$binary" ] || { echo "runtime-packages.sh: $binary is not an executable" >&2; exit 2; }

if ldd "$binary" | grep -q 'not found'; then
  ldd "$binary" | grep 'not found' >&2
  exit 1
fi
# dpkg knows a file by the path its package ships it under; on a merged-/usr system ldd may
# report /lib/... for a file shipped as /usr/lib/... or the other way round, and an
# update-alternatives link (libblas.so.3) must be followed to the file a package ships.
owner() {
  local path="$1" real candidates c
  real="$(readlink -f "$path")"
  candidates=("$path" "$real" "${real#/usr}" "/usr${real}" "${path#/usr}" "/usr${path}")
  for c in "${candidates[@]}"; do
    if out="$(dpkg-query -S "$c" 2>/dev/null)"; then
      printf '%s\n' "${out%%:*}" | sed 's/,.*//'
      return 0
    fi
  done
  echo "runtime-packages.sh: no package owns $path ($real): copy it into the image" >&2
}
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
  while read -r lib; do owner "$lib"; done | sed 's/:.*//' | sort -u
