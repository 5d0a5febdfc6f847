"""Learning to rank on any LETOR / SVMlight file converted by `rankjax data letor` (MQ2007/2008,
Yahoo, Istella, MSLR, your own), or on query lists with categorical ids from `rankjax data table
--lists` (each document's ids embedded by the engine, model.embed_dim): a per-document MLP scorer
over the normalised document features (task.normalize=auto: log1p for heavy-tailed ones),
trained with the listwise softmax loss; eval prints NDCG@1/5/10, MRR and MAP, and the best
checkpoint by NDCG@10 is kept. The list size, feature count and feature statistics come from the
dataset's manifest.

Recipe measured on the MSLR-WEB10K sample (BENCHMARKS.md, 3 seeds, test NDCG@10 0.395 +- 0.023
vs LightGBM LambdaRank's 0.307 on the same splits): --config.train.loss=lambda_ndcg
--config.train.dropout=0.3 --config.data.validation_fraction=0.2 --config.data.validation_order=random
--config.train.eval_every=25 --config.train.early_stopping.metric=ndcg@10
--config.train.early_stopping.patience=8 --config.train.batch_size=8 (the test split is then
scored at the best validation step).

The scorer: per document (ltr_mlp, the default) or in the context of the whole list
(`--config configs/ltr_letor.py:ltr_attention`, self-attention across the list's documents).
Swap the loss, the scorer's size or the normalisation with overrides:
  rankjax data letor --input train.txt --eval-input vali.txt --output /data/letor
  rankjax train --config configs/ltr_letor.py --workdir /tmp/ltr --config.data.path=/data/letor \\
      --config.train.loss=lambda_ndcg --config.model.hidden='(128,64)' --config.task.normalize=standardize
Losses: softmax, poly1_softmax, listmle, approx_ndcg, lambda_ndcg (NDCG@train.ndcg_k weights),
pairwise_logistic, pairwise_hinge, sigmoid, mse.
"""

from rankjax.config import base_config, select_on_validation


SCORERS = ("ltr_mlp", "ltr_attention")


def get_config(scorer: str = "ltr_mlp"):
  if scorer not in SCORERS:
    raise ValueError(f"scorer {scorer!r} is not one of {SCORERS} (configs/ltr_letor.py:SCORER)")
  c = base_config(scorer)
  if scorer == "ltr_mlp":
    c.model.hidden = (64, 32)
  else:
    c.model.document_mlp, c.model.attention_layers, c.model.num_heads = (64, 32), 2, 4
    c.model.feed_forward_dim, c.model.score_mlp = 64, (32,)
  c.train.loss = "softmax"
  c.train.ndcg_k = 10
  c.train.dense_optimizer = "adam"
  c.train.dense_learning_rate = 1e-3
  c.train.batch_size = 32  # Query lists per step.
  c.train.eval_batch_size = 128
  c.train.steps = 2000
  c.train.log_every = 100
  c.checkpoint.every_steps = 200
  c.checkpoint.keep_best_metric = "ndcg"
  c.eval.ranking_cutoffs = (1, 3, 5, 10)
  select_on_validation(c, eval_every=200, fraction=0.2, order="random")  # Unless the dataset has its own.
  return c
