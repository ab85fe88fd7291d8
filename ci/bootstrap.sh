#!/usr/bin/env bash
# Everything a fresh Debian bookworm machine needs before `invoke build test deploy` (run as root):
# engines (src/conveyor/data/setup-debian.sh, which `conveyor setup` also runs), the kit, a local base
# image and service stand-ins (no registry here), the nox virtualenvs, and generated local secrets.
# Idempotent: a second run only checks. Steps that do not depend on each other run side by side: every
# output line of a step starts with its [name], each step says how long it took, and a failed step stops
# the script (once the steps running beside it have ended) naming the step.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A PIDS=()

# step NAME CMD...: run CMD with each output line prefixed by [NAME]; CMD's exit status.
step() {
  local name=$1 start=$SECONDS
  shift
  if "$@" 2>&1 | sed -u "s/^/[$name] /"; then
    echo "[$name] done in $((SECONDS - start))s"
  else
    local code=${PIPESTATUS[0]}
    echo "[$name] FAILED (exit $code) after $((SECONDS - start))s"
    return "$code"
  fi
}

# start NAME CMD...: the step in the background.
start() {
  step "$@" &
  PIDS[$1]=$!
}

# finish NAME...: wait for these steps; if one failed, wait for every other running step, then stop.
finish() {
  local failed=()
  for name in "$@"; do
    wait "${PIDS[$name]}" || failed+=("$name")
    unset "PIDS[$name]"
  done
  if [ ${#failed[@]} -gt 0 ]; then
    for pid in "${PIDS[@]}"; do wait "$pid" || true; done
    echo "[bootstrap] FAILED: ${failed[*]}" >&2
    exit 1
  fi
}

# The reference app's tests start throwaway PostgreSQL and Redis servers: their binaries, not services.
# promtool and amtool (`nox -s rules`) come with Prometheus and Alertmanager, which must not run here.
engines() {
  CONVEYOR_SETUP_PACKAGES="postgresql-15 redis-server prometheus prometheus-alertmanager" \
    bash src/conveyor/data/setup-debian.sh
  for svc in postgresql redis-server prometheus prometheus-alertmanager; do
    service "$svc" stop >/dev/null 2>&1 || true
  done
}

# pip needs no engine: the kit installs beside them (its packaged setup script runs by path meanwhile).
start engines engines
start pip python3 -m pip install -q -e '.[dev]'
finish engines pip

# The nox virtualenvs (uv; the whole matrix: setup-debian enabled pyenv's Pythons) fill while images build.
start venvs nox --install-only -s lint typecheck tests integration security
# Machines that can pull official images may skip the images and keep the defaults. Everything else is
# built on the base image; the stand-ins and env.init both write .env, so they run in turn.
start base invoke image.base --save
finish base
base_image=$(sed -n 's/^CONVEYOR_IMAGE__BASE_IMAGE=//p' .env | tail -1)
start standins sh -c 'invoke image.standins --save && invoke env.init --env local'
start gitlab-ci-local env CONVEYOR_IMAGE__BASE_IMAGE="$base_image" \
  bash ci/setup-gitlab-ci-local.sh  # gitlab-ci-local + its stand-in images (tests/integration)
finish standins gitlab-ci-local venvs
invoke doctor --env local
