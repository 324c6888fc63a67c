#!/usr/bin/env bash
# Regenerates scripts/python/requirements.txt (every package pinned, with its SHA-256 hashes)
# from requirements.in, with pip-tools in a throw-away virtual environment. Run after editing
# requirements.in; commit both files. Needs PyPI.
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q pip-tools==7.7.0
cd "$DIR"
PIP_FIND_LINKS= "$tmp/venv/bin/pip-compile" --generate-hashes --allow-unsafe --strip-extras -q \
  --no-emit-find-links -o requirements.txt requirements.in
