"""AutoInt+ (Song et al. 2019): multi-head self-attention over the fields, plus a DNN,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Run:   rankjax train --config configs/autoint.py --workdir /tmp/rankjax_autoint
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("autoint")
  c.data.synthetic.num_interacting_triples = 2
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
