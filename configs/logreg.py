"""Logistic regression, the zoo's baseline: one weight per id plus a linear map of the dense
features, on the same synthetic data as the feature-interaction configs (order-2 and order-3 crosses).

Run:   rankjax train --config configs/logreg.py --workdir /tmp/rankjax_logreg
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("logreg")
  c.data.synthetic.num_interacting_triples = 2
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
