r"""MLPerf Training DLRM-DCNv2: 26 tables x dim 128 (Criteo 1TB rows, max 40M), multi-hot (214 ids
per sample), DCN 3 layers x rank 512, bottom 13-512-256-128, top 1024-1024-512-256-1, Adagrad.

The data is the synthetic generator at the MLPerf row counts and multi-hot sizes. The full tables
(204M rows, ~104 GB in float32) fit no single device: `--config.data.row_scale=S` scales every
table to ceil(rows * S). The default batch is the MLPerf global batch, 65536; on a CPU:

  rankjax train --config configs/dlrm_dcnv2_mlperf.py --workdir /tmp/mlperf \
      --config.data.row_scale=0.0001 --config.train.batch_size=1024 --config.train.steps=20 \
      --config.train.eval_batch_size=8192 --config.data.synthetic.num_train=50000 \
      --config.data.synthetic.num_eval=10000

  rankjax plan --config configs/dlrm_dcnv2_mlperf.py --devices 8 --device-memory 80000000000

Results are in BENCHMARKS.md. The MLPerf Adagrad (lr 0.005, zero initial accumulator) makes the
first dense steps about lr * sign(gradient): at small batches the train loss spikes (~1e4 at
step 5 at batch 1024) and recovers by step ~17; `--config.train.dense_learning_rate=0.0005`
keeps it below 2.
"""

from __future__ import annotations

import ml_collections

from rankjax.config import base_config, select_on_validation

# MLPerf DLRM-DCNv2 rows per table (Criteo 1TB, capped at 40M), in feature order cat_0..cat_25.
MLPERF_VOCAB_SIZES = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10, 2209,
    11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36)

# MLPerf ids per sample per feature (214 in all): each feature's max hotness.
MULTI_HOT_SIZES = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)

MLPERF_BATCH_SIZE = 65536
MLPERF_LEARNING_RATE = 0.005  # Adagrad, no warm-up or decay (the MLPerf v3+ reference run).


def get_config() -> ml_collections.ConfigDict:
  c = base_config("dlrm_dcnv2")
  c.data.synthetic.num_dense = 13
  c.data.synthetic.vocab_sizes = MLPERF_VOCAB_SIZES
  c.data.synthetic.hotness = MULTI_HOT_SIZES
  c.data.synthetic.num_train = 500_000
  c.data.synthetic.num_eval = 100_000
  c.train.batch_size = MLPERF_BATCH_SIZE
  c.train.eval_batch_size = MLPERF_BATCH_SIZE
  c.train.dense_optimizer = "adagrad"
  c.train.dense_learning_rate = MLPERF_LEARNING_RATE
  c.embedding.optimizer = "row_wise_adagrad"
  c.embedding.learning_rate = MLPERF_LEARNING_RATE
  c.embedding.sharding = "auto"
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
