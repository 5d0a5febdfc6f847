"""FinalMLP (Mao et al. 2023): two gated MLP streams joined by bilinear fusion,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Run:   rankjax train --config configs/finalmlp.py --workdir /tmp/rankjax_finalmlp
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config


def get_config():
  c = base_config("finalmlp")
  c.data.synthetic.num_interacting_triples = 2
  return c
