#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite: the lit suite, then pytest (real models included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
lit -sv test/lit
python -m pytest -ra -q "$@" || { rc=$?; [ $rc -eq 5 ] && { echo "pytest collected no tests"; exit 1; }; exit $rc; }
