#!/usr/bin/env bash
# A short GPU training run of the 6L/6H/384 preset (reference "medium": block 512, W 256,
# bf16, Tensor Cache delta rule) on the CPython standard library at byte level.
#
#   bash benchmarks/gpu_train_medium.sh [STEPS] [SECONDS]
#
# Writes the trainer's metrics.jsonl / metrics.csv and the device name to $OUT (default
# /tmp/gpu_train_medium). On the device machine, wheels for packages it lacks are carried in
# .whl/ (grain, array-record, portpicker, ml-collections, tensorboardX) and installed first.
set -euo pipefail
STEPS=${1:-300}
SECONDS_LIMIT=${2:-420}
OUT=${OUT:-/tmp/gpu_train_medium}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name --format=csv,noheader; python3 -c "import jax; print('jax', jax.__version__, jax.devices())"; date -u; } | tee "$OUT/device.txt"
rm -rf /tmp/gpu_run
set +e
timeout "$SECONDS_LIMIT" python3 -m tensorcache.main --config=configs/base.py:medium,tc --workdir=/tmp/gpu_run \
  --config.data.source=stdlib --config.train.steps="$STEPS" --config.train.log_every=10 \
  --config.train.checkpoint_every="$STEPS" --config.train.progress=False > "$OUT/train.log" 2>&1
status=$?
set -e
cp /tmp/gpu_run/metrics.jsonl /tmp/gpu_run/metrics.csv /tmp/gpu_run/config.json "$OUT"/ 2>/dev/null || true
tail -n 3 "$OUT/metrics.jsonl" 2>/dev/null | cut -c1-400 || true
echo "exit $status"
