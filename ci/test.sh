#!/usr/bin/env bash
# The full test suite (the README's second command): lint, types, the Python matrix, real-engine tests.
set -euo pipefail
cd "$(dirname "$0")/.."
nox -s lint typecheck "$@"
# The Python matrix (`nox -s tests-3.X`) side by side with one summary; each session's output is kept in
# build/test/<python>.log and shown when that session fails (which fails this script).
invoke test
nox -s rules integration "$@"
# pip-audit's vulnerability service cannot be reached from our machines: the summary reports it
# UNVERIFIED (never "clean") and this flag accepts that; every other scanner must pass.
nox -s security -- --allow-unverified
