#!/usr/bin/env bash
# What tests/integration/test_gitlab_ci_local.py needs to run .gitlab-ci.yml on this machine (as root):
# rsync (gitlab-ci-local copies the checkout with it), gitlab-ci-local 4.53.0 from npm (the last
# release that runs on Node 20), and local stand-ins for the images no registry here can serve:
#   firecow/gitlab-ci-local-util   gitlab-ci-local's own helper image (base + rsync), by the name it uses
#   conveyor-local/ci-job:1        the jobs' image (Python, pip, git, Docker CLI + buildx, the deps)
# Both are built on the local base image (`invoke image.base`). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

GCL_VERSION=4.53.0
# The base image `invoke image.base --save` made and wrote to .env (the environment wins, as in conveyor).
saved=$(sed -n 's/^CONVEYOR_IMAGE__BASE_IMAGE=//p' .env 2>/dev/null | tail -1)
BASE_IMAGE=${CONVEYOR_IMAGE__BASE_IMAGE:-${saved:-conveyor-local/python:3.11-bookworm}}
UTIL_IMAGE=firecow/gitlab-ci-local-util:latest
JOB_IMAGE=${GITLAB_CI_LOCAL_JOB_IMAGE:-conveyor-local/ci-job:1}
CA=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}

log() { printf '[gitlab-ci-local %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[gitlab-ci-local] FAILED: %s\n' "$*" >&2; exit 1; }

if ! command -v rsync >/dev/null 2>&1; then
  log "apt-get install rsync"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rsync >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rsync >/dev/null; }
fi
if [ "$(gitlab-ci-local --version 2>/dev/null || true)" != "$GCL_VERSION" ]; then
  command -v npm >/dev/null 2>&1 || die "npm missing (Node 20 and npm: apt-get install nodejs npm)"
  log "npm install -g gitlab-ci-local@$GCL_VERSION"
  npm install -g --no-fund --no-audit --loglevel=error "gitlab-ci-local@$GCL_VERSION" >/dev/null
fi

docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "base image $BASE_IMAGE missing (invoke image.base --save)"
secret=()
[ -f "$CA" ] && secret=(--secret "id=ca,src=$CA")

if ! docker image inspect "$UTIL_IMAGE" >/dev/null 2>&1; then
  log "building $UTIL_IMAGE (stand-in) on $BASE_IMAGE"
  docker buildx build --load -q --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$UTIL_IMAGE" ci/images/util >/dev/null
fi
if ! docker image inspect "$JOB_IMAGE" >/dev/null 2>&1; then
  log "building $JOB_IMAGE (stand-in) on $BASE_IMAGE"
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  cp ci/images/job/Dockerfile pyproject.toml README.md "$ctx/"
  cp -r src "$ctx/src"
  docker buildx build --load -q "${secret[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$JOB_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
  trap - EXIT
fi
log "gitlab-ci-local $(gitlab-ci-local --version), rsync, $UTIL_IMAGE, $JOB_IMAGE ok"
