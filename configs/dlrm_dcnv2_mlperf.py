r"""MLPerf Training DLRM-DCNv2 sizes: 26 tables x dim 128 (Criteo 1TB rows, max 40M), DCN 3 x rank 512.

The data is the synthetic generator with the MLPerf row counts (one id per feature: multi-hot is
not supported yet, see MULTI_HOT_SIZES). The full tables (204M rows, ~104 GB in float32) fit no
single device; the config arg `row_scale=S` scales every table to ceil(rows * S) rows (at least 1).
The default batch is the MLPerf global batch, 65536; on a CPU override it (and the data sizes):

  rankjax train --config configs/dlrm_dcnv2_mlperf.py:row_scale=0.0001 --workdir /tmp/mlperf \
      --config.train.batch_size=2048 --config.train.steps=50

Result (2-core CPU, 2026-11-27, this command): 114-148 s wall end to end (generating the 3M-record
synthetic set, 50 steps, eval on 100k; the range is two runs on a busy machine), eval AUC
0.635-0.647 (Bayes-optimal 0.791). A smoke run, 38-47 s wall, eval AUC 0.57-0.60 after 20 steps:

  rankjax train --config configs/dlrm_dcnv2_mlperf.py:row_scale=0.0001 --workdir /tmp/mlperf_smoke \
      --config.train.batch_size=1024 --config.train.steps=20 --config.train.eval_batch_size=8192 \
      --config.data.synthetic.num_train=50000 --config.data.synthetic.num_eval=10000

The MLPerf Adagrad (lr 0.005, zero initial accumulator) makes its first dense steps about
lr * sign(gradient): at batch 1024 the train loss spikes to 1e3-1e4 within the first 5 steps and
is back near 0.65 by step 12-17; `--config.train.dense_learning_rate=0.0005` keeps it below 2.
"""

from __future__ import annotations

import fractions
import math

import ml_collections

from rankjax.config import ConfigError, base_config

# MLPerf DLRM-DCNv2 rows per table (Criteo 1TB, capped at 40M), in feature order cat_0..cat_25.
MLPERF_VOCAB_SIZES = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10, 2209,
    11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36)

# MLPerf ids per sample per feature (214 in all). Not used yet: rankjax features are one-hot until
# multi-hot (padded ids + mask) lands; then these become the per-feature max hotness.
MULTI_HOT_SIZES = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)

MLPERF_BATCH_SIZE = 65536
MLPERF_LEARNING_RATE = 0.005  # Adagrad, no warm-up or decay (the MLPerf v3+ reference run).


def _parse_arg(arg: str | None) -> dict[str, str]:
  """big_vision-style "key=value,key=value" -> dict; only known keys."""
  known = ("row_scale",)
  values = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep:
      raise ConfigError(key, f"config file arg {item!r} is not key=value")
    if key not in known:
      raise ConfigError(key, f"unknown config file arg (known: {', '.join(known)})")
    values[key] = value.strip()
  return values


def scaled_vocab_sizes(row_scale: float | str) -> tuple[int, ...]:
  """MLPerf rows scaled proportionally: ceil(rows * row_scale), at least 1.

  The product is exact (a decimal fraction, not a float), so 40M at 0.0001 is 4000, not 4001.
  """
  try:
    scale = fractions.Fraction(str(row_scale))
  except ValueError:
    raise ConfigError("row_scale", f"config file arg: must be a number, got {row_scale!r}") from None
  if not 0 < scale <= 1:
    raise ConfigError("row_scale", f"config file arg: must be in (0, 1], got {row_scale}")
  return tuple(max(1, math.ceil(v * scale)) for v in MLPERF_VOCAB_SIZES)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The MLPerf DLRM-DCNv2 experiment; `arg` is "row_scale=S" (default 1: the full tables)."""
  row_scale = _parse_arg(arg).get("row_scale", "1")
  c = base_config("dlrm_dcnv2")
  c.data.synthetic.num_dense = 13
  c.data.synthetic.vocab_sizes = scaled_vocab_sizes(row_scale)
  c.train.batch_size = MLPERF_BATCH_SIZE
  c.train.dense_optimizer = "adagrad"
  c.train.dense_learning_rate = MLPERF_LEARNING_RATE
  c.embedding.optimizer = "row_wise_adagrad"
  c.embedding.learning_rate = MLPERF_LEARNING_RATE
  return c
