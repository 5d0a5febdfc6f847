"""Exact metrics on host arrays (NumPy): weighted ROC AUC, log loss, normalized entropy,
calibration, a reliability table and GAUC for binary tasks, NDCG@k for ranked query lists.

The trainer's eval streams on device (rankjax/streaming_metrics.py); these are the exact
references it is tested against, and what the synthetic generator reports its Bayes-optimal AUC
with. A weight of 0 marks a padding example.
"""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
  """Area under the ROC curve; tied scores count one half (the Mann-Whitney statistic)."""
  labels = np.asarray(labels, np.float64).ravel()
  scores = np.asarray(scores).ravel()
  weights = np.ones_like(labels) if weights is None else np.asarray(weights, np.float64).ravel()
  if np.any(weights < 0) or np.any(np.isnan(scores)):
    raise ValueError("AUC needs non-negative weights and scores without NaN")
  _, group = np.unique(scores, return_inverse=True)  # Tie groups in ascending score order.
  pos_g = np.bincount(group, weights=weights * labels)
  neg_g = np.bincount(group, weights=weights * (1.0 - labels))
  total_pos, total_neg = pos_g.sum(), neg_g.sum()
  if total_pos == 0 or total_neg == 0:
    raise ValueError("AUC is undefined with only one class present")
  neg_below = np.cumsum(neg_g) - neg_g
  return float(np.sum(pos_g * (neg_below + 0.5 * neg_g)) / (total_pos * total_neg))


def log_loss_from_logits(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray | None = None) -> float:
  """Weighted mean binary cross-entropy, computed stably from logits."""
  labels = np.asarray(labels, np.float64).ravel()
  logits = np.asarray(logits, np.float64).ravel()
  weights = np.ones_like(labels) if weights is None else np.asarray(weights, np.float64).ravel()
  if np.any(weights < 0) or not np.sum(weights) > 0:
    raise ValueError("log loss needs non-negative weights with a positive sum")
  per_example = np.logaddexp(0.0, logits) - labels * logits
  return float(np.sum(weights * per_example) / np.sum(weights))


def normalized_entropy(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray | None = None) -> float:
  """NE (He et al. 2014): log loss divided by the entropy of the (weighted) base rate, so 1.0 is
  what always predicting the average CTR scores and lower is better."""
  labels = np.asarray(labels, np.float64).ravel()
  weights = np.ones_like(labels) if weights is None else np.asarray(weights, np.float64).ravel()
  rate = float(np.sum(weights * labels) / np.sum(weights))
  if not 0.0 < rate < 1.0:
    raise ValueError("normalized entropy is undefined with only one class present")
  entropy = -(rate * np.log(rate) + (1.0 - rate) * np.log1p(-rate))
  return log_loss_from_logits(labels, logits, weights) / entropy


def calibration(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray | None = None) -> float:
  """Predicted / observed positives: sum of predicted probabilities over the sum of labels (1.0 = calibrated)."""
  labels = np.asarray(labels, np.float64).ravel()
  weights = np.ones_like(labels) if weights is None else np.asarray(weights, np.float64).ravel()
  observed = np.sum(weights * labels)
  if not observed > 0:
    raise ValueError("calibration is undefined without positive labels")
  predicted = np.sum(weights / (1.0 + np.exp(-np.asarray(logits, np.float64).ravel())))
  return float(predicted / observed)


def grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
  """(GAUC, groups counted): each group's AUC weighted by its examples, over the groups that hold
  both classes (the others have no AUC and are left out)."""
  labels, scores, groups = (np.asarray(a).ravel() for a in (labels, scores, groups))
  total, weight, counted = 0.0, 0.0, 0
  for g in np.unique(groups):
    in_group = groups == g
    if 0 < labels[in_group].sum() < in_group.sum():
      total += in_group.sum() * roc_auc(labels[in_group], scores[in_group])
      weight += in_group.sum()
      counted += 1
  if not counted:
    raise ValueError("GAUC is undefined: no group holds both classes")
  return total / weight, counted


def reliability_table(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray | None = None,
                      bins: int = 10) -> list[dict[str, float]]:
  """Calibration by predicted probability: per equal-width bin of [0, 1], the examples (weight),
  the mean prediction and the observed rate (empty bins left out)."""
  labels = np.asarray(labels, np.float64).ravel()
  weights = np.ones_like(labels) if weights is None else np.asarray(weights, np.float64).ravel()
  p = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64).ravel()))
  which = np.minimum((p * bins).astype(np.int64), bins - 1)
  count = np.bincount(which, weights=weights, minlength=bins)
  predicted = np.bincount(which, weights=weights * p, minlength=bins)
  observed = np.bincount(which, weights=weights * labels, minlength=bins)
  return [{"bin_low": b / bins, "bin_high": (b + 1) / bins, "examples": float(count[b]),
           "mean_prediction": float(predicted[b] / count[b]), "observed_rate": float(observed[b] / count[b])}
          for b in range(bins) if count[b] > 0]


def ndcg_at_k(relevance: np.ndarray, scores: np.ndarray, mask: np.ndarray, k: int) -> float:
  """Mean NDCG@k over query lists [lists, L]: gain 2^rel - 1, discount 1 / log2(rank + 1),
  documents ranked by descending score (ties: the earlier position first); padding (mask 0) is
  neither ranked nor counted, and a list of padding only is left out of the mean. A list with no
  relevant document has NDCG 0 and counts in the mean, as in rax.ndcg_metric."""
  relevance = np.asarray(relevance, np.float64)
  scores = np.asarray(scores, np.float64)
  valid = np.asarray(mask) > 0
  if np.any(np.isnan(scores[valid])):
    raise ValueError("NDCG needs scores without NaN")
  lists = valid.any(axis=1)
  if not lists.any():
    raise ValueError("NDCG needs at least one list with a document")
  gains = np.where(valid, np.exp2(relevance) - 1.0, 0.0)
  discounts = 1.0 / np.log2(np.arange(2, relevance.shape[1] + 2))
  discounts[k:] = 0.0
  order = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")
  dcg = (np.take_along_axis(gains, order, axis=1) * discounts).sum(axis=1)
  ideal = (-np.sort(-gains, axis=1) * discounts).sum(axis=1)
  ndcg = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)
  return float(ndcg[lists].mean())
