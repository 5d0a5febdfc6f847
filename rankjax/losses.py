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


def softmax_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """ListNet softmax cross-entropy: a list's relevance, normalised to a distribution over its
  documents, against the softmax of its scores; padding takes no part. (sum, count) over lists
  with a relevant document: a list without one has no target distribution and is left out."""
  valid_bl = mask_bl > 0
  labels_bl = jnp.where(valid_bl, relevance_bl, 0.0)
  total_b1 = labels_bl.sum(axis=-1, keepdims=True)
  target_bl = labels_bl / jnp.where(total_b1 > 0, total_b1, 1.0)
  # A finite fill (not -inf) keeps an all-padding list free of NaN in the backward pass.
  log_p_bl = jax.nn.log_softmax(jnp.where(valid_bl, scores_bl, jnp.finfo(scores_bl.dtype).min), axis=-1)
  loss_b = -jnp.sum(jnp.where(valid_bl, target_bl * log_p_bl, 0.0), axis=-1)
  counted_b = (total_b1[:, 0] > 0).astype(loss_b.dtype)
  return jnp.sum(loss_b * counted_b), counted_b.sum()


def pairwise_logistic_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array
                                 ) -> tuple[jax.Array, jax.Array]:
  """RankNet: log(1 + exp(-(s_i - s_j))) over every pair of documents (i, j) of a list with
  rel_i > rel_j: (sum, count of such pairs) over the batch."""
  valid_bl = mask_bl > 0
  diff_bll = scores_bl[:, :, None] - scores_bl[:, None, :]
  pairs_bll = (relevance_bl[:, :, None] > relevance_bl[:, None, :]) & valid_bl[:, :, None] & valid_bl[:, None, :]
  total = jnp.sum(jnp.where(pairs_bll, jax.nn.softplus(-diff_bll), 0.0))
  return total, pairs_bll.sum().astype(total.dtype)


def mean_of(terms: tuple[jax.Array, jax.Array]) -> jax.Array:
  """sum / count of a loss's terms; 0 when nothing was counted."""
  total, count = terms
  return total / jnp.maximum(count, 1.0)


def softmax_loss(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
  """The mean ListNet loss over the batch's lists with a relevant document (softmax_loss_terms)."""
  return mean_of(softmax_loss_terms(scores_bl, relevance_bl, mask_bl))


def pairwise_logistic_loss(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
  """The mean RankNet loss over the batch's ordered pairs; 0 without any (pairwise_logistic_loss_terms)."""
  return mean_of(pairwise_logistic_loss_terms(scores_bl, relevance_bl, mask_bl))


# name -> (scores, relevance, mask) -> (sum, count): the mean trains, the terms stream over eval.
RANKING_LOSSES: dict[str, Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]] = {
    "softmax": softmax_loss_terms,
    "pairwise_logistic": pairwise_logistic_loss_terms,
}

BINARY_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "bce": binary_cross_entropy,
}
