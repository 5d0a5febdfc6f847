"""DCNv2 (Wang et al. 2021): a cross network (mixture of low-rank experts) beside a deep network,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Run:   rankjax train --config configs/dcnv2.py --workdir /tmp/rankjax_dcnv2
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config


def get_config():
  c = base_config("dcnv2")
  c.data.synthetic.num_interacting_triples = 2
  return c
