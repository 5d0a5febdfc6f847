"""The default experiment: DLRM on the embedded synthetic Criteo-like data, CPU-sized.

Run:   rankjax train --config configs/default.py --workdir /tmp/rankjax_default
Result (2-core CPU, 2026-11-27): see BENCHMARKS.md.
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("dlrm")
  c.eval.write_scores = True  # WORKDIR/eval_scores.parquet: what `rankjax predict` is checked against.
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
