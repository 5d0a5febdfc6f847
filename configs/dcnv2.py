"""DCNv2 (Wang et al. 2021): a cross network (mixture of low-rank experts) beside a deep network,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Recipe (BENCHMARKS.md, "DeepFM and DCNv2 recipes on the zoo data"): two epochs with the dense and
table learning rates decayed to 0 by a cosine: eval AUC 0.863479 (0.9814 of the Bayes AUC,
calibration 1.0095) against one epoch at constant rates 0.860651 (0.9782, calibration 1.054).

On a small real table (Caravan: 4,366 rows, 20% of them for validation; BENCHMARKS.md "A real
click-style table"): batch 64, validation AUC every 25 steps, patience 10, embedding.learning_rate
chosen on validation from 0.1 / 0.02 / 0.005: test AUC 0.7862 +- 0.0104 over 3 seeds, LightGBM 0.7801.

Run:   rankjax train --config configs/dcnv2.py --workdir /tmp/rankjax_dcnv2
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("dcnv2")
  c.data.synthetic.num_interacting_triples = 2
  c.train.steps = 2800  # Two epochs of the 3 M synthetic records at batch 2048.
  c.train.lr_schedule = "cosine"
  c.embedding.lr_schedule = "cosine"
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
