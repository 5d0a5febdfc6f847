#!/usr/bin/env bash
# Profile + steady-state bench of the MLPerf-shaped DLRM-DCNv2 on one GPU, in one device call
# (under 8 minutes), writing the report files flat into $OUT. With GPU_BENCH_PART=zoo, instead:
# `bench train` of every model-zoo config (ZOO_CONFIGS, default all) at ZOO_BATCH (default 8192)
# into $OUT/zoo_bench.jsonl, one JSON line per config (a second device call).
#
# The GPU image has jax 0.11 (CUDA), flax, optax, orbax, tensorstore, absl, etils, but no network
# and no grain, array-record, portpicker, ml_collections or tensorboardX: carry them as wheels.
# Fetch them once on a machine with network, from the repository root:
#
#   echo /wheels/ >> .git/info/exclude
#   pip download grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 ml_collections==1.1.0 \
#       tensorboardX==2.6.5 --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 -d wheels/
#
# then run `scripts/gpu_bench.sh` on the GPU machine with `wheels` carried along. Outputs in $OUT:
# profile.txt (the printed table), profile_report.json, bench.jsonl, hlo.tgz, trace.tgz (open
# with `xprof --logdir` on the unpacked profile/ folder), nvidia_smi.txt and the log.
#
# Sizes (environment): ROW_SCALE (default 0.05: 10.2 M rows, 5.2 GB of float32 tables), BATCH
# (default 65536, the MLPerf global batch; ~35 GB of temporaries), STEPS, WARMUP.
# GPU_BENCH_DRY_RUN=1 runs the same commands on the CPU at tiny sizes (tests/test_bench_train.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder that receives the report files}
WORK=${GPU_BENCH_WORKDIR:-/tmp/rankjax_gpu_bench}
CONFIG=configs/dlrm_dcnv2_mlperf.py
if [ "${GPU_BENCH_DRY_RUN:-0}" = 1 ]; then
  export JAX_PLATFORMS=cpu
  ROW_SCALE=${ROW_SCALE:-0.00001} BATCH=${BATCH:-256} NUM_TRAIN=2048 NUM_EVAL=512 STEPS=${STEPS:-2} WARMUP=${WARMUP:-1}
  LIMIT_S=120
else
  ROW_SCALE=${ROW_SCALE:-0.05} BATCH=${BATCH:-65536} STEPS=${STEPS:-20} WARMUP=${WARMUP:-5}
  NUM_TRAIN=$((4 * BATCH)) NUM_EVAL=$BATCH
  LIMIT_S=300
fi
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
# The bench reuses the profile's compilation (the profile's compile time is a cold one).
export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache"

run() {
  # ---- Install what the image lacks: carried wheels, then rankjax itself (no network, no build isolation).
  if ! "$PYTHON" -c "import grain, array_record, ml_collections, tensorboardX" 2>/dev/null; then
    # --no-deps: their other needs (absl, etils, cloudpickle, protobuf, psutil, PyYAML) are in the image.
    "$PYTHON" -m pip install -q --no-index --no-deps --find-links wheels/ grain array-record portpicker ml-collections \
        tensorboardX
  fi
  # Checked from / : in the checkout, ./rankjax would shadow an installed rankjax (and has no models/).
  if ! (cd / && "$PYTHON" -c "import rankjax.models") 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e .
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia_smi.txt" || true

  if [ "${GPU_BENCH_PART:-dcnv2}" = zoo ]; then
    zoo
    return
  fi
  SIZES=(--config.data.row_scale="$ROW_SCALE" --config.train.batch_size="$BATCH"
         --config.train.eval_batch_size="$BATCH" --config.data.synthetic.num_train="$NUM_TRAIN"
         --config.data.synthetic.num_eval="$NUM_EVAL")
  echo "gpu_bench: $CONFIG row_scale=$ROW_SCALE batch=$BATCH steps=$STEPS warmup=$WARMUP"

  # ---- Profile: compile time, trace, HLO, report.
  timeout "$LIMIT_S" "$PYTHON" -m rankjax.cli profile --config "$CONFIG" --workdir "$WORK" \
      --steps "$STEPS" --warmup "$WARMUP" "${SIZES[@]}" | tee "$OUT/profile.txt"
  cp "$WORK/profile_report.json" "$OUT/"
  tar czf "$OUT/hlo.tgz" -C "$WORK" hlo
  tar czf "$OUT/trace.tgz" -C "$WORK" profile

  # ---- Bench: steady-state samples/s as a JSON line.
  timeout "$LIMIT_S" "$PYTHON" -m rankjax.cli bench train --config "$CONFIG" --workdir "$WORK" \
      --steps "$STEPS" --warmup "$WARMUP" "${SIZES[@]}" | tee "$OUT/bench.jsonl"
  echo "gpu_bench: done; files in $OUT"
}

zoo() {
  # ---- The model zoo: steady-state samples/s per config at one batch size.
  ZOO_CONFIGS=${ZOO_CONFIGS:-"logreg deepfm dcnv2 xdeepfm autoint finalmlp masknet wide_deep mmoe ple esmm din bst"}
  if [ "${GPU_BENCH_DRY_RUN:-0}" = 1 ]; then ZOO_BATCH=${ZOO_BATCH:-64}; else ZOO_BATCH=${ZOO_BATCH:-8192}; fi
  : > "$OUT/zoo_bench.jsonl"
  for name in $ZOO_CONFIGS; do
    echo "gpu_bench: zoo $name batch=$ZOO_BATCH steps=$STEPS warmup=$WARMUP"
    timeout "$LIMIT_S" "$PYTHON" -m rankjax.cli bench train --config "configs/$name.py" --workdir "$WORK/zoo_$name" \
        --steps "$STEPS" --warmup "$WARMUP" --config.train.batch_size="$ZOO_BATCH" \
        --config.data.synthetic.num_train=$((4 * ZOO_BATCH)) --config.data.synthetic.num_eval="$ZOO_BATCH" \
        | tee -a "$OUT/zoo_bench.jsonl"
  done
  echo "gpu_bench: zoo done; files in $OUT"
}

run 2>&1 | tee "$OUT/gpu_bench.log"
