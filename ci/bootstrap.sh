#!/usr/bin/env bash
# Everything a fresh Debian bookworm machine needs before `invoke build test deploy` (run as root):
# engines (src/conveyor/data/setup-debian.sh, which `conveyor setup` also runs), the kit, a local base
# image and service stand-ins (no registry here), and generated local secrets.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# The kit is installed after the engines, so its packaged setup script runs by path here.
# The reference app's tests start throwaway PostgreSQL and Redis servers: their binaries, not services.
# promtool and amtool (`nox -s rules`) come with Prometheus and Alertmanager, which must not run here.
CONVEYOR_SETUP_PACKAGES="postgresql-15 redis-server prometheus prometheus-alertmanager" \
  bash src/conveyor/data/setup-debian.sh
for svc in postgresql redis-server prometheus prometheus-alertmanager; do service "$svc" stop >/dev/null 2>&1 || true; done
echo "[bootstrap] pip install -e '.[dev]'"
python3 -m pip install -q -e '.[dev]'
# Machines that can pull official images may skip these two and keep the defaults.
invoke image.base --save
invoke image.standins --save
invoke env.init --env local
invoke doctor --env local
