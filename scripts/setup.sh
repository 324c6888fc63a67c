#!/usr/bin/env bash
# Installs everything Kiln needs on Debian 12 (bookworm). Idempotent: safe to re-run; a second
# run only checks. Needs root (or sudo) for apt-get and update-alternatives.
#
#   scripts/setup.sh                install system packages, provision ONNX Runtime, create .venv,
#                                   provision OpenVINO from its pinned wheel, Node packages and
#                                   kustomize
#   scripts/setup.sh --check        only report what is missing; exit 1 if anything is
#   scripts/setup.sh --serve-build  only what building the serving side needs (the container
#                                   image's build stage, deploy/Dockerfile): the toolchain, the
#                                   libraries `kiln` links, the OpenMP OpenBLAS, ONNX Runtime; no
#                                   test, benchmark or deployment tools, .venv or Node packages
#
# ONNX Runtime is not packaged for Debian 12. It is provisioned into third_party/onnxruntime
# (git-ignored) from two pinned, checksummed downloads:
#   - the official CPU library libonnxruntime.so.1 (1.30.0) from the npm package
#     onnxruntime-node@1.30.0 (unpacked only; its install script is never run);
#   - the C/C++ headers from Debian 13's libonnxruntime-dev 1.21.0, fetched with
#     `apt-get download` through a private apt configuration whose sources are this machine's
#     own debian.sources with bookworm replaced by trixie. Nothing from trixie is installed into
#     the system. The ORT C API is versioned, so 1.21 headers work with the 1.30 library.
# Where a system ONNX Runtime exists (e.g. Debian 13's libonnxruntime-dev), it is used instead.
# Python tools from PyPI go into the project's virtual environment .venv/, pinned with hashes in
# scripts/python/requirements.txt; OpenVINO's C++ runtime for the build is unpacked from that
# file's pinned openvino wheel into third_party/openvino. kustomize (deploy/k8s tests) is built
# from the Go module proxy into third_party/kustomize/ with the machine's Go.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK_ONLY=0
SERVE_BUILD=0
case "${1:-}" in
  --check) CHECK_ONLY=1 ;;
  --serve-build) SERVE_BUILD=1 ;;
  -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "setup.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "run as root or install sudo"
  SUDO="sudo"
fi

# ---------------------------------------------------------------------------------------------
# 1. Debian packages.
# ---------------------------------------------------------------------------------------------
# What building `kiln` needs (and all that --serve-build installs).
BUILD_PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config ca-certificates curl
  # libtorch (CPU, oneDNN; the TorchScript engine, and training) + a fast BLAS (OpenMP OpenBLAS)
  libtorch-dev libopenblas0-openmp
  # data: tar.gz reading, checksums, downloads
  libarchive-dev libssl-dev libcurl4-openssl-dev
  # GIF (Debian's OpenCV 4.6 has no GIF decoder); EXIF orientation is applied by OpenCV
  libgif-dev libjpeg-dev zlib1g-dev
  # images (decode/resize, and PNG plots)
  libopencv-dev
  # ONNX graphs (export, optimize)
  libonnx-dev libprotobuf-dev protobuf-compiler
  # CLI, JSON, logging
  libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev prometheus-cpp-dev
  # serving: Boost.Beast/Asio (headers), gRPC (grpc++ and protoc's grpc_cpp_plugin)
  libboost-dev libgrpc++-dev protobuf-compiler-grpc
)
PACKAGES=(
  "${BUILD_PACKAGES[@]}"
  git ccache clang-format clang-tidy
  # fuzzing (scripts/fuzz.sh, the fuzz preset): clang 14 with libFuzzer and its sanitizer runtimes
  clang-14 libfuzzer-14-dev libclang-rt-14-dev
  # tests and benchmarks; python3-torch is the PyTorch baseline `kiln bench` compares against
  libgtest-dev libgmock-dev libbenchmark-dev python3-torch
  # monitoring (deploy/prometheus tests, the Grafana live test): promtool, amtool, node-exporter
  # and the nginx exporter
  prometheus prometheus-alertmanager prometheus-node-exporter prometheus-nginx-exporter
  # serving benchmarks and the browser test: wrk, the FastAPI baseline, headless Chromium
  wrk chromium python3-fastapi python3-uvicorn python3-multipart python3-pil
  # deployment (deploy/, docs/deploy.md): nginx in front of kiln (the nginx test); rootful podman
  # with runc (crun refuses this machine's cgroup layout), CNI networking with DNS between
  # containers, catatonit as the containers' init; debootstrap for the local base image;
  # Docker Compose 1.29 (talks to podman's Docker API) and podman-compose
  nginx podman runc containernetworking-plugins golang-github-containernetworking-plugin-dnsname
  catatonit debootstrap docker-compose podman-compose
  # the project's virtual environment for PyPI tools (section 4)
  python3-venv
)
[ "$SERVE_BUILD" -eq 1 ] && PACKAGES=("${BUILD_PACKAGES[@]}")

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$CHECK_ONLY" -eq 1 ]; then
    echo "missing packages: ${missing[*]}"; exit 1
  fi
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all ${#PACKAGES[@]} present"
fi
# npm (to fetch the ONNX Runtime library and the Node packages): any Node.js install will do;
# Debian's if none. Installed only when a download needs it.
ensure_npm() {
  if ! command -v npm >/dev/null; then
    [ "$CHECK_ONLY" -eq 1 ] && { echo "npm missing"; exit 1; }
    say "installing npm from Debian"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm
  fi
}
[ "$SERVE_BUILD" -eq 1 ] || ensure_npm

# libtorch links libblas.so.3 / liblapack.so.3 through alternatives; apt leaves the slow
# reference BLAS selected. The OpenMP OpenBLAS is up to 2.3x faster here (the pthread build is
# slow on 2 cores), so select it explicitly.
MULTIARCH="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
for lib in libblas.so.3 liblapack.so.3; do
  want="/usr/lib/${MULTIARCH}/openblas-openmp/${lib}"
  group="${lib}-${MULTIARCH}"
  [ -e "$want" ] || die "$want not found (libopenblas0-openmp incomplete?)"
  current="$(update-alternatives --query "$group" 2>/dev/null | awk '/^Value:/{print $2}')"
  if [ "$current" != "$want" ]; then
    [ "$CHECK_ONLY" -eq 1 ] && { echo "BLAS alternative $group is $current, want $want"; exit 1; }
    say "selecting OpenMP OpenBLAS for $group"
    $SUDO update-alternatives --set "$group" "$want" >/dev/null
  fi
done
say "BLAS: OpenMP OpenBLAS selected"

verify() {  # file sha256
  local got; got="$(sha256sum "$1" | awk '{print $1}')"
  [ "$got" = "$2" ] || die "checksum mismatch for $(basename "$1"): got $got, want $2"
}
# apt-get download of Debian 13 (trixie) packages into $CACHE, through a private apt
# configuration whose sources are this machine's debian.sources with bookworm replaced by trixie;
# nothing is installed. Arguments: NAME=VERSION ...
trixie_download() {
  local apt_dir="$CACHE/apt-trixie"
  mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  sed 's/bookworm/trixie/g' /etc/apt/sources.list.d/debian.sources > "$apt_dir/parts/trixie.sources"
  : > "$apt_dir/status"
  cat > "$apt_dir/apt.conf" <<EOF
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$apt_dir/parts";
Dir::State::Lists "$apt_dir/lists";
Dir::State::status "$apt_dir/status";
Dir::Cache "$apt_dir/cache";
EOF
  APT_CONFIG="$apt_dir/apt.conf" apt-get update -qq
  (cd "$CACHE" && APT_CONFIG="$apt_dir/apt.conf" \
    apt-get download -qq "$@" 2>&1 | grep -v unsandboxed || true)
}

# ---------------------------------------------------------------------------------------------
# 2. ONNX Runtime.
# ---------------------------------------------------------------------------------------------
ORT_NPM_VERSION="1.30.0"
ORT_NPM_SHA256="6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75"
ORT_DEB_VERSION="1.21.0+dfsg-1"
ORT_DEB_SHA256="14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
ORT_DIR="$ROOT/third_party/onnxruntime"
CACHE="$ROOT/.cache/setup"
STAMP="$ORT_DIR/.provisioned-${ORT_NPM_VERSION}-${ORT_DEB_VERSION}"

if [ -f "/usr/lib/${MULTIARCH}/cmake/onnxruntime/onnxruntimeConfig.cmake" ] \
    && ls "/usr/lib/${MULTIARCH}"/libonnxruntime.so* >/dev/null 2>&1; then
  say "ONNX Runtime: using the system installation"
elif [ -f "$STAMP" ] && [ -f "$ORT_DIR/lib/libonnxruntime.so.1" ] \
    && [ -f "$ORT_DIR/include/onnxruntime_cxx_api.h" ]; then
  say "ONNX Runtime: already provisioned in third_party/onnxruntime"
else
  [ "$CHECK_ONLY" -eq 1 ] && { echo "ONNX Runtime not provisioned"; exit 1; }
  mkdir -p "$CACHE"

  tgz="$CACHE/onnxruntime-node-${ORT_NPM_VERSION}.tgz"
  if [ ! -f "$tgz" ] || ! (sha256sum "$tgz" | grep -q "$ORT_NPM_SHA256"); then
    say "downloading onnxruntime-node@${ORT_NPM_VERSION} from the npm registry (library only)"
    ensure_npm
    (cd "$CACHE" && npm pack --silent "onnxruntime-node@${ORT_NPM_VERSION}" >/dev/null)
  fi
  verify "$tgz" "$ORT_NPM_SHA256"

  deb="$CACHE/libonnxruntime-dev_${ORT_DEB_VERSION}_amd64.deb"
  if [ ! -f "$deb" ] || ! (sha256sum "$deb" | grep -q "$ORT_DEB_SHA256"); then
    say "downloading Debian 13 libonnxruntime-dev ${ORT_DEB_VERSION} (headers only; not installed)"
    trixie_download "libonnxruntime-dev=${ORT_DEB_VERSION}"
    # apt-get download names the file with the epoch-escaped version
    found="$(ls "$CACHE"/libonnxruntime-dev_*_amd64.deb 2>/dev/null | head -1)"
    [ -n "$found" ] || die "apt-get download libonnxruntime-dev=${ORT_DEB_VERSION} failed"
    [ "$found" = "$deb" ] || mv "$found" "$deb"
  fi
  verify "$deb" "$ORT_DEB_SHA256"

  say "unpacking ONNX Runtime into third_party/onnxruntime"
  rm -rf "$ORT_DIR"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  tar -xzf "$tgz" -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
  dpkg-deb -x "$deb" "$tmp/deb"
  mkdir -p "$ORT_DIR/lib/cmake/onnxruntime" "$ORT_DIR/include"
  cp "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$ORT_DIR/lib/"
  ln -sf libonnxruntime.so.1 "$ORT_DIR/lib/libonnxruntime.so"
  cp -r "$tmp/deb/usr/include/onnxruntime/." "$ORT_DIR/include/"
  cp "$ROOT/cmake/onnxruntimeConfig.cmake.in" "$ORT_DIR/lib/cmake/onnxruntime/onnxruntimeConfig.cmake"
  sha256sum "$tgz" "$deb" > "$ORT_DIR/SOURCES.sha256"
  touch "$STAMP"
  say "ONNX Runtime provisioned (library ${ORT_NPM_VERSION}, headers ${ORT_DEB_VERSION})"
fi

if [ "$SERVE_BUILD" -eq 1 ]; then
  say "done (--serve-build: the serving side's build dependencies only)"
  exit 0
fi

# Node packages, into the git-ignored node_modules/ in one `npm install` (a second --no-save
# install would remove the first's): playwright-core (drives Debian's chromium in the web page
# test; its install script is disabled, it would download browsers), typescript with
# @grafana/schema (the Grafana dashboard is type-checked against Grafana's published Dashboard
# type in tests/deploy/dashboard_test.py), and @kubernetes-models/prometheus-operator, whose
# models carry the JSON schemas of prometheus-operator's CRDs (tests/deploy/k8s_test.py
# validates the ServiceMonitor against it; Kubernetes' own kinds go to kubernetes-validate).
PLAYWRIGHT_VERSION=1.65.1
TYPESCRIPT_VERSION=5.9.3
GRAFANA_SCHEMA_VERSION=13.2.3
PROMETHEUS_OPERATOR_MODELS_VERSION=6.0.0
node_version() { node -p "require('$ROOT/node_modules/$1/package.json').version" 2>/dev/null; }
if [ "$(node_version playwright-core)" != "$PLAYWRIGHT_VERSION" ] ||
   [ "$(node_version typescript)" != "$TYPESCRIPT_VERSION" ] ||
   [ "$(node_version @grafana/schema)" != "$GRAFANA_SCHEMA_VERSION" ] ||
   [ "$(node_version @kubernetes-models/prometheus-operator)" != "$PROMETHEUS_OPERATOR_MODELS_VERSION" ]; then
  [ "$CHECK_ONLY" -eq 1 ] && { echo "node packages missing in node_modules/"; exit 1; }
  say "installing playwright-core $PLAYWRIGHT_VERSION, typescript $TYPESCRIPT_VERSION, @grafana/schema $GRAFANA_SCHEMA_VERSION, @kubernetes-models/prometheus-operator $PROMETHEUS_OPERATOR_MODELS_VERSION into node_modules/"
  npm install --prefix "$ROOT" --no-save --no-package-lock --ignore-scripts \
    "playwright-core@$PLAYWRIGHT_VERSION" "typescript@$TYPESCRIPT_VERSION" \
    "@grafana/schema@$GRAFANA_SCHEMA_VERSION" \
    "@kubernetes-models/prometheus-operator@$PROMETHEUS_OPERATOR_MODELS_VERSION" >/dev/null
else
  say "node packages present (playwright-core, typescript, @grafana/schema, @kubernetes-models/prometheus-operator)"
fi

# ---------------------------------------------------------------------------------------------
# 4. Python tools from PyPI, into the project's virtual environment .venv/ (git-ignored), never
# into the system Python: Triton's client, kubernetes-validate, ONNX Runtime's quantizer,
# OpenVINO and NNCF. scripts/python/requirements.txt pins every package with its hashes
# (`pip install --require-hashes`); the venv is rebuilt when that file changes. Debian's
# python3-torch and the FastAPI baseline stay with /usr/bin/python3.
# ---------------------------------------------------------------------------------------------
VENV="$ROOT/.venv"
REQ="$ROOT/scripts/python/requirements.txt"
REQ_SUM="$(sha256sum "$REQ" | awk '{print $1}')"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$REQ_SUM" ]; then
  say "Python tools: .venv matches scripts/python/requirements.txt"
else
  [ "$CHECK_ONLY" -eq 1 ] && { echo ".venv missing or out of date"; exit 1; }
  say "creating .venv from scripts/python/requirements.txt (pinned, hash-checked)"
  # The stamp is written last: an interrupted install is redone on the next run.
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --no-input --require-hashes --no-deps -r "$REQ"
  echo "$REQ_SUM" > "$VENV/.requirements.sha256"
  say "Python tools installed into .venv"
fi

# ---------------------------------------------------------------------------------------------
# 4b. OpenVINO's C/C++ runtime for the build (the `openvino` engine), from the same pinned wheel
# as .venv's: `pip download` fetches openvino==<pinned> with --require-hashes against the hashes
# in scripts/python/requirements.txt, and the wheel's own CMake package, headers and libraries
# (openvino/cmake, openvino/include, openvino/libs) are unpacked into third_party/openvino
# (git-ignored) in the wheel's layout, which the CMake package expects; CMakeLists.txt finds it
# there. Left out: the GPU and NPU plugins and the GPU kernel cache (Kiln runs on the CPU). The
# wheel's libstdc++ ABI is the new one (OpenVINO_GLIBCXX_USE_CXX11_ABI "1"), like Kiln's, so the
# C++ API is used (docs/decisions.md, "OpenVINO"). Not in --serve-build (no .venv there): the
# serving image's kiln is built without OpenVINO.
# ---------------------------------------------------------------------------------------------
OV_VERSION="$(awk -F'[= ]+' '/^openvino==/{print $2; exit}' "$REQ")"
OV_DIR="$ROOT/third_party/openvino"
OV_STAMP="$OV_DIR/.provisioned-${OV_VERSION}"
if [ -f "$OV_STAMP" ] && [ -f "$OV_DIR/openvino/cmake/OpenVINOConfig.cmake" ] \
    && [ -f "$OV_DIR/openvino/include/openvino/openvino.hpp" ]; then
  say "OpenVINO ${OV_VERSION}: already provisioned in third_party/openvino"
else
  [ "$CHECK_ONLY" -eq 1 ] && { echo "OpenVINO not provisioned in third_party/openvino"; exit 1; }
  [ -n "$OV_VERSION" ] || die "no openvino== pin in $REQ"
  mkdir -p "$CACHE/wheels"
  # The pin and its hash lines, as a requirements file of its own.
  awk '/^openvino==/{p=1} p{print} p && !/\\$/{exit}' "$REQ" > "$CACHE/openvino-requirement.txt"
  say "downloading the openvino ${OV_VERSION} wheel (hash-checked against requirements.txt)"
  "$VENV/bin/pip" download -q --no-input --no-deps --require-hashes --only-binary=:all: \
    -d "$CACHE/wheels" -r "$CACHE/openvino-requirement.txt"
  wheel="$(ls "$CACHE"/wheels/openvino-"${OV_VERSION}"-*.whl 2>/dev/null | head -1)"
  [ -n "$wheel" ] || die "pip download openvino==${OV_VERSION} left no wheel in $CACHE/wheels"
  say "unpacking OpenVINO's runtime, headers and CMake package into third_party/openvino"
  rm -rf "$OV_DIR"
  "$VENV/bin/python" - "$wheel" "$OV_DIR" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
skip = ("libopenvino_intel_gpu_plugin", "libopenvino_intel_npu_plugin", "cache.json")
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist()
             if n.startswith(("openvino/libs/", "openvino/include/", "openvino/cmake/"))
             and not n.rsplit("/", 1)[-1].startswith(skip)]
    z.extractall(out, names)
PY
  sha256sum "$wheel" > "$OV_DIR/SOURCES.sha256"
  touch "$OV_STAMP"
  say "OpenVINO ${OV_VERSION} provisioned ($(basename "$wheel"))"
fi

# ---------------------------------------------------------------------------------------------
# 4c. Triton's perf_analyzer (bench/perf_vs_loadgen.py, bench/serve_bench.py --perf-analyzer),
# from the pinned perf-analyzer wheel in scripts/python/perf-analyzer.txt (downloaded with
# --require-hashes for its manylinux_2_38 tag: the binary needs glibc 2.38 and GLIBCXX_3.4.32,
# Debian 12 has 2.36 and 3.4.30). Debian 13's libc6, libstdc++6 and libgcc-s1 (pinned versions,
# SHA-256 checked, fetched with trixie_download, never installed) are unpacked beside it into
# third_party/perf_analyzer/lib; scripts/perf_analyzer.sh runs the binary through that dynamic
# loader with --library-path. Its other libraries (libssl, libcrypto, libz) are the system's.
# ---------------------------------------------------------------------------------------------
PA_REQ="$ROOT/scripts/python/perf-analyzer.txt"
PA_VERSION="$(awk -F'[= ]+' '/^perf-analyzer==/{print $2; exit}' "$PA_REQ")"
PA_DEBS=(
  "libc6 2.41-12+deb13u5 b59b0625cd1a791375d40dab23a4d5d3d0641e3d0a773501becdc3725b7f99cf"
  "libstdc++6 14.2.0-19 ab1fa05837aa7a92aae748fd07a18a35f7d18bb4a71c4724fe2bbf0e32089de0"
  "libgcc-s1 14.2.0-19 3c71917b490d1a17aed43196a2787a256ecf060526cdb20216a74bedc061b150"
)
PA_DIR="$ROOT/third_party/perf_analyzer"
PA_STAMP="$PA_DIR/.provisioned-${PA_VERSION}-$(printf '%s\n' "${PA_DEBS[@]}" | sha256sum | cut -c1-12)"
if [ -f "$PA_STAMP" ] && [ -x "$PA_DIR/bin/perf_analyzer" ] && [ -f "$PA_DIR/lib/ld-linux-x86-64.so.2" ]; then
  say "perf_analyzer ${PA_VERSION}: already provisioned in third_party/perf_analyzer"
else
  [ "$CHECK_ONLY" -eq 1 ] && { echo "perf_analyzer not provisioned in third_party/perf_analyzer"; exit 1; }
  [ -n "$PA_VERSION" ] || die "no perf-analyzer== pin in $PA_REQ"
  mkdir -p "$CACHE/wheels"
  say "downloading the perf-analyzer ${PA_VERSION} wheel (manylinux_2_38, hash-checked)"
  "$VENV/bin/pip" download -q --no-input --no-deps --require-hashes --only-binary=:all: \
    --platform manylinux_2_38_x86_64 --python-version 3.11 -d "$CACHE/wheels" -r "$PA_REQ"
  pa_wheel="$(ls "$CACHE"/wheels/perf_analyzer-"${PA_VERSION}"-*.whl 2>/dev/null | head -1)"
  [ -n "$pa_wheel" ] || die "pip download perf-analyzer==${PA_VERSION} left no wheel"
  pa_specs=()
  for entry in "${PA_DEBS[@]}"; do
    read -r name version sum <<<"$entry"
    deb="$CACHE/${name}_${version}_amd64.deb"
    if [ ! -f "$deb" ] || ! (sha256sum "$deb" | grep -q "$sum"); then pa_specs+=("$name=$version"); fi
  done
  if [ "${#pa_specs[@]}" -gt 0 ]; then
    say "downloading Debian 13 ${pa_specs[*]} (unpacked for perf_analyzer only; not installed)"
    trixie_download "${pa_specs[@]}"
  fi
  say "unpacking perf_analyzer and its Debian 13 runtime into third_party/perf_analyzer"
  rm -rf "$PA_DIR"
  pa_tmp="$(mktemp -d)"
  mkdir -p "$PA_DIR/bin" "$PA_DIR/lib"
  for entry in "${PA_DEBS[@]}"; do
    read -r name version sum <<<"$entry"
    # apt-get download escapes the version's ':' (none here) and names the file like this.
    deb="$CACHE/${name}_${version}_amd64.deb"
    [ -f "$deb" ] || die "apt-get download ${name}=${version} failed"
    verify "$deb" "$sum"
    dpkg-deb -x "$deb" "$pa_tmp/root"
  done
  cp -a "$pa_tmp/root/usr/lib/${MULTIARCH}/." "$PA_DIR/lib/"
  rm -rf "$PA_DIR/lib/gconv"
  "$VENV/bin/python" - "$pa_wheel" "$PA_DIR/bin" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    with open(os.path.join(out, "perf_analyzer"), "wb") as f:
        f.write(z.read("perf_analyzer/bin/perf_analyzer"))
os.chmod(os.path.join(out, "perf_analyzer"), 0o755)
PY
  rm -rf "$pa_tmp"
  sha256sum "$pa_wheel" "$CACHE"/libc6_*.deb "$CACHE"/libstdc++6_*.deb "$CACHE"/libgcc-s1_*.deb \
    > "$PA_DIR/SOURCES.sha256"
  "$ROOT/scripts/perf_analyzer.sh" --version >/dev/null 2>&1 \
    || die "third_party/perf_analyzer: the binary does not run (scripts/perf_analyzer.sh --version)"
  touch "$PA_STAMP"
  say "perf_analyzer ${PA_VERSION} provisioned ($(basename "$pa_wheel"))"
fi

# ---------------------------------------------------------------------------------------------
# 5. kustomize (renders deploy/k8s in tests/deploy/k8s_test.py), built from the Go module proxy
# with the machine's Go (1.26 here; kustomize v5.8.2 asks for go 1.26.0) into
# third_party/kustomize/bin (git-ignored). Debian 12's kubernetes-client embeds kustomize v2.0.3,
# which predates the `patches` field the overlays use.
# ---------------------------------------------------------------------------------------------
KUSTOMIZE_VERSION=v5.8.2
KUSTOMIZE="$ROOT/third_party/kustomize/bin/kustomize"
GO="$(command -v go || true)"
[ -z "$GO" ] && [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go
if [ -x "$KUSTOMIZE" ] && "$KUSTOMIZE" version 2>/dev/null | grep -q "${KUSTOMIZE_VERSION}"; then
  say "kustomize ${KUSTOMIZE_VERSION} present in third_party/kustomize"
else
  [ "$CHECK_ONLY" -eq 1 ] && { echo "kustomize ${KUSTOMIZE_VERSION} missing in third_party/kustomize"; exit 1; }
  if [ -z "$GO" ]; then
    # Debian 12's golang (1.19) is too old for kustomize v5; the k8s rendering test then fails
    # and says so.
    say "warning: no Go toolchain (1.26+): kustomize not installed; deploy_k8s will fail"
  else
    say "building kustomize ${KUSTOMIZE_VERSION} with $("$GO" version | awk '{print $3}') into third_party/kustomize (a few minutes)"
    mkdir -p "$ROOT/third_party/kustomize/bin"
    GOBIN="$ROOT/third_party/kustomize/bin" GOTOOLCHAIN=local GOFLAGS=-mod=mod \
      "$GO" install "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}"
  fi
fi

say "done"
