"""xDeepFM (Lian et al. 2018): first-order weights + Compressed Interaction Network + DNN,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Run:   rankjax train --config configs/xdeepfm.py --workdir /tmp/rankjax_xdeepfm
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("xdeepfm")
  c.data.synthetic.num_interacting_triples = 2
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
