"""Wide & Deep (Cheng et al. 2016): a linear model over ids and crossed ids beside an MLP,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Recipe (BENCHMARKS.md, "DeepFM and DCNv2 recipes on the zoo data" and "DeepFM's table learning
rate"): two epochs with the dense and the table learning rates decayed to 0 by a cosine, the
tables' rate 0.0125 (chosen on the validation split among 0.1, 0.05, 0.025, 0.0125, 0.00625):
test AUC 0.855439 (0.9723 of the Bayes AUC, calibration 1.010), against 0.851344 (0.9677) at the
default rate 0.1 and 0.847354 (0.9631) for one epoch at constant rates.

Run:   rankjax train --config configs/wide_deep.py --workdir /tmp/rankjax_wide_deep
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("wide_deep")
  c.data.synthetic.num_interacting_triples = 2
  c.train.steps = 2800  # Two epochs of the 3 M synthetic records at batch 2048.
  c.train.lr_schedule = "cosine"
  c.embedding.lr_schedule = "cosine"
  c.embedding.learning_rate = 0.0125
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
