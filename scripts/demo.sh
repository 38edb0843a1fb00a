#!/usr/bin/env bash
# The main job: a bundled spoken question -> transcript -> grounded answer -> spoken answer WAV.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh device,models
.venv/bin/campus-guide ask --out answer.wav "$@"
echo "spoken answer written to answer.wav"
