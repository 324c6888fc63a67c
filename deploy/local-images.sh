#!/usr/bin/env bash
# Makes the container images of Kiln's compose stack on a machine that reaches no container
# registry, with rootful podman (docs/deploy.md):
#
#   1. the base image docker.io/library/debian:bookworm-slim, made locally: debootstrap
#      --variant=minbase bookworm into a folder, slimmed like Debian's official slim image, with
#      this host's apt sources and Acquire settings and its locally added CA certificates (so
#      containers reach Debian's mirror and the registries the way the host does), then
#      `podman import`. deploy/Dockerfile stays the standard one.
#   2. the images of the Debian-packaged services of deploy/compose.local.yaml (prometheus,
#      alertmanager, node-exporter, nginx, nginx-exporter), built from deploy/local/Dockerfile
#      on that base image.
#   3. with --kiln, the Kiln image itself from deploy/Dockerfile (kiln:latest).
#
# Usage: deploy/local-images.sh [--kiln] [--base-only] [--rebuild-base] [--help]
#   --kiln          also build deploy/Dockerfile as kiln:latest (prints the build time and size)
#   --base-only     only step 1
#   --rebuild-base  make the base image again even if it exists
# Needs root, podman, runc and debootstrap (scripts/setup.sh installs them). Podman runs with
# deploy/podman/containers.conf unless CONTAINERS_CONF is already set. Every build uses
# --pull=never: nothing is pulled from a registry. A user who reaches Docker Hub needs none of
# this: `docker compose -f deploy/compose.yaml up --build` pulls and builds what it needs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="docker.io/library/debian:bookworm-slim"
BUILD_KILN=0
BASE_ONLY=0
REBUILD_BASE=0
for arg in "$@"; do
  case "$arg" in
    --kiln) BUILD_KILN=1 ;;
    --base-only) BASE_ONLY=1 ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    -h|--help) sed -n '2,/^set -e/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "local-images.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m[local-images]\033[0m %s\n' "$*"; }
die() { printf '[local-images] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (rootful podman, debootstrap)"
for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || die "$tool not found: run scripts/setup.sh"
done
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/deploy/podman/containers.conf}"

# The Debian mirror this host's apt uses for bookworm: the first URIs of a deb822 stanza whose
# Suites name bookworm, else the first one-line `deb` entry for bookworm.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN{RS=""; FS="\n"}
         /(^|\n)Suites:[^\n]*[[:space:]]bookworm([[:space:]]|\n|$)/ && /(^|\n)Types:[^\n]*deb([[:space:]]|\n|$)/ {
           for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, a, /[[:space:]]+/); print a[2]; exit }
         }' "$f"
  done | head -1
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" && $0 ~ /[[:space:]]bookworm[[:space:]]/ {
           for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; exit } }' "$f"
  done | head -1
}

make_base() {
  local mirror work rootfs
  mirror="$(host_mirror | head -1)"
  [ -n "$mirror" ] || die "no bookworm entry in /etc/apt/sources.list{,.d}: cannot tell which Debian mirror to use"
  work="$(mktemp -d /var/tmp/kiln-base.XXXXXX)"
  trap 'rm -rf "$work"' EXIT
  rootfs="$work/rootfs"
  say "debootstrap --variant=minbase bookworm from this host's mirror (about a minute)"
  debootstrap --variant=minbase --components=main bookworm "$rootfs" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

  # apt inside the image reaches Debian as the host does: the host's sources, and the host's
  # Acquire:: settings (e.g. a snapshot mirror whose Release files are past Valid-Until).
  rm -f "$rootfs/etc/apt/sources.list"
  local copied=0 f
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    # Only Debian's own archive: other repositories' keys are not in the image.
    if grep -qE '^(URIs:|deb )' "$f" && grep -qE 'debian-archive-keyring|/debian(-security)?/? |/debian(-security)?$|/debian(-security)? ' "$f"; then
      cp "$f" "$rootfs/etc/apt/sources.list.d/$(basename "$f" | sed 's/^sources\.list$/host.list/')"
      copied=1
    fi
  done
  [ "$copied" -eq 1 ] || echo "deb $mirror bookworm main" > "$rootfs/etc/apt/sources.list"
  grep -h '^Acquire::' /etc/apt/apt.conf.d/* 2>/dev/null > "$rootfs/etc/apt/apt.conf.d/90host-acquire" || true
  # HTTPS reaches the registries (npm: ONNX Runtime in the build stage) as it does from the host:
  # the CA certificates this host added locally (e.g. an egress proxy's) are trusted in the
  # image too, once ca-certificates is installed there (its update-ca-certificates reads them).
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi

  # Slim, as Debian's official -slim images are (debuerreotype's slimify list): no manuals,
  # documentation other than copyright files, or translations; apt keeps no package cache.
  cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF
  cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' > "$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$rootfs"/usr/share/{man,info,groff,lintian,linda}/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
    -exec rm -rf {} + 2>/dev/null || true
  # podman writes the container's own /etc/hosts, /etc/resolv.conf and /etc/hostname.
  : > "$rootfs/etc/resolv.conf"
  : > "$rootfs/etc/hostname"

  say "podman import -> $BASE_IMAGE"
  tar --numeric-owner -C "$rootfs" -cf - . | podman import --quiet \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL org.opencontainers.image.description=debootstrap --variant=minbase bookworm, made by deploy/local-images.sh" \
    --message "deploy/local-images.sh: debootstrap --variant=minbase bookworm" \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$work"
  trap - EXIT
}

if [ "$REBUILD_BASE" -eq 1 ] || ! podman image exists "$BASE_IMAGE"; then
  make_base
else
  say "$BASE_IMAGE exists (--rebuild-base makes it again)"
fi
say "base image: $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | numfmt --to=iec) ($BASE_IMAGE)"
[ "$BASE_ONLY" -eq 1 ] && exit 0

# name|Debian packages|the program (the image's entrypoint)|the user it runs as
SERVICES=(
  "prometheus|prometheus|/usr/bin/prometheus|prometheus"
  "alertmanager|prometheus-alertmanager|/usr/bin/prometheus-alertmanager|prometheus"
  "node-exporter|prometheus-node-exporter|/usr/bin/prometheus-node-exporter|prometheus"
  "nginx-exporter|prometheus-nginx-exporter|/usr/bin/prometheus-nginx-exporter|prometheus"
  "nginx|nginx|/usr/sbin/nginx|www-data"
)
for entry in "${SERVICES[@]}"; do
  IFS='|' read -r name packages program user <<< "$entry"
  say "building localhost/kiln-local/$name:bookworm (Debian: $packages)"
  podman build --pull=never --format docker --quiet \
    --build-arg "PACKAGES=$packages" --build-arg "PROGRAM=$program" --build-arg "RUN_AS=$user" \
    -t "localhost/kiln-local/$name:bookworm" -f "$ROOT/deploy/local/Dockerfile" "$ROOT/deploy/local" >/dev/null
done

if [ "$BUILD_KILN" -eq 1 ]; then
  say "building kiln:latest from deploy/Dockerfile (compiles kiln: minutes)"
  start=$(date +%s)
  podman build --pull=never --format docker -t localhost/kiln:latest -f "$ROOT/deploy/Dockerfile" "$ROOT"
  end=$(date +%s)
  size="$(podman image inspect --format '{{.Size}}' localhost/kiln:latest)"
  say "kiln:latest built in $((end - start)) s; image size $(numfmt --to=iec "$size") ($size bytes)"
fi
say "done"
