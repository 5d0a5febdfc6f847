"""Wide & Deep (Cheng et al. 2016): a linear model over ids and crossed ids beside an MLP,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Run:   rankjax train --config configs/wide_deep.py --workdir /tmp/rankjax_wide_deep
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config


def get_config():
  c = base_config("wide_deep")
  c.data.synthetic.num_interacting_triples = 2
  return c
