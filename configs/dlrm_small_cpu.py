r"""The small DLRM of facebookresearch/dlrm's CPU reference, for a side-by-side speed comparison.

Same model as `dlrm_s_pytorch.py --data-generation=random` with the command in
scripts/compare_pytorch_cpu.sh: 26 tables x 100000 rows x dim 16, bottom MLP 13-512-256-16, dot
interaction (strict lower triangle, 27*26/2 = 351 pairs), top MLP 367-512-256-1, batch 2048,
dense layers and embeddings trained by SGD at the reference's default learning rate 0.01. One
difference that does not change the step's work: the loss is BCE on the logit (the reference's
default is MSE on the sigmoid).

Run:   rankjax bench train --config configs/dlrm_small_cpu.py
       scripts/compare_pytorch_cpu.sh /tmp/dlrm_s_pytorch.py   (both frameworks, one run)
       rankjax profile --config configs/dlrm_small_cpu.py --workdir /tmp/rankjax_small_profile
Result: in BENCHMARKS.md, with the machine, date and the PyTorch figure of the same run.
"""

import ml_collections

from rankjax.config import base_config, select_on_validation

NUM_TABLES = 26
ROWS_PER_TABLE = 100_000
REFERENCE_LEARNING_RATE = 0.01  # dlrm_s_pytorch.py --learning-rate default.


def get_config() -> ml_collections.ConfigDict:
  c = base_config("dlrm")
  c.model.embed_dim = 16
  c.model.bottom_mlp = (512, 256, 16)
  c.model.top_mlp = (512, 256, 1)
  c.data.synthetic.vocab_sizes = (ROWS_PER_TABLE,) * NUM_TABLES
  c.data.synthetic.num_train = 400_000
  c.data.synthetic.num_eval = 50_000
  c.train.batch_size = 2048
  c.train.steps = 195  # One pass over the 400k training records.
  c.train.log_every = 50
  c.train.dense_optimizer = "sgd"
  c.train.dense_learning_rate = REFERENCE_LEARNING_RATE
  c.embedding.optimizer = "sgd"
  c.embedding.learning_rate = REFERENCE_LEARNING_RATE
  select_on_validation(c, eval_every=65, synthetic_records=20_000)
  return c
