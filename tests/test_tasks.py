"""The task seam: a multi-task click model (one head per label column) trains through the same
trainer, its loss is the weighted sum of per-head cross-entropies and its eval reports each
head's AUC and log loss (sklearn oracles); the trainer loop holds no task-specific branch."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from helpers import REPO, tiny_config
from rankjax.cli import data as data_cli
from rankjax.data import pipeline
from rankjax.experiment import build
from rankjax.train import evaluate

HEADS = ("click", "buy")


@pytest.fixture(scope="module")
def two_label_table(tmp_path_factory):
  """A table whose click depends on `user` and whose buy (a subset of clicks) also on `item`."""
  directory = tmp_path_factory.mktemp("two_labels")
  rng = np.random.default_rng(0)
  n = 3000
  user, item = rng.integers(0, 40, n), rng.integers(0, 20, n)
  click = rng.random(n) < np.where(user % 2 == 0, 0.7, 0.2)
  buy = click & (rng.random(n) < np.where(item % 3 == 0, 0.8, 0.2))
  columns = {"click": click.astype(np.float32), "buy": buy.astype(np.float32), "price": rng.normal(size=n),
             "user": user, "item": item}
  for split, rows in (("train", slice(0, 2400)), ("eval", slice(2400, n))):
    pq.write_table(pa.table({k: v[rows] for k, v in columns.items()}), directory / f"{split}.parquet")
  spec = {"label": list(HEADS), "dense": ["price"],
          "categorical": [{"name": "user", "num_rows": 64}, {"name": "item", "num_rows": 32}]}
  (directory / "spec.json").write_text(json.dumps(spec))
  assert data_cli.main(["table", "--input", str(directory / "train.parquet"), "--eval-input",
                        str(directory / "eval.parquet"), "--output", str(directory / "data"),
                        "--spec", str(directory / "spec.json")]) == 0
  return directory / "data"


def multitask_config(data_dir, weights=(1.0, 0.5)):
  config = tiny_config()
  config.task.name = "multitask"
  config.task.heads = HEADS
  config.task.loss_weights = weights
  config.data.path = str(data_dir)
  config.mesh.shape = (1, 1)
  return config


def _bce(labels, logits):
  return np.mean(np.logaddexp(0.0, logits) - labels * logits)


def test_multitask_loss_is_the_weighted_sum_of_per_head_cross_entropies(two_label_table):
  config = multitask_config(two_label_table)
  exp = build(config, None, jax.devices()[:1])
  it = pipeline.train_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size,
                               num_batches=1, seed=0, spec=exp.task.batch_spec)
  batch = exp.partitioner.place_batch(next(iter(it)), exp.batch_shardings)
  assert batch["label"].shape == (config.train.batch_size, 2)
  with jax.set_mesh(exp.partitioner.mesh):
    state = exp.init_fn(config.seed)
    outputs = jax.device_get(jax.jit(exp.task.forward)(state, batch))
    labels = np.asarray(batch["label"])
    _, metrics = exp.train_fn(state, batch)
  per_head = [_bce(labels[:, i], outputs[h].astype(np.float64)) for i, h in enumerate(HEADS)]
  np.testing.assert_allclose(float(metrics["loss"]), per_head[0] + 0.5 * per_head[1], rtol=1e-5)
  np.testing.assert_allclose([float(metrics["loss/click"]), float(metrics["loss/buy"])], per_head, rtol=1e-5)


def test_multitask_eval_reports_each_heads_auc_and_log_loss_like_sklearn(two_label_table):
  config = multitask_config(two_label_table)
  exp = build(config, None, jax.devices()[:1])
  with jax.set_mesh(exp.partitioner.mesh):
    state = exp.init_fn(config.seed)
    evaluation = evaluate(exp, state)
    eval_spec = exp.task.batch_spec.with_weight()
    it = pipeline.eval_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.eval_batch_size,
                                spec=exp.task.batch_spec)
    batches = [exp.partitioner.place_batch(b, eval_spec.shardings(exp.partitioner)) for b in it]
    outputs = [jax.device_get(jax.jit(exp.task.forward)(state, b)) for b in batches]
  logits = np.stack([np.concatenate([o[h] for o in outputs]) for h in HEADS], axis=1)
  labels, weights = (np.concatenate([np.asarray(b[k]) for b in batches]) for k in ("label", "weight"))
  real = weights > 0
  assert evaluation["examples"] == 600 == real.sum()
  for i, head in enumerate(HEADS):
    exact = roc_auc_score(labels[real, i], logits[real, i])
    assert evaluation[f"{head}/auc_error_bound"] < 1e-3  # An untrained model: its logits are close together.
    assert abs(evaluation[f"{head}/auc"] - exact) <= evaluation[f"{head}/auc_error_bound"] + 1e-12
    probabilities = 1 / (1 + np.exp(-logits[real, i].astype(np.float64)))
    assert evaluation[f"{head}/logloss"] == pytest.approx(log_loss(labels[real, i], probabilities), rel=1e-6)
  assert evaluation["auc"] == pytest.approx(np.mean([evaluation[f"{h}/auc"] for h in HEADS]))


@pytest.mark.slow
def test_rankjax_train_learns_both_heads_of_a_multitask_model(two_label_table, tmp_path):
  p = subprocess.run(
      [sys.executable, "-m", "rankjax.cli", "train", "--config", str(REPO / "configs" / "tiny.py"),
       "--workdir", str(tmp_path / "work"), "--config.task.name=multitask", f"--config.task.heads={HEADS}",
       f"--config.data.path={two_label_table}", "--config.train.steps=60", "--config.train.log_every=20",
       "--config.checkpoint.every_steps=60", "--config.train.progress_bar=False",
       # Every record trained on, one evaluation (of the test split) at the end.
       "--config.data.validation_fraction=0", "--config.train.early_stopping.metric=", "--config.train.eval_every=0"],
      capture_output=True, text=True, cwd=tmp_path, timeout=600, env=dict(os.environ))
  assert p.returncode == 0, p.stderr
  events = [json.loads(l) for l in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
  train = [e for e in events if e["split"] == "train"]
  assert [e["step"] for e in train] == [20, 40, 60] and all("loss/click" in e and "loss/buy" in e for e in train)
  (final,) = [e for e in events if e["split"] == "eval"]
  # Each head learnt its own signal (click from user parity, buy also from item).
  assert final["click/auc"] > 0.7 and final["buy/auc"] > 0.7, final
  line = p.stdout.strip().splitlines()[-1]
  assert re.match(r"rankjax: final eval auc=\S+ logloss=\S+ click: auc=\S+ logloss=\S+ ne=\S+ calibration=\S+ buy: auc=",
                  line), line


def test_the_trainer_loop_has_no_task_specific_branch():
  source = (REPO / "rankjax" / "train.py").read_text()
  for word in ("ranking", "letor", "ndcg", "auc", "label", "multitask", "engine.lookup", "cat\"]"):
    assert word not in source.lower(), word
