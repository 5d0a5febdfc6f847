"""AutoInt+ (Song et al. 2019): multi-head self-attention over the fields, plus a DNN,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Recipe (BENCHMARKS.md, "AutoInt+ with a first-order term"): DeepFM's, the 400-400-400 DNN, the
dense and the table learning rates decayed to 0 by a cosine, the tables' rate 0.025, a
first-order (wide) term beside attention and DNN, and four epochs: test AUC 0.863692 (0.9817 of
the Bayes AUC, calibration 1.009, scored at the best validation step 5,250), against 0.862211
(0.9800) in three epochs, 0.860918 (0.9785) in three without the first-order term and 0.856845
(0.9739) for one epoch at constant rates; about an hour alone on this 2-core CPU (the
attention's small batched products, softmax reductions and weight-gradient transposes run at ~9%
of XLA:CPU's roofline).

Run:   rankjax train --config configs/autoint.py --workdir /tmp/rankjax_autoint
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("autoint")
  c.data.synthetic.num_interacting_triples = 2
  c.model.deep_mlp = (400, 400, 400)
  c.model.use_wide = True  # A first-order term beside attention and DNN (+0.0013 test AUC here).
  c.train.steps = 5600  # Four epochs of the 3 M synthetic records at batch 2048.
  c.train.lr_schedule = "cosine"
  c.embedding.lr_schedule = "cosine"
  c.embedding.learning_rate = 0.025
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
