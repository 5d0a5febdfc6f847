"""Training losses by name: binary cross-entropy for click heads, and learning-to-rank losses over
batches of query lists (listwise softmax cross-entropy, its Poly-1 form, ListMLE and ApproxNDCG, pairwise logistic and hinge,
LambdaLoss with NDCG@k weights,
pointwise sigmoid and squared error), whose scores, relevance and mask are [batch, list] with mask
0 marking padding. Each ranking loss gives (sum, count), so eval can stream it; training uses the
mean, which equals rax's loss of the same name."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def binary_cross_entropy(logits_b: jax.Array, labels_b: jax.Array) -> jax.Array:
  """Mean sigmoid cross-entropy of logits against 0/1 labels."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits_b, labels_b))


def _log_softmax_over_documents(scores_bl: jax.Array, valid_bl: jax.Array) -> jax.Array:
  """log p of each document under the softmax of its list's scores, padding taking no part."""
  # A finite fill (not -inf) keeps an all-padding list free of NaN in the backward pass.
  return jax.nn.log_softmax(jnp.where(valid_bl, scores_bl, jnp.finfo(scores_bl.dtype).min), axis=-1)


def softmax_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """Softmax cross-entropy, as rax.softmax_loss: -sum_i rel_i log p_i per list, p the softmax of
  the list's scores over its documents (so a list weighs by its total relevance, and a list
  without a relevant document adds 0): (sum, count of lists with a document)."""
  valid_bl = mask_bl > 0
  log_p_bl = _log_softmax_over_documents(scores_bl, valid_bl)
  loss_b = -jnp.sum(jnp.where(valid_bl, relevance_bl * log_p_bl, 0.0), axis=-1)
  lists_b = valid_bl.any(axis=-1)
  return jnp.sum(jnp.where(lists_b, loss_b, 0.0)), lists_b.sum().astype(loss_b.dtype)


def poly1_softmax_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array,
                             epsilon: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """PolyLoss (Leng et al. 2022) on the softmax loss, as rax.poly1_softmax_loss: the softmax loss
  plus epsilon * (1 - p_t), p_t the softmax probability mass on the list's relevance normalised to
  a distribution (uniform over the documents of a list without a relevant one): (sum, count of
  lists with a document)."""
  valid_bl = mask_bl > 0
  log_p_bl = _log_softmax_over_documents(scores_bl, valid_bl)
  labels_bl = jnp.where(valid_bl, relevance_bl, 0.0)
  total_b1 = labels_bl.sum(axis=-1, keepdims=True)
  documents_b1 = jnp.maximum(valid_bl.sum(axis=-1, keepdims=True), 1).astype(labels_bl.dtype)
  target_bl = jnp.where(total_b1 != 0, labels_bl / jnp.where(total_b1 != 0, total_b1, 1.0), 1.0 / documents_b1)
  p_t_b = jnp.sum(jnp.where(valid_bl, target_bl * jnp.exp(log_p_bl), 0.0), axis=-1)
  loss_b = -jnp.sum(jnp.where(valid_bl, labels_bl * log_p_bl, 0.0), axis=-1) + epsilon * (1.0 - p_t_b)
  lists_b = valid_bl.any(axis=-1)
  return jnp.sum(jnp.where(lists_b, loss_b, 0.0)), lists_b.sum().astype(loss_b.dtype)


def pairwise_logistic_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array
                                 ) -> tuple[jax.Array, jax.Array]:
  """RankNet: log(1 + exp(-(s_i - s_j))) over every pair of documents (i, j) of a list with
  rel_i > rel_j: (sum, count of such pairs) over the batch."""
  valid_bl = mask_bl > 0
  diff_bll = scores_bl[:, :, None] - scores_bl[:, None, :]
  pairs_bll = (relevance_bl[:, :, None] > relevance_bl[:, None, :]) & valid_bl[:, :, None] & valid_bl[:, None, :]
  total = jnp.sum(jnp.where(pairs_bll, jax.nn.softplus(-diff_bll), 0.0))
  return total, pairs_bll.sum().astype(total.dtype)


def pairwise_hinge_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array
                              ) -> tuple[jax.Array, jax.Array]:
  """max(0, 1 - (s_i - s_j)) over every pair of documents (i, j) of a list with rel_i > rel_j:
  (sum, count of such pairs) over the batch."""
  valid_bl = mask_bl > 0
  diff_bll = scores_bl[:, :, None] - scores_bl[:, None, :]
  pairs_bll = (relevance_bl[:, :, None] > relevance_bl[:, None, :]) & valid_bl[:, :, None] & valid_bl[:, None, :]
  total = jnp.sum(jnp.where(pairs_bll, jax.nn.relu(1.0 - diff_bll), 0.0))
  return total, pairs_bll.sum().astype(total.dtype)


def sigmoid_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """Pointwise sigmoid cross-entropy of each document's score against its relevance clipped to
  [0, 1]: (sum, count) over the batch's real documents."""
  valid_bl = mask_bl > 0
  loss_bl = optax.sigmoid_binary_cross_entropy(scores_bl, jnp.clip(relevance_bl, 0.0, 1.0))
  return jnp.sum(jnp.where(valid_bl, loss_bl, 0.0)), valid_bl.sum().astype(scores_bl.dtype)


def mse_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pointwise squared error of each document's score against its relevance: (sum, count) over
  the batch's real documents."""
  valid_bl = mask_bl > 0
  return (jnp.sum(jnp.where(valid_bl, jnp.square(scores_bl - relevance_bl), 0.0)),
          valid_bl.sum().astype(scores_bl.dtype))


def listmle_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """ListMLE (Xia et al. 2008): the negative log-likelihood of the list's order by relevance
  (ties: the earlier position first) under the Plackett-Luce model of the scores, padding left
  out: (sum, count) over lists with a document."""
  valid_bl = mask_bl > 0
  order_bl = jnp.argsort(jnp.where(valid_bl, -relevance_bl, jnp.inf), axis=1, stable=True)
  sorted_bl = jnp.take_along_axis(scores_bl, order_bl, axis=1)
  sorted_valid_bl = jnp.take_along_axis(valid_bl, order_bl, axis=1)
  # log sum_{j >= i, valid} exp(s_j): a reversed cumulative logsumexp; padding adds exp(-inf) = 0.
  masked_bl = jnp.where(sorted_valid_bl, sorted_bl, -jnp.inf)
  suffix_lse_bl = jax.lax.cumlogsumexp(masked_bl, axis=1, reverse=True)
  loss_b = -jnp.sum(jnp.where(sorted_valid_bl, sorted_bl - suffix_lse_bl, 0.0), axis=1)
  lists_b = valid_bl.any(axis=1)
  return jnp.sum(jnp.where(lists_b, loss_b, 0.0)), lists_b.sum().astype(scores_bl.dtype)


def approx_ndcg_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array,
                          temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """ApproxNDCG (Qin et al. 2010), as rax.approx_t12n(rax.ndcg_metric): minus the NDCG of the
  whole list with each document's rank smoothed to 1 + sum_j sigmoid((s_j - s_i) / temperature)
  over the list's other documents; gain 2^rel - 1, discount 1 / log2(1 + rank), the ideal DCG
  exact: (sum, count of lists with a document)."""
  valid_bl = mask_bl > 0
  pairs_bll = valid_bl[:, :, None] & valid_bl[:, None, :] & ~jnp.eye(scores_bl.shape[1], dtype=bool)
  steps_bll = jax.nn.sigmoid((scores_bl[:, None, :] - scores_bl[:, :, None]) / temperature)  # [b, i, j]
  ranks_bl = 1.0 + jnp.sum(jnp.where(pairs_bll, steps_bll, 0.0), axis=-1)
  gains_bl = jnp.where(valid_bl, jnp.exp2(relevance_bl) - 1.0, 0.0)
  dcg_b = jnp.sum(gains_bl / jnp.log2(1.0 + ranks_bl), axis=-1)
  discounts_l = 1.0 / jnp.log2(jnp.arange(2, scores_bl.shape[1] + 2, dtype=scores_bl.dtype))
  ideal_b = jnp.sum(-jnp.sort(-gains_bl, axis=-1) * discounts_l, axis=-1)
  ndcg_b = dcg_b / jnp.where(ideal_b == 0.0, 1.0, ideal_b)
  lists_b = valid_bl.any(axis=-1)
  return -jnp.sum(jnp.where(lists_b, ndcg_b, 0.0)), lists_b.sum().astype(ndcg_b.dtype)


def lambda_ndcg_loss_terms(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array,
                           topn: int | None = 10, list_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """LambdaLoss with NDCG@topn weights (Burges 2006; Wang et al. 2018), as rax.pairwise_logistic_loss
  with lambdaweight_fn=rax.dcg_lambdaweight(normalize=True, topn=topn): the RankNet loss of each
  pair (i, j) of a list with rel_i > rel_j weighted by |g_i - g_j| / IDCG@topn x |D(r_i) - D(r_j)| x
  list size, gains 2^rel - 1, r the current rank by score (ties: the earlier position first;
  padding last), D(r) = 1 / log2(1 + r) for r <= topn else 0. The weights are constants of the
  step (no gradient through the ranks): (sum, count of such pairs). `list_size`: the list size of
  the weights (None: the padded width, rax's convention; the ranking task passes the dataset's
  stored width, so a batch cut to a shorter bucket width has the same loss)."""
  valid_bl = mask_bl > 0
  width = scores_bl.shape[1]
  list_size = width if list_size is None else list_size
  order_bl = jnp.argsort(jnp.where(valid_bl, -scores_bl, jnp.inf), axis=1, stable=True)
  ranks_bl = (jnp.argsort(order_bl, axis=1) + 1).astype(scores_bl.dtype)
  discounts_bl = 1.0 / jnp.log2(1.0 + ranks_bl)
  positions_l = jnp.arange(1, width + 1, dtype=scores_bl.dtype)
  if topn is not None:
    discounts_bl = jnp.where(ranks_bl <= topn, discounts_bl, 0.0)
  gains_bl = jnp.where(valid_bl, jnp.exp2(relevance_bl) - 1.0, 0.0)
  ideal_discounts_l = jnp.where(positions_l <= (topn or width), 1.0 / jnp.log2(1.0 + positions_l), 0.0)
  ideal_b1 = jnp.sum(-jnp.sort(-gains_bl, axis=-1) * ideal_discounts_l, axis=-1, keepdims=True)
  gains_bl = gains_bl / jnp.where(ideal_b1 == 0.0, 1.0, ideal_b1)
  weights_bll = (jnp.abs(gains_bl[:, :, None] - gains_bl[:, None, :])
                 * jnp.abs(discounts_bl[:, :, None] - discounts_bl[:, None, :]) * list_size)
  weights_bll = jax.lax.stop_gradient(weights_bll)
  diff_bll = scores_bl[:, :, None] - scores_bl[:, None, :]
  pairs_bll = (relevance_bl[:, :, None] > relevance_bl[:, None, :]) & valid_bl[:, :, None] & valid_bl[:, None, :]
  total = jnp.sum(jnp.where(pairs_bll, jax.nn.softplus(-diff_bll) * weights_bll, 0.0))
  return total, pairs_bll.sum().astype(total.dtype)


def mean_of(terms: tuple[jax.Array, jax.Array]) -> jax.Array:
  """sum / count of a loss's terms; 0 when nothing was counted."""
  total, count = terms
  return total / jnp.maximum(count, 1.0)


def softmax_loss(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
  """The mean softmax loss over the batch's lists with a document (softmax_loss_terms)."""
  return mean_of(softmax_loss_terms(scores_bl, relevance_bl, mask_bl))


def pairwise_logistic_loss(scores_bl: jax.Array, relevance_bl: jax.Array, mask_bl: jax.Array) -> jax.Array:
  """The mean RankNet loss over the batch's ordered pairs; 0 without any (pairwise_logistic_loss_terms)."""
  return mean_of(pairwise_logistic_loss_terms(scores_bl, relevance_bl, mask_bl))


# name -> (scores, relevance, mask) -> (sum, count): the mean trains, the terms stream over eval.
RANKING_LOSSES: dict[str, Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]] = {
    "softmax": softmax_loss_terms,
    "poly1_softmax": poly1_softmax_loss_terms,
    "pairwise_logistic": pairwise_logistic_loss_terms,
    "pairwise_hinge": pairwise_hinge_loss_terms,
    "listmle": listmle_loss_terms,
    "approx_ndcg": approx_ndcg_loss_terms,
    "lambda_ndcg": lambda_ndcg_loss_terms,  # Its topn is train.ndcg_k.
    "sigmoid": sigmoid_loss_terms,
    "mse": mse_loss_terms,
}

BINARY_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "bce": binary_cross_entropy,
}
