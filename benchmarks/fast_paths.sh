#!/usr/bin/env bash
# The fast-path benchmark on the GPU machine (one H200): correctness, speed and peak memory of
# L1, the memory path, Tensor Cache attention, the GPT-124M training step, prefill and decode.
#
#   bash benchmarks/fast_paths.sh [extra flags for fast_paths.py, e.g. --only=l1,memory]
#
# Writes $OUT/fast_paths.json (OUT defaults to /tmp/fast_paths) and prints a table last.
# Expected run time: about 5-8 minutes wall, compiles included (--budget_s bounds it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fast_paths}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
python3 benchmarks/fast_paths.py --out "$OUT/fast_paths.json" "$@"
