"""A seconds-long smoke run: a small DLRM on a small synthetic set (used by the tests).

Run:   rankjax train --config configs/tiny.py --workdir /tmp/rankjax_tiny
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("dlrm")
  c.data.synthetic.num_train = 8192
  c.data.synthetic.num_eval = 2048
  c.data.synthetic.vocab_sizes = (50, 20, 100, 7, 30, 60)
  c.model.embed_dim = 8
  c.model.bottom_mlp = (16, 8)
  c.model.top_mlp = (16, 1)
  c.train.batch_size = 256
  c.train.eval_batch_size = 512
  c.train.steps = 20
  c.train.log_every = 5
  c.checkpoint.every_steps = 10
  select_on_validation(c, eval_every=10, synthetic_records=1024)
  return c
