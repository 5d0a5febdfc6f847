#!/usr/bin/env bash
# One device call on a GPU host: the default experiment end to end (data -> task -> checkpoint ->
# eval -> summary), the GPU-only tests, then scripts/gpu_bench.sh (profile + bench of the
# MLPerf-shaped DLRM-DCNv2). Carry `wheels` (see gpu_bench.sh). Logs and reports flat in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --find-links wheels/ grain array-record portpicker ml-collections tensorboardX
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv > "$OUT/nvidia_smi.txt"
echo "== default experiment"
( time timeout 200 python3 -m rankjax.cli train --config configs/default.py --workdir /tmp/rj_default \
    --config.train.progress_bar=False ) 2>&1 | tee "$OUT/default_train.log" | tail -4
echo "== GPU tests"
JAX_PLATFORMS=cuda,cpu timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -3
echo "== gpu_bench"
bash scripts/gpu_bench.sh > /dev/null 2>&1; tail -25 "$OUT/gpu_bench.log"
rm -f "$OUT/hlo.tgz" "$OUT/trace.tgz"  # At most 8 files come back; the figures are in the report.
