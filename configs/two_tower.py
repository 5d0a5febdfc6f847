"""Two-tower retrieval on the embedded synthetic interaction data: users (id, segment) pick items
(id, category) by a planted preference times popularity; a query tower and an item tower (MLPs
over their features' embeddings, cosine similarity over a learned temperature) are trained with
in-batch negatives and the log-Q correction. Each eval ranks the whole corpus for every eval
query (exact top-K on device) and reports recall@10/50/100 and NDCG@10/50/100 beside the
popularity baseline's recall; the summary adds the planted model's own recall (the ceiling).

  rankjax train --config configs/two_tower.py --workdir /tmp/two_tower
  rankjax train --config configs/two_tower.py --workdir /tmp/tt_noq --config.task.log_q_correction=false
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("two_tower")
  c.data.synthetic.kind = "retrieval"
  c.data.synthetic.num_train = 200_000
  c.data.synthetic.num_eval = 5_000
  c.data.synthetic.latent_dim = 8
  c.data.synthetic.zipf_exponent = 0.8
  c.data.synthetic.signal_scale = 4.0
  c.model.embed_dim = 32
  c.model.tower = (64, 32)
  c.embedding.learning_rate = 0.05
  c.train.steps = 1000
  c.train.batch_size = 512
  c.train.eval_batch_size = 1000
  c.train.log_every = 100
  c.train.dense_learning_rate = 3e-3
  c.checkpoint.every_steps = 500
  select_on_validation(c, eval_every=250, synthetic_records=5_000)
  return c
