"""DeepFM (Guo et al. 2017): first-order weights + factorization machine + DNN,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Run:   rankjax train --config configs/deepfm.py --workdir /tmp/rankjax_deepfm
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config


def get_config():
  c = base_config("deepfm")
  c.data.synthetic.num_interacting_triples = 2
  return c
