"""Validation split, early stopping and the best step: the held-out records are never trained on,
the run stops where the validation metric stopped improving, the test split is scored at the best
step, and all of it resumes exactly."""

import json

import jax
import numpy as np
import pytest

from helpers import tiny_config
from rankjax import train as train_lib
from rankjax.config import ConfigError
from rankjax.data import layout, pipeline
from rankjax.early_stopping import EarlyStopping

# ---------------------------------------------------------------- the tracker


def _stopping(patience=3, min_delta=0.0, lower=False):
  return EarlyStopping("auc", patience, min_delta, lower)


def test_best_step_and_stop_follow_patience_and_min_delta():
  stopping = _stopping(patience=3, min_delta=0.01)
  history = [(10, 0.50), (20, 0.60), (30, 0.605), (40, 0.59), (50, 0.609)]
  improved = [stopping.update(step, {"auc": value}) for step, value in history]
  # 0.605 and 0.609 beat 0.60 by less than min_delta: not improvements.
  assert improved == [True, True, False, False, False]
  assert (stopping.best_step, stopping.best_value, stopping.stopped) == (20, 0.60, True)


def test_patience_zero_never_stops_but_keeps_the_best():
  stopping = _stopping(patience=0)
  for step, value in enumerate([0.7, 0.6, 0.5, 0.4, 0.3]):
    stopping.update(step, {"auc": value})
  assert (stopping.best_step, stopping.stopped) == (0, False)


def test_a_loss_metric_is_better_lower_and_nan_is_never_best():
  stopping = EarlyStopping.from_config(_config(metric="logloss", patience=2), ("logloss", "loss"))
  assert stopping.lower_is_better
  for step, value in [(1, 0.5), (2, float("nan")), (3, 0.4), (4, 0.45)]:
    stopping.update(step, {"logloss": value})
  assert (stopping.best_step, stopping.evals_since_best, stopping.stopped) == (3, 1, False)
  per_head = EarlyStopping.from_config(_config(metric="conversion/logloss"), ("logloss", "loss"))
  assert per_head.lower_is_better


def test_state_round_trips_through_json():
  stopping = _stopping()
  for step, value in [(1, 0.5), (2, 0.4)]:
    stopping.update(step, {"auc": value})
  restored = _stopping()
  restored.load(json.loads(json.dumps(stopping.state())))
  assert restored == stopping


def test_an_unknown_metric_is_a_config_error_listing_the_metrics():
  with pytest.raises(ConfigError, match=r"train.early_stopping.metric.*'auroc'.*'auc'"):
    EarlyStopping("auroc", 1, 0.0, False).check_metric(("auc", "logloss"))


def _config(**stopping):
  config = tiny_config()
  for key, value in stopping.items():
    config.train.early_stopping[key] = value
  return config


# ---------------------------------------------------------------- the held-out split


@pytest.mark.parametrize("order", ["last", "random"])
def test_holdout_splits_the_records_in_two_disjoint_sorted_parts(order):
  train, validation = pipeline.Holdout(0.25, order, seed=3).indices(1000)
  assert len(validation) == 250 and len(train) == 750
  np.testing.assert_array_equal(np.sort(np.concatenate([train, validation])), np.arange(1000))
  assert (np.diff(train) > 0).all() and (np.diff(validation) > 0).all()
  if order == "last":
    np.testing.assert_array_equal(validation, np.arange(750, 1000))
  else:
    again = pipeline.Holdout(0.25, order, seed=3).indices(1000)[1]
    other = pipeline.Holdout(0.25, order, seed=4).indices(1000)[1]
    np.testing.assert_array_equal(validation, again)
    assert not np.array_equal(validation, other)


def test_a_holdout_that_leaves_a_part_empty_is_an_error():
  with pytest.raises(layout.DataError, match="validation_fraction=0.001 of 100 train records"):
    pipeline.Holdout(0.001).indices(100)


def test_training_never_reads_a_validation_record_and_validation_reads_each_once(tmp_path):
  records = np.empty(200, layout.ctr_record_dtype(1, 2))
  records["label"], records["dense"] = np.arange(200) % 2, 0.0
  records["cat"] = np.arange(200)[:, None]
  splits = {s: layout.write_split(tmp_path, s, records) for s in ("train", "eval")}
  manifest = layout.write_manifest(tmp_path, records.dtype, splits)
  holdout = pipeline.Holdout(0.3, "random", seed=0)
  trained = np.concatenate([b["cat"][:, 0] for b in pipeline.train_iterator(
      tmp_path, manifest, global_batch_size=20, num_batches=30, seed=0, holdout=holdout)])
  validated = np.concatenate([b["cat"][:, 0][b["weight"] > 0] for b in pipeline.eval_iterator(
      tmp_path, manifest, global_batch_size=16, split="validation", holdout=holdout)])
  np.testing.assert_array_equal(validated, holdout.indices(200)[1])
  assert not set(trained) & set(validated)
  assert set(trained) == set(holdout.indices(200)[0])  # 4+ epochs of 140 records: every one is read.


# ---------------------------------------------------------------- `train` end to end

EVERY, PATIENCE = 20, 2


def _overfitting_config(steps):
  """A tiny model on 2,048 records with large learning rates: validation AUC peaks, then falls."""
  config = tiny_config(steps=steps, eval_every=EVERY, log_every=EVERY, dense_learning_rate=0.01)
  config.embedding.learning_rate = 0.5
  config.data.synthetic.num_train = 2048
  config.data.validation_fraction = 0.25
  config.train.early_stopping.metric = "auc"
  config.train.early_stopping.patience = PATIENCE
  config.checkpoint.every_steps = 1000
  return config


def _events(workdir, split):
  return [e for e in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if e["split"] == split]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("stopped")
  lines = []
  summary = train_lib.train(_overfitting_config(400), workdir, log=lines.append)
  return workdir, summary, lines


def test_the_run_stops_patience_evals_after_the_best_validation_step(stopped_run):
  workdir, summary, lines = stopped_run
  validation = _events(workdir, "validation")
  aucs = [e["auc"] for e in validation]
  best = validation[int(np.argmax(aucs))]["step"]
  assert summary["best_step"] == best and summary["best_validation_auc"] == max(aucs)
  assert summary["stopped_early"] and summary["steps"] == best + PATIENCE * EVERY < 400
  assert [e["step"] for e in validation] == list(range(EVERY, summary["steps"] + 1, EVERY))
  assert f"test split scored at step {best}" in lines[-1]


def test_the_test_split_is_scored_once_at_the_best_step_kept_by_retention(stopped_run):
  workdir, summary, _ = stopped_run
  (test,) = _events(workdir, "eval")
  assert test["best_step"] == summary["best_step"] and summary["eval_auc"] == test["auc"]
  config = _overfitting_config(400)
  exp = train_lib.build(config, workdir)
  checkpointer = train_lib._checkpointer(config, workdir, exp.task.LOWER_IS_BETTER)
  assert summary["best_step"] in checkpointer.all_steps()  # Retention kept it beside the latest.
  with jax.set_mesh(exp.partitioner.mesh):
    best, _ = train_lib._restore(exp, checkpointer, summary["best_step"], config.seed,
                                 checkpointer.restore_data(summary["best_step"]))
    assert train_lib.evaluate(exp, best)["auc"] == test["auc"]
    last, _ = train_lib._restore(exp, checkpointer, summary["steps"], config.seed,
                                 checkpointer.restore_data(summary["steps"]))
    assert train_lib.evaluate(exp, last)["auc"] != test["auc"]
  checkpointer.close()


def test_rerunning_a_stopped_run_does_nothing(stopped_run):
  workdir, summary, _ = stopped_run
  before = (workdir / "metrics.jsonl").read_text()
  lines = []
  assert train_lib.train(_overfitting_config(400), workdir, log=lines.append) == summary
  assert "stopped early" in lines[-1] and (workdir / "metrics.jsonl").read_text() == before


def test_an_interrupted_run_resumes_the_tracker_and_stops_at_the_same_step(stopped_run, tmp_path):
  workdir, summary, _ = stopped_run
  first = summary["best_step"] - EVERY  # Interrupted before its best step.
  train_lib.train(_overfitting_config(first), tmp_path, log=lambda _: None)
  resumed = train_lib.train(_overfitting_config(400), tmp_path, log=lambda _: None)
  assert {k: resumed[k] for k in ("steps", "best_step", "best_validation_auc", "eval_auc")} == \
      {k: summary[k] for k in ("steps", "best_step", "best_validation_auc", "eval_auc")}
  assert _events(tmp_path, "validation") == _events(workdir, "validation")


def test_early_stopping_without_a_validation_split_is_a_config_error(tmp_path):
  config = _overfitting_config(40)
  config.data.validation_fraction = 0.0
  with pytest.raises(ConfigError, match="train.early_stopping.metric.*needs a validation split"):
    train_lib.train(config, tmp_path, log=lambda _: None)
