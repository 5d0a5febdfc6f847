r"""DLRM on the Criteo Kaggle display-advertising set (45.8 M lines of train.txt), after the BARS
DLRM baseline (Criteo_x1: Adam 1e-3, batch 4096, MLPs of 400 units) with 16-dim embeddings.

Convert the TSV once (frequency vocabulary: ids seen >= 10 times in the train lines get rows, the
rest share row 0; the last 10% of lines are the eval split), then train about one epoch:

  rankjax data criteo --input train.txt --output criteo_kaggle \
      --vocab frequency --min-count 10 --eval-fraction 0.1
  rankjax train --config configs/dlrm_criteo.py --workdir /tmp/dlrm_criteo \
      --config.data.path=criteo_kaggle

Hashed rows instead (one pass, MLPerf style, a fixed 1M rows per table):

  rankjax data criteo --input train.txt --output criteo_kaggle_hash \
      --vocab hash --max-rows-per-table 1000000 --eval-fraction 0.1

The table sizes come from the dataset's manifest (vocab_sizes). Result: not yet measured on the
full set (the BARS Criteo_x1 reference AUC for DLRM is 0.8138, on its own split).
"""

import ml_collections

from rankjax.config import base_config, select_on_validation

BATCH_SIZE = 4096
LEARNING_RATE = 1e-3
STEPS_PER_EPOCH = 10_000  # ~41.3 M train lines / 4096.


def get_config() -> ml_collections.ConfigDict:
  c = base_config("dlrm")
  c.data.path = "criteo_kaggle"  # The `rankjax data criteo --output` directory.
  c.model.embed_dim = 16
  c.model.bottom_mlp = (400, 400, 16)
  c.model.top_mlp = (400, 400, 400, 1)
  c.train.batch_size = BATCH_SIZE
  c.train.eval_batch_size = 16384
  c.train.steps = STEPS_PER_EPOCH
  c.train.log_every = 200
  c.train.dense_optimizer = "adam"
  c.train.dense_learning_rate = LEARNING_RATE
  c.embedding.optimizer = "adam"
  c.embedding.learning_rate = LEARNING_RATE
  c.checkpoint.every_steps = 2000
  select_on_validation(c, eval_every=2000, fraction=0.01)  # The newest 1% of the train lines, if no own split.
  return c
