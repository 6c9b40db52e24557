#!/usr/bin/env bash
# The GPU check in one command, from the source tree, against the machine's own torch (installs nothing):
#   bash benchmarks/gpu_check.sh [--out FILE] [--only flex,bf16,...]
cd "$(dirname "$0")/.." || exit 2
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec python3 benchmarks/gpu_check.py "$@"
