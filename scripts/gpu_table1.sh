#!/usr/bin/env bash
# The paper protocol's eight MNIST configurations of Table 1 on ONE GPU within one 10-minute device
# call: eight concurrent processes (scripts/reproduce_spvae.py --jobs 8 --device cuda) share a
# wall-clock budget (default 480 s: training until 60 % of it, at validation boundaries, then the
# 5000-sample evaluation of the best checkpoint, block by block, until the end); every row records
# how far it got (steps, early stop or not, test images evaluated). A budget this short is far from
# the reference's 12k-27k steps to early stopping for most cells: the rows say "training".
#
# Run ON the device machine, in the repository root, with .carry/ shipped (prepare it here with
# scripts/prepare_gpu_carry.sh); the report comes back in $OUT (the device tool's output folder):
#
#   device run: command "bash scripts/gpu_table1.sh", carry [".carry"], timeout_s 600
#
# Then copy $OUT/spvae_reproduction.{md,json} over benchmarks/results/ (they hold the earlier rows too).
# The run directories stay on the device (/tmp/table1) and are lost with it.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-480}
OUT=${OUT:-/tmp/gpu_table1_out}
PY=${PYTHON:-python3}
SITE=/tmp/site
mkdir -p "$OUT"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .carry/wheels/*.whl \
    || exit 1
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$SITE" . \
    || exit 1
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
"$PY" scripts/reproduce_spvae.py --protocol paper --device cuda --jobs 8 --threads 2 --time-budget "$BUDGET" \
    --data-dir .carry/mnist --run-dir /tmp/table1 --eval-batch 100 --chunk-size 500 "$@" 2>&1 \
    | tee "$OUT/gpu_table1.log"
rc=${PIPESTATUS[0]}
cp benchmarks/results/spvae_reproduction.md benchmarks/results/spvae_reproduction.json "$OUT"/
exit "$rc"
