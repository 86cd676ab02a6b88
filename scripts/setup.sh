#!/usr/bin/env bash
# Creates .venv (if missing) and installs tpu_cal with its test and real-model extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: on this machine kind pip takes the CPU build from local disk
python -m pip install -q "torch==2.13.0" || echo "warning: torch==2.13.0 not installable here; real-model export tests will skip"
python -m pip install -q -e ".[test,models]" || python -m pip install -q -e ".[test]"
