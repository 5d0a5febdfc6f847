"""DeepFM (Guo et al. 2017): first-order weights + factorization machine + DNN,
on the embedded synthetic CTR data with planted order-2 and order-3 feature crosses.

Recipe (BENCHMARKS.md, "DeepFM and DCNv2 recipes on the zoo data" and "DeepFM's table learning
rate"): the paper's 400-400-400 DNN, three epochs with the dense and the table learning rates
decayed to 0 by a cosine, the tables' rate 0.025 (chosen on the validation split: among 0.1,
0.05, 0.025, 0.0125 over two epochs, then 0.05 and 0.025 over three): test AUC 0.863474 (0.9814
of the Bayes AUC, calibration 1.009); the earlier recipe (a 256-128 DNN, two epochs, table rate
0.1) gave 0.856544 (0.9736).

Run:   rankjax train --config configs/deepfm.py --workdir /tmp/rankjax_deepfm
Result: README's model table (AUC and its ratio to the data's Bayes-optimal AUC).
"""

from rankjax.config import base_config, select_on_validation


def get_config():
  c = base_config("deepfm")
  c.data.synthetic.num_interacting_triples = 2
  c.model.deep_mlp = (400, 400, 400)
  c.train.steps = 4200  # Three epochs of the 3 M synthetic records at batch 2048.
  c.train.lr_schedule = "cosine"
  c.embedding.lr_schedule = "cosine"
  c.embedding.learning_rate = 0.025
  select_on_validation(c, eval_every=350, synthetic_records=50_000)
  return c
