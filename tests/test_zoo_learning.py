"""The zoo learns what its synthetic data plants, trained a bounded number of steps on tiny data:
each interaction and multi-task model beats logistic regression trained the same way and comes
within 10% of the data's Bayes-optimal AUC; DIN and BST beat their own ablation without the
behaviour sequence; ESMM's CVR, learned over every impression, ranks the impressions' conversions
better than the same model trained only on clicked rows (the sample-selection bias ESMM removes)."""

import shutil

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from test_zoo import INTERACTION_MODELS, MULTITASK_MODELS, SEQUENCE_MODELS, run_steps, zoo_config

from rankjax import train as train_lib
from rankjax.data import layout, pipeline

pytestmark = pytest.mark.slow

STEPS = 96  # Three epochs of the 8,192 tiny train records at batch 256.
SEQUENCE_STEPS, SEQUENCE_LENGTH = 160, 10


def _config(name: str, family: str, **model):
  c = zoo_config(name, **model)
  c.mesh.shape = (1, 1)
  if family == "click_conversion":
    c.task.name, c.task.heads, c.data.synthetic.conversion = "multitask", ("click", "conversion"), True
  if family == "sequence":
    c.data.synthetic.sequence_length = SEQUENCE_LENGTH
  return c


def _family(name: str) -> str:
  return "click_conversion" if name in MULTITASK_MODELS else "sequence" if name in SEQUENCE_MODELS else "click"


def _trained(config, workdir, steps: int):
  """(experiment, state on its mesh) after `steps` train steps on one device."""
  exp, state, _ = run_steps(config, workdir, jax.devices()[:1], num_steps=steps)
  return exp, jax.device_put(state, exp.state_shardings)


def _eval(config, workdir, steps: int) -> tuple[dict, dict]:
  exp, state = _trained(config, workdir, steps)
  with jax.set_mesh(exp.partitioner.mesh):
    return train_lib.evaluate(exp, state), exp.manifest


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("zoo_learning")


@pytest.fixture(scope="module")
def logreg_auc(root):
  """Logistic regression's eval AUC on each data family (the mean over heads for two labels)."""
  cache = {}

  def auc(family: str) -> float:
    if family not in cache:
      cache[family] = _eval(_config("logreg", family), root / family, SEQUENCE_STEPS if family == "sequence"
                            else STEPS)[0]["auc"]
    return cache[family]
  return auc


@pytest.mark.parametrize("name", (*INTERACTION_MODELS, *MULTITASK_MODELS))
def test_model_beats_logistic_regression_and_nears_the_bayes_auc(name, root, logreg_auc):
  family = _family(name)
  evaluation, manifest = _eval(_config(name, family), root / family, STEPS)
  baseline = logreg_auc(family)
  assert evaluation["auc"] > baseline + 0.03, (evaluation["auc"], baseline)
  heads = ("click", "conversion") if family == "click_conversion" else ("",)
  for head in heads:
    bayes = (manifest["bayes_optimal_eval_auc_by_label"][head] if head else manifest["bayes_optimal_eval_auc"])
    auc = evaluation[f"{head}/auc" if head else "auc"]
    assert auc >= 0.9 * bayes, (head, auc, bayes)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_model_beats_its_ablation_without_the_history_and_logistic_regression(name, root, logreg_auc):
  with_history = _eval(_config(name, "sequence"), root / "sequence", SEQUENCE_STEPS)[0]["auc"]
  without = _eval(_config(name, "sequence", use_history=False), root / "sequence", SEQUENCE_STEPS)[0]["auc"]
  assert with_history > without + 0.008, (with_history, without)
  assert with_history > logreg_auc("sequence") + 0.03


def _cvr_auc_on_impressions(exp, state) -> float:
  """AUC of ESMM's `cvr` output against the conversion label over every eval impression."""
  spec = exp.task.batch_spec.with_weight()
  scores, labels = [], []
  with jax.set_mesh(exp.partitioner.mesh):
    forward = jax.jit(exp.task.forward)
    for batch in pipeline.eval_iterator(exp.data_dir, exp.manifest, global_batch_size=1024, spec=exp.task.batch_spec):
      real = batch["weight"] > 0
      cvr = np.asarray(forward(state, exp.partitioner.place_batch(batch, spec.shardings(exp.partitioner)))["cvr"])
      scores.append(cvr[real])
      labels.append(batch["label"][real, 1])
  return roc_auc_score(np.concatenate(labels), np.concatenate(scores))


def test_esmm_cvr_over_impressions_beats_esmm_trained_on_clicked_rows_only(root):
  exp, state = _trained(_config("esmm", "click_conversion"), root / "esmm_all", STEPS)
  source = exp.data_dir
  manifest = layout.read_manifest(source)
  dtype = layout.fields_to_dtype(manifest["fields"])
  train = np.fromfile(source / "train.bin", dtype)
  clicked = train[train["label"][:, 0] > 0]
  assert 0 < len(clicked) < len(train) / 2
  biased = root / "clicked_only"
  shutil.rmtree(biased, ignore_errors=True)
  biased.mkdir()
  splits = {"train": layout.write_split(biased, "train", clicked),
            "eval": layout.write_split(biased, "eval", np.fromfile(source / "eval.bin", dtype))}
  layout.write_manifest(biased, dtype, splits, **{k: v for k, v in manifest.items() if k in (
      "num_dense", "vocab_sizes", "hotness", "labels", "dense_stats")}, source={"kind": "table"})
  config = _config("esmm", "click_conversion")
  config.data.path = str(biased)
  clicked_exp, clicked_state = _trained(config, root / "esmm_clicked", STEPS)
  impressions = _cvr_auc_on_impressions(exp, state)
  clicked_only = _cvr_auc_on_impressions(clicked_exp, clicked_state)
  assert impressions > clicked_only + 0.01, (impressions, clicked_only)
