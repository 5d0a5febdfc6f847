"""NDCG@10 of every rankjax ranking loss on synthetic query lists with a planted relevance function,
beside the planted scorer's own NDCG@10 (the ceiling the noise leaves).

Lists: 3..30 documents of 20 standard-normal features; score = w.x + 0.5 x0 x1 (an interaction a
linear scorer cannot fit) + N(0, 0.3^2) noise; relevance 0..4 by thresholds 0, 1, 2, 3. Converted
by `rankjax data letor`; each loss trains configs/ltr_letor.py (per-document MLP 64-32) on one
device, and the eval split is scored whole at the end. One command:

  python scripts/ltr_losses_synthetic.py --out /tmp/ltr_losses [--steps 1500] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

LOSSES = ("softmax", "poly1_softmax", "listmle", "approx_ndcg", "lambda_ndcg", "pairwise_logistic",
          "pairwise_hinge", "sigmoid", "mse")
FEATURES = 20


def planted_score(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
  return features @ weights + 0.5 * features[..., 0] * features[..., 1]


def write_lists(path: pathlib.Path, first_qid: int, num_queries: int, weights: np.ndarray, rng) -> None:
  lines = []
  for qid in range(first_qid, first_qid + num_queries):
    features = rng.normal(size=(rng.integers(3, 31), FEATURES))
    relevance = np.digitize(planted_score(features, weights) + 0.3 * rng.normal(size=len(features)), [0, 1, 2, 3])
    lines += [f"{r} qid:{qid} " + " ".join(f"{i + 1}:{v:.5f}" for i, v in enumerate(row))
              for r, row in zip(relevance, features)]
  path.write_text("\n".join(lines) + "\n")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--losses", nargs="+", default=list(LOSSES))
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  import jax

  from rankjax import metrics
  from rankjax import train as train_lib
  from rankjax.cli import data as data_cli
  from rankjax.config import load_config_file
  from rankjax.data import layout

  rng = np.random.default_rng(args.seed)
  weights = rng.normal(size=FEATURES) / np.sqrt(FEATURES) * 1.5
  data = args.out / "data"
  if not (data / layout.MANIFEST).exists():
    write_lists(args.out / "train.txt", 1, 3000, weights, rng)
    write_lists(args.out / "eval.txt", 100_000, 500, weights, rng)
    assert data_cli.main(["letor", "--input", str(args.out / "train.txt"), "--eval-input",
                          str(args.out / "eval.txt"), "--output", str(data)]) == 0
  manifest = layout.read_manifest(data)
  records = layout.open_split(data, manifest, "eval")[:]
  relevant = ((records["relevance"] > 0) & (records["mask"] > 0)).any(axis=1)
  planted = metrics.ndcg_at_k(records["relevance"][relevant], planted_score(records["features"], weights)[relevant],
                              records["mask"][relevant], 10)
  print(json.dumps({"model": "planted scorer (no noise)", "eval_ndcg@10": planted}), flush=True)
  for loss in args.losses:
    config = load_config_file(str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "ltr_letor.py"))
    config.data.path, config.train.loss, config.seed = str(data), loss, args.seed
    config.model.hidden = (64, 32)
    config.train.steps, config.train.batch_size, config.train.eval_batch_size = args.steps, 32, 64
    config.train.log_every, config.checkpoint.every_steps, config.train.progress_bar = args.steps, args.steps, False
    start = time.perf_counter()
    summary = train_lib.train(config, args.out / f"run_{loss}", jax.devices()[:1], log=lambda *_: None)
    print(json.dumps({"loss": loss, "eval_ndcg@10": summary["eval_ndcg@10"], "eval_mrr": summary["eval_mrr"],
                      "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
  main()
