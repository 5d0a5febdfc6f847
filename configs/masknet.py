"""MaskNet (Wang et al. 2021): instance-guided masks, parallel MaskBlocks,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Run:   rankjax train --config configs/masknet.py --workdir /tmp/rankjax_masknet
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config


def get_config():
  c = base_config("masknet")
  c.data.synthetic.num_interacting_triples = 2
  return c
