#!/usr/bin/env bash
# rankjax against facebookresearch/dlrm's PyTorch reference on the same small DLRM (26 tables x
# 100000 rows x dim 16, bottom 13-512-256-16, dot interaction, top 367-512-256-1, batch 2048, SGD),
# back to back in one run on this CPU with the same threads; prints both ms/step and the ratio.
#
#   scripts/compare_pytorch_cpu.sh PATH/TO/dlrm_s_pytorch.py [NUM_BATCHES]
#
# Needs torch (CPU) and a checkout of facebookresearch/dlrm (dlrm_s_pytorch.py with its
# dlrm_data_pytorch.py, extend_distributed.py and tricks/ beside it; keep it outside this
# repository). Both sides time the step alone: the reference's --print-time ms/it starts after
# its data loader has produced the batch, and `rankjax bench train` cycles batches already on the
# device. The first WARMUP (default 5) iterations of each are left out; the figure is the median.
# The reference draws one uniform id per table and sample (--num-indices-per-lookup=1, fixed),
# like configs/dlrm_small_cpu.py's one-hot synthetic data; REF_EXTRA_ARGS adds reference flags.
# THREADS (default 2) sets OMP/MKL threads and, with taskset, the cores both runs may use.
set -euo pipefail
REF=$(realpath "${1:?usage: scripts/compare_pytorch_cpu.sh PATH/TO/dlrm_s_pytorch.py [NUM_BATCHES]}")
NUM_BATCHES=${2:-30}
WARMUP=${WARMUP:-5}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
if (( NUM_BATCHES <= WARMUP )); then
  echo "NUM_BATCHES ($NUM_BATCHES) must exceed WARMUP ($WARMUP)" >&2
  exit 2
fi

export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
PIN=()
command -v taskset >/dev/null && PIN=(taskset -c "0-$((THREADS - 1))")
TABLES=$(printf '100000-%.0s' $(seq 26))
REF_LOG=$(mktemp)
trap 'rm -f "$REF_LOG"' EXIT

echo "== PyTorch reference: $REF ($THREADS threads, $NUM_BATCHES batches)"
# shellcheck disable=SC2086  # REF_EXTRA_ARGS is a list of flags.
(cd "$(dirname "$REF")" && "${PIN[@]}" "$PYTHON" "$(basename "$REF")" \
    --arch-sparse-feature-size=16 --arch-mlp-bot=13-512-256-16 --arch-mlp-top=512-256-1 \
    --arch-embedding-size="${TABLES%-}" --arch-interaction-op=dot --data-generation=random \
    --num-indices-per-lookup=1 --num-indices-per-lookup-fixed=1 --mini-batch-size=2048 \
    --num-batches="$NUM_BATCHES" --learning-rate=0.01 --print-freq=1 --print-time ${REF_EXTRA_ARGS:-}) \
    | tee "$REF_LOG"

echo "== rankjax: configs/dlrm_small_cpu.py"
JAX_LINE=$("${PIN[@]}" "$PYTHON" -m rankjax.cli bench train --config configs/dlrm_small_cpu.py \
    --steps "$((NUM_BATCHES - WARMUP))" --warmup "$WARMUP")
echo "$JAX_LINE"

"$PYTHON" - "$REF_LOG" "$WARMUP" "$THREADS" "$JAX_LINE" <<'EOF'
import datetime, json, platform, re, statistics, sys
log, warmup, threads, jax_line = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
per_iteration = [float(ms) for ms in re.findall(r"([\d.]+) ms/it", open(log).read())][warmup:]
if not per_iteration:
  sys.exit("no 'ms/it' lines after the warm-up in the reference's output (was --print-time honoured?)")
torch_ms, jax_ms = statistics.median(per_iteration), jax_line["step_ms_median"]
print(f"pytorch reference: {torch_ms:8.2f} ms/step  {2048e3 / torch_ms:10,.0f} samples/s "
      f"(median of {len(per_iteration)} iterations)")
print(f"rankjax:           {jax_ms:8.2f} ms/step  {2048e3 / jax_ms:10,.0f} samples/s "
      f"(median of {jax_line['steps']} steps)")
print(f"rankjax / pytorch samples/s: {torch_ms / jax_ms:.2f}x")
print(json.dumps({"pytorch_ms_per_step": torch_ms, "rankjax_ms_per_step": jax_ms, "ratio": torch_ms / jax_ms,
                  "threads": threads, "pytorch_iterations": len(per_iteration), "rankjax_steps": jax_line["steps"],
                  "machine": platform.processor() or platform.machine(),
                  "date": datetime.date.today().isoformat()}))
EOF
