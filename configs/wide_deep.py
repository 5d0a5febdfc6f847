"""Wide & Deep (Cheng et al. 2016): a linear model over ids and crossed ids beside an MLP,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

The crosses are the pairs `rankjax data crosses --path W/data/synthetic` proposes from the
train split (1 M sampled records; pairs whose cells depart from an additive model with z >= 3:
rankjax/data/cross_selection.py), as a user would choose them for their data; the model's own
default (neighbouring features) knows nothing of it. Recipe (BENCHMARKS.md, "Wide & Deep with
crosses chosen from the data"): the 400-400-400 DNN, three epochs with the dense and the table
learning rates decayed to 0 by a cosine, the tables' rate 0.025: test AUC 0.863942 (0.9820 of
the Bayes AUC, calibration 1.008); with the neighbouring crosses the same recipe gives 0.857039
(0.9741), and the earlier recipe (256-128, two epochs, rate 0.0125) 0.855439 (0.9723).

Run:   rankjax train --config configs/wide_deep.py --workdir /tmp/rankjax_wide_deep
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config, select_on_validation

# `rankjax data crosses` on this data, z >= 3, highest first.
SELECTED_CROSSES = (("cat_6", "cat_22"), ("cat_16", "cat_18"), ("cat_9", "cat_19"), ("cat_14", "cat_17"),
                    ("cat_6", "cat_24"), ("cat_12", "cat_16"), ("cat_1", "cat_17"), ("cat_24", "cat_25"),
                    ("cat_6", "cat_9"), ("cat_0", "cat_11"), ("cat_3", "cat_5"), ("cat_11", "cat_23"),
                    ("cat_11", "cat_21"), ("cat_6", "cat_11"))


def get_config():
  c = base_config("wide_deep")
  c.data.synthetic.num_interacting_triples = 2
  c.model.crosses = SELECTED_CROSSES
  c.model.deep_mlp = (400, 400, 400)
  c.train.steps = 4200  # Three epochs of the 3 M synthetic records at batch 2048.
  c.train.lr_schedule = "cosine"
  c.embedding.lr_schedule = "cosine"
  c.embedding.learning_rate = 0.025
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
