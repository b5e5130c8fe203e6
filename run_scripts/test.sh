#!/usr/bin/env bash
# Runs the test suite (unit, end-to-end and parity tiers) on CPU, creating the environment first if needed.
# Extra arguments go to pytest, e.g. `bash run_scripts/test.sh -m "not e2e"` or `-k caption`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/run_scripts/setup_env.sh"
cd "$repo"
exec "${UNIVAL_VENV:-$repo/.venv}/bin/python" -m pytest "$@"
