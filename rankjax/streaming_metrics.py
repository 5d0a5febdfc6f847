"""Eval metrics accumulated on device, batch by batch, and reduced over the mesh.

An eval step adds a batch to fixed-size totals (replicated, so XLA sums each device's part with
one all-reduce of the totals, never of the logits); only the totals come to the host, once per
evaluation, where NumPy turns them into metrics. Counts are int32 (exact); float sums carry a
compensation term (TwoSum), so a float32 total over millions of examples keeps float64-like
accuracy without enabling x64.

AUC is computed from histograms of the logits of positives and negatives in `bins` equal-width
bins over [-LOGIT_RANGE, LOGIT_RANGE] (logits outside land in the end bins). Pairs of a positive
and a negative in one bin count one half (as tied scores do in the exact statistic), so the
binned AUC is exact when every bin holds one distinct score and is otherwise within
`auc_error_bound` = 0.5 * sum_b pos_b * neg_b / (P * N) of the exact AUC: the bound is reported
with every eval. GAUC (impression-weighted mean of each group's AUC, groups with both classes
only) uses per-group histograms, with its own bound.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LOGIT_RANGE = 16.0  # sigmoid(16) = 1 - 1.1e-7: beyond it float32 probabilities are 0 or 1 anyway.
RELIABILITY_BINS = 10  # Equal-width bins of the predicted probability for the reliability table.


# ---- Compensated float32 sums: (sum, compensation) pairs.

def sum_init(shape=()) -> dict[str, jax.Array]:
  return {"sum": jnp.zeros(shape, jnp.float32), "carry": jnp.zeros(shape, jnp.float32)}


def sum_add(total: dict[str, jax.Array], x: jax.Array) -> dict[str, jax.Array]:
  """total + x with the rounding error kept (Knuth's TwoSum)."""
  x = x.astype(jnp.float32)
  s = total["sum"] + x
  b = s - total["sum"]
  error = (total["sum"] - (s - b)) + (x - b)
  return {"sum": s, "carry": total["carry"] + error}


def sum_value(total: dict[str, np.ndarray]) -> np.ndarray:
  return np.asarray(total["sum"], np.float64) + np.asarray(total["carry"], np.float64)


def logit_bins(logits: jax.Array, bins: int) -> jax.Array:
  """The histogram bin of each logit (int32, in [0, bins))."""
  scaled = (logits.astype(jnp.float32) + LOGIT_RANGE) * (bins / (2.0 * LOGIT_RANGE))
  return jnp.clip(jnp.floor(scaled), 0, bins - 1).astype(jnp.int32)


# ---- Binary heads: AUC, log loss, NE, calibration, reliability table.

def binary_init(heads: int, bins: int) -> dict[str, Any]:
  zeros = lambda *shape: jnp.zeros(shape, jnp.int32)  # noqa: E731
  return {"positives_hb": zeros(heads, bins), "negatives_hb": zeros(heads, bins),
          "logloss_h": sum_init((heads,)),
          "reliability_examples_hr": zeros(heads, RELIABILITY_BINS),
          "reliability_positives_hr": zeros(heads, RELIABILITY_BINS),
          "reliability_predicted_hr": sum_init((heads, RELIABILITY_BINS))}


def _histogram(heads: int, bins: int, which_bh: jax.Array, values_bh: jax.Array, dtype=jnp.int32) -> jax.Array:
  """[heads, bins] sums of values_bh by (head, which_bh), in `dtype` (int32 counts by default)."""
  head_bh = jnp.broadcast_to(jnp.arange(heads)[None, :], which_bh.shape)
  return jnp.zeros((heads, bins), dtype).at[head_bh, which_bh].add(values_bh.astype(dtype))


def binary_update(totals: dict[str, Any], logits_bh: jax.Array, labels_bh: jax.Array,
                  real_b: jax.Array) -> dict[str, Any]:
  """Adds a batch: logits and 0/1 labels [B, heads]; real_b is False on padding examples."""
  heads, bins = totals["positives_hb"].shape
  logits_bh = logits_bh.astype(jnp.float32)
  real_bh = jnp.broadcast_to(real_b[:, None], logits_bh.shape)
  positive_bh = real_bh & (labels_bh > 0.5)
  negative_bh = real_bh & ~(labels_bh > 0.5)
  which_bh = logit_bins(logits_bh, bins)
  p_bh = jax.nn.sigmoid(logits_bh)
  logloss_bh = jnp.logaddexp(0.0, logits_bh) - labels_bh.astype(jnp.float32) * logits_bh
  reliability_bh = jnp.clip(jnp.floor(p_bh * RELIABILITY_BINS), 0, RELIABILITY_BINS - 1).astype(jnp.int32)
  real_f = real_bh.astype(jnp.float32)
  return {
      "positives_hb": totals["positives_hb"] + _histogram(heads, bins, which_bh, positive_bh),
      "negatives_hb": totals["negatives_hb"] + _histogram(heads, bins, which_bh, negative_bh),
      "logloss_h": sum_add(totals["logloss_h"], jnp.sum(logloss_bh * real_f, axis=0)),
      "reliability_examples_hr": totals["reliability_examples_hr"]
      + _histogram(heads, RELIABILITY_BINS, reliability_bh, real_bh),
      "reliability_positives_hr": totals["reliability_positives_hr"]
      + _histogram(heads, RELIABILITY_BINS, reliability_bh, positive_bh),
      "reliability_predicted_hr": sum_add(totals["reliability_predicted_hr"], _histogram(
          heads, RELIABILITY_BINS, reliability_bh, p_bh * real_f, jnp.float32)),
  }


def auc_from_histograms(positives_xb: np.ndarray, negatives_xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(AUC, error bound) per row of [..., bins] histograms (NaN where a row lacks a class)."""
  pos = np.asarray(positives_xb, np.float64)
  neg = np.asarray(negatives_xb, np.float64)
  pairs = pos.sum(-1) * neg.sum(-1)
  neg_below = np.cumsum(neg, axis=-1) - neg
  with np.errstate(invalid="ignore", divide="ignore"):
    auc = np.sum(pos * (neg_below + 0.5 * neg), axis=-1) / pairs
    bound = 0.5 * np.sum(pos * neg, axis=-1) / pairs
  return np.where(pairs > 0, auc, np.nan), np.where(pairs > 0, bound, np.nan)


def binary_metrics(totals: dict[str, Any]) -> list[dict[str, Any]]:
  """Per head: auc, auc_error_bound, logloss, ne, calibration, examples and the reliability table
  (NaN where a metric is undefined: one class only)."""
  positives_hb, negatives_hb = (np.asarray(totals[k], np.int64) for k in ("positives_hb", "negatives_hb"))
  auc_h, bound_h = auc_from_histograms(positives_hb, negatives_hb)
  positives_h, examples_h = positives_hb.sum(-1), positives_hb.sum(-1) + negatives_hb.sum(-1)
  logloss_h = sum_value(totals["logloss_h"]) / np.maximum(examples_h, 1)
  rate_h = positives_h / np.maximum(examples_h, 1)
  with np.errstate(invalid="ignore", divide="ignore"):
    entropy_h = -(rate_h * np.log(rate_h) + (1 - rate_h) * np.log1p(-rate_h))
    ne_h = np.where((rate_h > 0) & (rate_h < 1), logloss_h / entropy_h, np.nan)
  reliability = (np.asarray(totals["reliability_examples_hr"], np.int64),
                 np.asarray(totals["reliability_positives_hr"], np.int64),
                 sum_value(totals["reliability_predicted_hr"]))
  with np.errstate(invalid="ignore", divide="ignore"):  # Every example is in one reliability bin.
    calibration_h = np.where(positives_h > 0, reliability[2].sum(-1) / positives_h, np.nan)
  heads = []
  for h in range(positives_hb.shape[0]):
    examples_r, positives_r, predicted_r = (r[h] for r in reliability)
    table = [{"bin_low": r / RELIABILITY_BINS, "bin_high": (r + 1) / RELIABILITY_BINS,
              "examples": int(examples_r[r]), "mean_prediction": float(predicted_r[r] / examples_r[r]),
              "observed_rate": float(positives_r[r] / examples_r[r])}
             for r in range(RELIABILITY_BINS) if examples_r[r] > 0]
    heads.append({"auc": float(auc_h[h]), "auc_error_bound": float(bound_h[h]), "logloss": float(logloss_h[h]),
                  "ne": float(ne_h[h]), "calibration": float(calibration_h[h]), "examples": int(examples_h[h]),
                  "reliability": table})
  return heads


# ---- GAUC: per-group histograms.

def grouped_init(heads: int, groups: int, bins: int) -> dict[str, jax.Array]:
  return {"positives_hgb": jnp.zeros((heads, groups, bins), jnp.int32),
          "negatives_hgb": jnp.zeros((heads, groups, bins), jnp.int32)}


def grouped_update(totals: dict[str, jax.Array], logits_bh: jax.Array, labels_bh: jax.Array,
                   group_b: jax.Array, real_b: jax.Array) -> dict[str, jax.Array]:
  """Adds a batch to the per-group histograms; group_b < 0 (a missing id) counts nowhere."""
  heads, groups, bins = totals["positives_hgb"].shape
  real_bh = jnp.broadcast_to((real_b & (group_b >= 0))[:, None], logits_bh.shape)
  positive_bh = real_bh & (labels_bh > 0.5)
  which_bh = logit_bins(logits_bh, bins)
  head_bh = jnp.broadcast_to(jnp.arange(heads)[None, :], which_bh.shape)
  group_bh = jnp.broadcast_to(jnp.clip(group_b, 0, groups - 1)[:, None], which_bh.shape)
  add = lambda total, counts: total.at[head_bh, group_bh, which_bh].add(counts.astype(jnp.int32))  # noqa: E731
  return {"positives_hgb": add(totals["positives_hgb"], positive_bh),
          "negatives_hgb": add(totals["negatives_hgb"], real_bh & ~positive_bh)}


def grouped_metrics(totals: dict[str, Any]) -> list[dict[str, float]]:
  """Per head: gauc (groups weighted by their examples), gauc_error_bound and gauc_groups (the
  groups with both classes, the only ones counted)."""
  positives_hgb, negatives_hgb = (np.asarray(totals[k], np.int64) for k in ("positives_hgb", "negatives_hgb"))
  auc_hg, bound_hg = auc_from_histograms(positives_hgb, negatives_hgb)
  weight_hg = np.where(np.isnan(auc_hg), 0.0, (positives_hgb + negatives_hgb).sum(-1))
  heads = []
  for h in range(positives_hgb.shape[0]):
    total = weight_hg[h].sum()
    counted = weight_hg[h] > 0
    heads.append({
        "gauc": float(np.sum(weight_hg[h][counted] * auc_hg[h][counted]) / total) if total else float("nan"),
        "gauc_error_bound": float(np.sum(weight_hg[h][counted] * bound_hg[h][counted]) / total) if total
        else float("nan"),
        "gauc_groups": int(counted.sum())})
  return heads


# ---- Ranking: per-list metrics.

def ranking_per_list(relevance_bl: jax.Array, scores_bl: jax.Array, mask_bl: jax.Array,
                     cutoffs: tuple[int, ...]) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
  """Per list: ({"ndcg@k", "dcg@k", "precision@k", "recall@k" for k in cutoffs, "mrr", "map"} -> [B],
  has a relevant document [B] bool, has a document [B] bool), as rax's metrics compute them:
  documents ranked by descending score (ties: the earlier position first), padding (mask 0)
  neither ranked nor counted; gain 2^rel - 1 and discount 1 / log2(rank + 1) for (N)DCG; a
  document with relevance > 0 is relevant for MRR, MAP, precision and recall (LETOR grades are
  integers, so this is rax's `labels >= 1`); precision@k divides by the documents retrieved,
  min(k, list length). A list without a relevant document scores 0 on each."""
  valid_bl = mask_bl > 0
  relevance_bl = jnp.where(valid_bl, relevance_bl.astype(jnp.float32), 0.0)
  order_bl = jnp.argsort(jnp.where(valid_bl, -scores_bl.astype(jnp.float32), jnp.inf), axis=1, stable=True)
  sorted_relevance_bl = jnp.take_along_axis(relevance_bl, order_bl, axis=1)
  sorted_valid_bl = jnp.take_along_axis(valid_bl, order_bl, axis=1)
  relevant_bl = (sorted_relevance_bl > 0) & sorted_valid_bl
  ranks_l = jnp.arange(1, relevance_bl.shape[1] + 1, dtype=jnp.float32)
  gains_bl = jnp.exp2(sorted_relevance_bl) - 1.0
  ideal_gains_bl = -jnp.sort(-jnp.where(valid_bl, jnp.exp2(relevance_bl) - 1.0, 0.0), axis=1)
  discounts_l = 1.0 / jnp.log2(ranks_l + 1.0)
  num_relevant_b = relevant_bl.sum(axis=1).astype(jnp.float32)
  num_valid_b = sorted_valid_bl.sum(axis=1).astype(jnp.float32)
  hits_bl = jnp.cumsum(relevant_bl, axis=1).astype(jnp.float32)  # Relevant documents at rank <= r.
  metrics = {}
  for k in cutoffs:
    in_top_l = ranks_l <= k
    dcg_b = jnp.sum(gains_bl * discounts_l * in_top_l, axis=1)
    ideal_b = jnp.sum(ideal_gains_bl * discounts_l * in_top_l, axis=1)
    hits_b = jnp.sum(relevant_bl * in_top_l, axis=1).astype(jnp.float32)
    metrics[f"ndcg@{k}"] = jnp.where(ideal_b > 0, dcg_b / jnp.where(ideal_b > 0, ideal_b, 1.0), 0.0)
    metrics[f"dcg@{k}"] = dcg_b
    metrics[f"precision@{k}"] = hits_b / jnp.maximum(jnp.minimum(float(k), num_valid_b), 1.0)
    metrics[f"recall@{k}"] = hits_b / jnp.maximum(num_relevant_b, 1.0)
  first_rank_b = jnp.min(jnp.where(relevant_bl, ranks_l, jnp.inf), axis=1)
  metrics["mrr"] = jnp.where(jnp.isfinite(first_rank_b), 1.0 / first_rank_b, 0.0)
  metrics["map"] = jnp.sum(jnp.where(relevant_bl, hits_bl / ranks_l, 0.0), axis=1) / jnp.maximum(num_relevant_b, 1.0)
  return metrics, num_relevant_b > 0, num_valid_b > 0
