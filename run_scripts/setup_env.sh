#!/usr/bin/env bash
# Creates the project's virtual environment in .venv (Python 3.11) if it is missing or setup.py changed,
# and installs unival with its pinned dependencies. Sourced by demo.sh and test.sh; safe to run twice.
# Variables: UNIVAL_VENV (default: <repo>/.venv), UNIVAL_PYTHON (default: python3.11, else python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${UNIVAL_VENV:-$repo/.venv}"
python="${UNIVAL_PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp="$venv/.unival-installed"
wanted="$(cat "$repo/setup.py" | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  return 0 2>/dev/null || exit 0
fi
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$version" != "3.11" ]; then
  echo "unival needs Python 3.11 (found $version at $python); set UNIVAL_PYTHON to a python3.11" >&2
  exit 1
fi
echo "[setup] creating $venv and installing unival with pinned dependencies (about 3 minutes, 6.4 GB)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e "$repo[test]"
echo "$wanted" > "$stamp"
echo "[setup] done: $venv"
