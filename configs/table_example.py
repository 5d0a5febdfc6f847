r"""DLRM on your own table (Parquet or CSV) converted by a JSON feature spec.

Example spec (spec.json): a click label, two dense columns, two hashed id columns, the last 20
item ids a user viewed (multi-hot, padded with -1) and a query id (stored, not trained on):

  {"label": "click",
   "dense": ["price", "position"],
   "categorical": [{"name": "user_id", "num_rows": 1000000}, {"name": "item_id", "num_rows": 500000}],
   "sequence": [{"name": "recent_items", "num_rows": 500000, "max_hotness": 20}],
   "qid": "request_id"}

  rankjax data table --input 'events/*.parquet' --output table_data --spec spec.json \
      --eval-fraction 0.1
  rankjax train --config configs/table_example.py --workdir /tmp/table_example \
      --config.data.path=table_data

Several label columns are stored as one label field of shape (k,); training uses the first.
Dense values are stored as given: normalise them (for counts, log1p) before converting.
Result: none (a template; the data is yours).
"""

import ml_collections

from rankjax.config import base_config, select_on_validation


def get_config() -> ml_collections.ConfigDict:
  c = base_config("dlrm")
  c.data.path = "table_data"  # The `rankjax data table --output` directory.
  c.model.embed_dim = 16
  c.model.bottom_mlp = (64, 16)
  c.model.top_mlp = (128, 64, 1)
  c.train.batch_size = 1024
  c.train.eval_batch_size = 4096
  c.train.steps = 2000
  c.train.log_every = 100
  c.checkpoint.every_steps = 1000
  select_on_validation(c, eval_every=500)  # Its own validation split, else the last 10% of the train rows.
  return c
