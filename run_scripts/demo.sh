#!/usr/bin/env bash
# The demo: writes the demo corpus, trains unival_tiny on demo captioning on CPU, evaluates it before and after
# training, and prints a table. Creates the environment first if needed. Output goes to $UNIVAL_DEMO_DIR
# (default: <repo>/demo_runs). Extra arguments go to `unival demo` (see `unival demo --help`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/run_scripts/setup_env.sh"
exec "${UNIVAL_VENV:-$repo/.venv}/bin/unival" demo --out "${UNIVAL_DEMO_DIR:-$repo/demo_runs}" "$@"
