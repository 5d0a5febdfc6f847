"""Evaluation metrics on host arrays: weighted ROC AUC and log loss for binary tasks, NDCG@k
for ranked query lists.

Eval predictions are fetched once per evaluation, so these run in NumPy; a weight of 0 marks a
padding example.
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
