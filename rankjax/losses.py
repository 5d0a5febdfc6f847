"""Training losses by name: binary cross-entropy for click heads, and learning-to-rank losses over
batches of query lists (listwise softmax cross-entropy, pairwise logistic), whose scores,
relevance and mask are [batch, list] with mask 0 marking padding."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def binary_cross_entropy(logits_b: jax.Array, labels_b: jax.Array) -> jax.Array:
  """Mean sigmoid cross-entropy of logits against 0/1 labels."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits_b, labels_b))


def softmax_loss(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
  """ListNet softmax cross-entropy: a list's relevance, normalised to a distribution over its
  documents, against the softmax of its scores; padding takes no part. The mean is over lists
  with a relevant document: a list without one has no target distribution and is left out."""
  valid_bl = mask_bl > 0
  labels_bl = jnp.where(valid_bl, relevance_bl, 0.0)
  total_b1 = labels_bl.sum(axis=-1, keepdims=True)
  target_bl = labels_bl / jnp.where(total_b1 > 0, total_b1, 1.0)
  # A finite fill (not -inf) keeps an all-padding list free of NaN in the backward pass.
  log_p_bl = jax.nn.log_softmax(jnp.where(valid_bl, scores_bl, jnp.finfo(scores_bl.dtype).min), axis=-1)
  loss_b = -jnp.sum(jnp.where(valid_bl, target_bl * log_p_bl, 0.0), axis=-1)
  counted_b = (total_b1[:, 0] > 0).astype(loss_b.dtype)
  return jnp.sum(loss_b * counted_b) / jnp.maximum(counted_b.sum(), 1.0)


def pairwise_logistic_loss(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
  """RankNet: log(1 + exp(-(s_i - s_j))) averaged over every pair of documents (i, j) of a list
  with rel_i > rel_j, over the whole batch; 0 when the batch has no such pair."""
  valid_bl = mask_bl > 0
  diff_bll = scores_bl[:, :, None] - scores_bl[:, None, :]
  pairs_bll = (relevance_bl[:, :, None] > relevance_bl[:, None, :]) & valid_bl[:, :, None] & valid_bl[:, None, :]
  total = jnp.sum(jnp.where(pairs_bll, jax.nn.softplus(-diff_bll), 0.0))
  return total / jnp.maximum(pairs_bll.sum(), 1).astype(total.dtype)


RANKING_LOSSES: dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "softmax": softmax_loss,
    "pairwise_logistic": pairwise_logistic_loss,
}

BINARY_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "bce": binary_cross_entropy,
}
