#!/usr/bin/env bash
# The full test suite (the README's second command): lint, types, the Python matrix, real-engine tests.
set -euo pipefail
cd "$(dirname "$0")/.."
nox -s lint typecheck tests rules integration "$@"
# pip-audit's vulnerability service cannot be reached from our machines: the summary reports it
# UNVERIFIED (never "clean") and this flag accepts that; every other scanner must pass.
nox -s security -- --allow-unverified
