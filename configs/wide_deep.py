"""Wide & Deep (Cheng et al. 2016): a linear model over ids and crossed ids beside an MLP,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Recipe (BENCHMARKS.md, "DeepFM and DCNv2 recipes on the zoo data"): two epochs with the dense
and the table learning rates decayed to 0 by a cosine: eval AUC 0.851344 (0.9677 of the Bayes
AUC, calibration 1.007) against one epoch at constant rates 0.847354 (0.9631, calibration 1.046).

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
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
