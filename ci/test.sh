#!/usr/bin/env bash
# The full test suite (the README's second command): lint, types, the Python matrix, real-engine tests.
set -euo pipefail
cd "$(dirname "$0")/.."
exec nox -s lint typecheck tests integration security "$@"
