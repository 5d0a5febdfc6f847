"""BST (Chen et al. 2019): a transformer over the behaviour sequence and the target item,
on the embedded synthetic data with a behaviour sequence: cat_26 holds up to 20 earlier items (ids
of cat_25's vocabulary, the target item), and the click grows with the target's similarity to them.

Run:   rankjax train --config configs/bst.py --workdir /tmp/rankjax_bst
       ... --config.model.use_history=False   (the same model without the sequence)
Result: README's model table.
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("bst")
  c.data.synthetic.sequence_length = 20
  # GAUC per user, as feeds report it: the synthetic data has no user id, so cat_0 (1,000 ids)
  # stands in for one; on real data name the user-id feature.
  c.eval.group_feature = "cat_0"
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
