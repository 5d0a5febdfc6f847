"""ESMM (Ma et al. 2018): CVR over the entire impression space through pCTCVR = pCTR x pCVR,
click + conversion on the embedded synthetic data (a conversion only after a click, CVR driven by
other features than CTR).

Run:   rankjax train --config configs/esmm.py --workdir /tmp/rankjax_esmm
Result: README's model table (per-head AUC and its ratio to the Bayes-optimal AUC per head).
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("esmm")
  c.task.name = "multitask"
  c.task.heads = ("click", "conversion")
  c.data.synthetic.conversion = True
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
