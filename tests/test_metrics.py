"""Tests for rankjax/metrics.py: weighted ROC AUC and log loss checked against scikit-learn.

scikit-learn is the oracle; every input is drawn from a seeded generator.
"""

import numpy as np
import pytest
from sklearn import metrics as skm

from rankjax.metrics import log_loss_from_logits, roc_auc


def _labels_scores(n=2000, seed=0):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=n)
  labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-scores))).astype(np.float32)
  return rng, labels, scores


def test_roc_auc_equals_sklearn_on_distinct_scores():
  _, labels, scores = _labels_scores()
  assert roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), rel=1e-12)


def test_roc_auc_counts_tied_scores_as_one_half_like_sklearn():
  _, labels, scores = _labels_scores()
  tied = np.round(scores, 1)  # ~60 distinct values over 2000 examples: many large tie groups.
  assert len(np.unique(tied)) < len(tied) // 10
  assert roc_auc(labels, tied) == pytest.approx(skm.roc_auc_score(labels, tied), rel=1e-12)


def test_roc_auc_with_sample_weights_equals_sklearn():
  rng, labels, scores = _labels_scores()
  weights = rng.uniform(0.0, 3.0, len(labels))
  tied = np.round(scores, 1)
  assert roc_auc(labels, tied, weights) == pytest.approx(
      skm.roc_auc_score(labels, tied, sample_weight=weights), rel=1e-12)


def test_roc_auc_zero_weight_examples_behave_as_dropped():
  rng, labels, scores = _labels_scores()
  weights = rng.uniform(0.5, 2.0, len(labels))
  weights[rng.random(len(labels)) < 0.3] = 0.0
  keep = weights > 0
  # Padding rows carry arbitrary scores; giving them extreme ones would move the AUC if they counted.
  scores = np.where(keep, scores, 1e6)
  dropped = skm.roc_auc_score(labels[keep], scores[keep], sample_weight=weights[keep])
  assert roc_auc(labels, scores, weights) == pytest.approx(dropped, rel=1e-12)


def test_roc_auc_zero_weights_leaving_one_class_raise():
  labels = np.array([0.0, 1.0, 1.0, 0.0])
  with pytest.raises(ValueError):
    roc_auc(labels, np.arange(4.0), np.array([0.0, 1.0, 1.0, 0.0]))


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_roc_auc_raises_value_error_for_a_single_class(label):
  with pytest.raises(ValueError, match="one class"):
    roc_auc(np.full(10, label), np.arange(10.0))


def test_log_loss_from_logits_equals_sklearn_log_loss_of_sigmoid():
  _, labels, logits = _labels_scores()  # Moderate logits (|z| < ~4): sklearn's clipping is inactive.
  expected = skm.log_loss(labels, 1.0 / (1.0 + np.exp(-logits)))
  assert log_loss_from_logits(labels, logits) == pytest.approx(expected, rel=1e-9)


def test_weighted_log_loss_from_logits_equals_sklearn_weighted_log_loss():
  rng, labels, logits = _labels_scores()
  weights = rng.uniform(0.0, 3.0, len(labels))
  weights[:100] = 0.0
  expected = skm.log_loss(labels, 1.0 / (1.0 + np.exp(-logits)), sample_weight=weights)
  assert log_loss_from_logits(labels, logits, weights) == pytest.approx(expected, rel=1e-9)


def test_log_loss_from_logits_is_finite_for_extreme_logits():
  labels = np.array([1.0, 0.0, 1.0, 0.0])
  logits = np.array([800.0, -800.0, -800.0, 800.0])
  # Oracle: for |z| large, softplus(z) - y z is exactly max(z, 0) - y z.
  expected = np.mean(np.maximum(logits, 0.0) - labels * logits)
  assert log_loss_from_logits(labels, logits) == pytest.approx(expected, rel=1e-12)


def test_normalized_entropy_is_log_loss_over_the_base_rate_entropy():
  from rankjax.metrics import normalized_entropy
  _, labels, scores = _labels_scores()
  weights = np.random.default_rng(3).integers(0, 3, labels.size).astype(np.float64)
  rate = np.sum(weights * labels) / weights.sum()
  entropy = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
  probs = 1 / (1 + np.exp(-scores))
  expect = skm.log_loss(labels, probs, sample_weight=weights) / entropy
  assert normalized_entropy(labels, scores, weights) == pytest.approx(expect, rel=1e-9)
  # Predicting the base rate everywhere scores exactly 1.
  base = np.full(labels.size, np.log(rate / (1 - rate)))
  assert normalized_entropy(labels, base, weights) == pytest.approx(1.0, rel=1e-9)


def test_calibration_and_reliability_table_compare_predicted_with_observed():
  from rankjax.metrics import calibration, reliability_table
  _, labels, scores = _labels_scores()
  probs = 1 / (1 + np.exp(-scores))
  assert calibration(labels, scores) == pytest.approx(probs.sum() / labels.sum(), rel=1e-12)
  assert calibration(labels, scores + 5.0) > 1.5  # Over-predicting.
  table = reliability_table(labels, scores, bins=5)
  assert sum(row["examples"] for row in table) == labels.size
  for row in table:
    inside = (probs >= row["bin_low"]) & ((probs < row["bin_high"]) | (row["bin_high"] == 1.0))
    assert row["examples"] == inside.sum()
    assert row["mean_prediction"] == pytest.approx(probs[inside].mean())
    assert row["observed_rate"] == pytest.approx(labels[inside].mean())
  with pytest.raises(ValueError):
    calibration(np.zeros(4), np.zeros(4))
