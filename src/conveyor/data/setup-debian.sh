#!/usr/bin/env bash
# `conveyor setup`: install and start what conveyor needs on a fresh Debian bookworm machine (as root):
# Docker engine, compose v2, buildx, kubectl, a local registry (docker-registry) and debootstrap for
# local base images. Extra Debian packages a project needs: CONVEYOR_SETUP_PACKAGES="pkg ...".
# Idempotent: every step checks before it acts.
set -euo pipefail

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[setup] FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get and dockerd need it)"
export DEBIAN_FRONTEND=noninteractive

# --- Debian packages -------------------------------------------------------------------------
need_pkgs=()
# shellcheck disable=SC2086  # a space-separated list by design
for p in docker.io docker-registry debootstrap git ${CONVEYOR_SETUP_PACKAGES:-}; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# The distro's registry service must not hold port 5000: conveyor's tests start their own registries.
service docker-registry stop >/dev/null 2>&1 || true

# --- compose v2 + buildx from trixie (pinned low so nothing else is upgraded) -----------------
trixie_pkgs=()
docker compose version >/dev/null 2>&1 || trixie_pkgs+=(docker-compose)
docker buildx version >/dev/null 2>&1 || trixie_pkgs+=(docker-buildx)
command -v kubectl >/dev/null 2>&1 || trixie_pkgs+=(kubectl)
if [ "${#trixie_pkgs[@]}" -gt 0 ]; then
  log "installing ${trixie_pkgs[*]} from trixie"
  src=/etc/apt/sources.list.d/conveyor-trixie.sources
  pref=/etc/apt/preferences.d/conveyor-trixie
  awk 'BEGIN{RS="";ORS="\n\n"} /debian-security/ {next} {print; exit}' /etc/apt/sources.list.d/debian.sources \
    | sed -E 's/^Suites:.*/Suites: trixie/' > "$src"
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > "$pref"
  trap 'rm -f "$src" "$pref"' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -t trixie "${trixie_pkgs[@]}" >/dev/null
  rm -f "$src" "$pref"
  trap - EXIT
  apt-get update -qq
fi

# --- dockerd ---------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/conveyor-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 /var/log/conveyor-dockerd.log >&2; die "dockerd did not start"; }
fi
docker compose version >/dev/null || die "docker compose v2 missing"
docker buildx version >/dev/null || die "docker buildx missing"
command -v kubectl >/dev/null || die "kubectl missing"
log "docker $(docker version -f '{{.Server.Version}}'), compose $(docker compose version --short), buildx, kubectl ok"

# --- Pythons for the nox matrix --------------------------------------------------------------
if command -v pyenv >/dev/null 2>&1; then
  # Every CPython 3 pyenv has, so nox finds the whole matrix; the current default stays first (`python3`).
  first=$(pyenv global | head -1)
  mapfile -t versions < <(pyenv versions --bare | grep -E '^3\.[0-9]+\.[0-9]+$' | grep -vxF "$first")
  pyenv global "$first" "${versions[@]}"
fi
found=()
for v in 3.10 3.11 3.12 3.13 3.14; do
  command -v "python$v" >/dev/null 2>&1 && found+=("$v")
done
log "pythons on PATH for the nox matrix: ${found[*]:-none}"
