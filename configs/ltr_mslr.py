"""Learning to rank on MSLR-WEB10K/30K (136 features per document): a per-document MLP scorer,
listwise softmax loss; the test split is scored at the step of the best validation NDCG@10 (vali.txt,
or 10% of the train queries when the dataset has no validation split). The list size and feature stats come from the
dataset's manifest.

Run (Fold1; lists longer than 200 documents are cut, and counted, by the converter):
  rankjax data letor --input MSLR-WEB10K/Fold1/train.txt --validation-input MSLR-WEB10K/Fold1/vali.txt \\
      --eval-input MSLR-WEB10K/Fold1/test.txt --output /data/mslr10k_fold1 --num-features 136 --max-list-size 200
  rankjax train --config configs/ltr_mslr.py --workdir /tmp/rankjax_mslr --config.data.path=/data/mslr10k_fold1
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("ltr_mlp")
  c.model.hidden = (256, 128)
  c.train.loss = "softmax"
  c.train.ndcg_k = 10
  c.train.dense_optimizer = "adam"
  c.train.dense_learning_rate = 1e-3
  c.train.batch_size = 64  # Query lists per step.
  c.train.eval_batch_size = 256
  c.train.steps = 5000  # About 50 epochs of MSLR-WEB10K Fold1's 6,000 training queries.
  c.train.log_every = 100
  c.checkpoint.every_steps = 500
  c.checkpoint.keep_best_metric = "ndcg"
  select_on_validation(c, eval_every=500, order="random")  # --validation-input's, else 10% of train.
  return c
