#!/usr/bin/env bash
# One `firepe train` run at the `firepe compare` settings (150 of its 800 steps) in a fresh temporary
# run folder, removed afterwards; prints the command's last line (loss and tokens/s).
# Usage: bash benchmarks/train_compare_settings.sh ENCODING [extra firepe train flags...]
# Interleaved A/B pairs (as in benchmarks/README.md): time this script for encoding A and B in turn,
# e.g. with /usr/bin/time -v or any harness that alternates the two commands.
set -euo pipefail
enc="$1"; shift
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
firepe train --preset cpu --position "$enc" --seq-len 256 --batch-size 8 --steps 150 --lr 2e-3 \
  --warmup-steps 50 --max-train-tokens 4000000 --val-tokens 32768 --checkpoint-every 150 \
  --no-progress --out "$dir/run" "$@" 2>&1 | tail -n 1
