"""FinalMLP (Mao et al. 2023): two gated MLP streams joined by bilinear fusion,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Recipe (BENCHMARKS.md, "DeepFM and DCNv2 recipes on the zoo data"): three epochs with the dense
and the table learning rates decayed to 0 by a cosine: eval AUC 0.863451 (0.9814 of the Bayes
AUC, calibration 1.009); two such epochs 0.861726 (0.9795), one epoch at constant rates 0.858542
(0.9758).

On a small real table (Caravan: 4,366 rows, 20% of them for validation; BENCHMARKS.md "A real
click-style table"): batch 64, validation AUC every 25 steps, patience 10, embedding.learning_rate
chosen on validation from 0.1 / 0.02 / 0.005: test AUC 0.7934 +- 0.0022 over 3 seeds, LightGBM 0.7801.

Run:   rankjax train --config configs/finalmlp.py --workdir /tmp/rankjax_finalmlp
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("finalmlp")
  c.data.synthetic.num_interacting_triples = 2
  c.train.steps = 4200  # Three epochs of the 3 M synthetic records at batch 2048.
  c.train.lr_schedule = "cosine"
  c.embedding.lr_schedule = "cosine"
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
