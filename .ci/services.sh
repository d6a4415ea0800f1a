#!/usr/bin/env bash
# Make sure the real services the suite needs are running on this machine:
# PostgreSQL, Redis, a Docker engine, a Docker registry and Chromium. Installs what is
# missing from Debian's packages and starts what is stopped. Idempotent.
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
apt_updated=""
need_pkg() {  # need_pkg <command-or-path> <debian packages…>
  local probe=$1; shift
  if [ -e "$probe" ] || have "$probe"; then return 0; fi
  if [ -z "$apt_updated" ]; then
    log "apt-get update"; apt-get update -qq; apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
wait_for() {  # wait_for <seconds> <description> <command…>
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 "$((secs * 2))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "ERROR: $what did not come up"; return 1
}

# --- PostgreSQL ------------------------------------------------------------------------
need_pkg psql postgresql postgresql-client
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  wait_for 60 PostgreSQL pg_isready -h 127.0.0.1 -p 5432 -q
fi

# --- Redis -----------------------------------------------------------------------------
need_pkg redis-server redis-server
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for 30 Redis redis-cli -h 127.0.0.1 -p 6379 ping
fi

# --- Docker engine ---------------------------------------------------------------------
need_pkg dockerd docker.io
DOCKER_SOCK=${DOCKER_SOCK:-/var/run/docker.sock}
if ! docker -H "unix://$DOCKER_SOCK" version >/dev/null 2>&1; then
  log "starting dockerd (vfs storage, host networking only)"
  mkdir -p /var/log
  nohup dockerd --storage-driver=vfs --iptables=false --bridge=none \
    --host "unix://$DOCKER_SOCK" >/var/log/gantry-dockerd.log 2>&1 &
  wait_for 60 "the Docker engine" docker -H "unix://$DOCKER_SOCK" version
fi

# --- Docker registry -------------------------------------------------------------------
need_pkg /usr/bin/docker-registry docker-registry
if ! curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then
  log "starting the registry on 127.0.0.1:5000"
  mkdir -p /var/lib/gantry-registry
  cat >/tmp/gantry-registry.yml <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/gantry-registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
YAML
  nohup /usr/bin/docker-registry serve /tmp/gantry-registry.yml \
    >/var/log/gantry-registry.log 2>&1 &
  wait_for 30 "the registry" curl -fsS http://127.0.0.1:5000/v2/
fi

# --- Chromium (browser tests) ----------------------------------------------------------
need_pkg /usr/bin/chromium chromium

log "all services up"
