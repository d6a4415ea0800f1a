#!/usr/bin/env bash
# Build the engine images the docker driver runs, from local parts only (no registry
# pulls): a Debian bookworm base made with debootstrap, then llama.cpp's OpenAI-compatible
# server installed from wheels on this machine. Images are kept by the Docker engine, so a
# second run only checks that they exist.
#
#   scripts/build-engine-images.sh            # uses .venv/bin/pip for the wheelhouse
#
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${GANTRY_BASE_IMAGE:-gantry/bookworm-python:1}
LLAMA_VERSION=$(grep -oP '^llama-cpp-python\[server\]==\K[0-9.]+' requirements.txt)
ENGINE=${LLAMACPP_IMAGE:-gantry/llamacpp:$LLAMA_VERSION}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PIP=${PIP:-.venv/bin/pip}
log() { printf '[images] %s\n' "$*"; }

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  root=$(mktemp -d /tmp/gantry-rootfs.XXXXXX)
  # mktemp makes the folder 0700, and it becomes the image's "/": engines run as a
  # non-root user, who must be able to enter it.
  chmod 0755 "$root"
  log "debootstrap bookworm into $root (about 2 minutes)"
  debootstrap --variant=minbase --include=python3,python3-pip,libgomp1,ca-certificates \
    bookworm "$root" "$MIRROR" >/tmp/gantry-debootstrap.log 2>&1 || {
      tail -20 /tmp/gantry-debootstrap.log; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  log "importing $BASE"
  tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$root"
fi
log "base image $BASE ready"

if ! docker image inspect "$ENGINE" >/dev/null 2>&1; then
  ctx=$(mktemp -d /tmp/gantry-engine.XXXXXX)
  log "collecting wheels for llama-cpp-python[server]==$LLAMA_VERSION (cached by pip)"
  "$PIP" wheel --quiet -w "$ctx/wheels" "llama-cpp-python[server]==$LLAMA_VERSION"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
COPY wheels /tmp/wheels
RUN python3 -m pip install --no-index --find-links /tmp/wheels --break-system-packages \
      --no-compile "llama-cpp-python[server]==$LLAMA_VERSION" && rm -rf /tmp/wheels /root/.cache
# Replicas run as nobody (65534, Debian's own), with a read-only root and HOME on a tmpfs.
USER 65534:65534
ENV PYTHONUNBUFFERED=1 HOME=/tmp \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["python3", "-m", "llama_cpp.server", "--help"]
DOCKERFILE
  log "building $ENGINE"
  docker build --quiet --network host -t "$ENGINE" "$ctx" >/dev/null
  rm -rf "$ctx"
fi
log "engine image $ENGINE ready"
