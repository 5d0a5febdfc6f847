#!/usr/bin/env bash
# One device call on a GPU host, parts in order of what they are worth, each under a time limit
# taken from what is left of GPU_CHECK_BUDGET_S (default 450 s), so the call ends inside its lease:
#   1. the GPU-only tests (bitwise-repeatable sparse update, equal to the CPU's);
#   2. `bench train` of every model-zoo config at ZOO_BATCH (default 8192): samples/s per model;
#   3. `plan --predict-time`'s step time for this GPU kind (GPU_KIND, default h200) against the
#      measured `bench train` step (scripts/plan_vs_measured.py) on the configs with CPU figures;
#   4. the default experiment end to end (data -> train -> checkpoint -> eval -> summary);
#   5. scripts/gpu_bench.sh: profile + bench of the MLPerf-shaped DLRM-DCNv2 (roofline fraction).
# Carry `wheels` (see gpu_bench.sh). Results flat in $OUT: zoo.log and predicted.log (JSON lines), logs.
# GPU_CHECK_DRY_RUN=1 runs the same parts on this CPU at tiny sizes (a rehearsal before the call).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT}
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-500}))
KIND=${GPU_KIND:-h200}
# predict and bench compile the same step: the second compilation is a cache hit.
export JAX_COMPILATION_CACHE_DIR=/tmp/rankjax_jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
  export JAX_PLATFORMS=cpu
  KIND=cpu ZOO_BATCH=${ZOO_BATCH:-64} STEPS=2 WARMUP=1 PREDICT_SET=(--set train.batch_size=64)
else
  ZOO_BATCH=${ZOO_BATCH:-8192} STEPS=${STEPS:-10} WARMUP=${WARMUP:-3} PREDICT_SET=()
fi

left() {  # Seconds left for a part, keeping $1 seconds for the parts after it.
  local s=$((DEADLINE - SECONDS - $1))
  [ "$s" -gt 10 ] && echo "$s" || echo 0
}
part() {  # part NAME RESERVE_S COMMAND...: runs COMMAND under the time left, logging to $OUT/NAME.log.
  local name=$1 reserve=$2; shift 2
  local limit; limit=$(left "$reserve")
  if [ "$limit" = 0 ]; then echo "== $name: skipped (no time left)"; return; fi
  echo "== $name (limit ${limit}s, at ${SECONDS}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $? after ${SECONDS}s"
}

if [ "${GPU_CHECK_DRY_RUN:-0}" != 1 ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --find-links wheels/ grain array-record portpicker ml-collections \
      tensorboardX
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
      || "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation .
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv > "$OUT/nvidia_smi.txt"
  "$PYTHON" -c "import jax, flax, optax, orbax.checkpoint as o; print(jax.__version__, flax.__version__, optax.__version__, o.__version__, jax.devices())" \
      >> "$OUT/nvidia_smi.txt" 2>&1
  cat "$OUT/nvidia_smi.txt"
  part gpu_tests 430 env JAX_PLATFORMS=cuda,cpu "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
fi
ZOO=${ZOO_CONFIGS:-"logreg deepfm dcnv2 xdeepfm autoint finalmlp masknet wide_deep mmoe ple esmm din bst default dlrm_small_cpu"}
part zoo 270 "$PYTHON" scripts/plan_vs_measured.py --no-predict --steps "$STEPS" --warmup "$WARMUP" \
    --configs "$(for n in $ZOO; do printf 'configs/%s.py,' "$n"; done | sed 's/,$//')" \
    --set train.batch_size="$ZOO_BATCH" --set data.synthetic.num_train=$((4 * ZOO_BATCH)) \
    --set data.synthetic.num_eval="$ZOO_BATCH"
part predicted 150 "$PYTHON" scripts/plan_vs_measured.py --device-kind "$KIND" --steps "$STEPS" --warmup "$WARMUP" \
    --configs configs/default.py,configs/dlrm_small_cpu.py,configs/deepfm.py,configs/dcnv2.py "${PREDICT_SET[@]}"
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then TRAIN_SET=(--config.train.steps=20); else TRAIN_SET=(); fi
part default_train 80 "$PYTHON" -m rankjax.cli train --config configs/default.py --workdir /tmp/rj_default \
    --config.train.progress_bar=False "${TRAIN_SET[@]}"
tail -2 "$OUT/default_train.log"
cp /tmp/rj_default/summary.json "$OUT/default_summary.json" 2>/dev/null
part mlperf 0 env OUT="$OUT" PYTHON="$PYTHON" GPU_BENCH_DRY_RUN="${GPU_CHECK_DRY_RUN:-0}" bash scripts/gpu_bench.sh
# At most 8 files come back: the MLPerf profile's table and bench line are in mlperf.log.
rm -f "$OUT/hlo.tgz" "$OUT/trace.tgz" "$OUT/gpu_bench.log" "$OUT/profile.txt" "$OUT/bench.jsonl"
echo "== summary (at ${SECONDS}s)"
"$PYTHON" - "$OUT/zoo.log" "$OUT/predicted.log" <<'PY'
import json, sys
for path in sys.argv[1:]:
  for line in open(path, errors="replace") if __import__("os").path.exists(path) else []:
    if line.startswith("{"):
      r = json.loads(line)
      print(r["config"].removeprefix("configs/"), r.get("batch"), r.get("measured_ms"), r.get("samples_per_s"),
            r.get("predicted_ms", ""), r.get("ratio_predicted_over_measured", ""), r.get("error", "")[:150])
PY
grep -h 'roofline\|samples' "$OUT/mlperf.log" 2>/dev/null | tail -6
