"""Logistic regression, the zoo's baseline: one weight per id plus a linear map of the dense
features, on the same synthetic data as the feature-interaction configs (order-2 and order-3 crosses).

Run:   rankjax train --config configs/logreg.py --workdir /tmp/rankjax_logreg
"""

from rankjax.config import base_config


def get_config():
  c = base_config("logreg")
  c.data.synthetic.num_interacting_triples = 2
  return c
