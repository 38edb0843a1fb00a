#!/usr/bin/env bash
# The test suite, on the real embedded models, after installing everything it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh device,models,training,export,qlora,dev
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -ra "$@"
