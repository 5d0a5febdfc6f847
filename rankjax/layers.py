"""Building blocks shared by the model zoo: MLP, the DLRM dot interaction, the DCNv2 cross network,
the transformer block (BST, the listwise ranking scorer)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Droppable:
  """A module with dropout after its hidden activations: rate `dropout` (set_dropout), drawn only
  when the call has a key (seed_dropout: train steps); without one (eval, serving) deterministic."""

  dropout: float = 0.0

  def drop(self, x: jax.Array, index: int) -> jax.Array:
    """Inverted dropout of activation `index`: kept with probability 1 - rate, scaled by 1 / (1 - rate)."""
    key = getattr(self, "dropout_key", None)  # Set by seed_dropout on a merged model.
    if not self.dropout or key is None:
      return x
    keep = jax.random.bernoulli(jax.random.fold_in(key, index), 1.0 - self.dropout, x.shape)
    return jnp.where(keep, x / (1.0 - self.dropout), jnp.zeros_like(x))


class MLP(nnx.Module, Droppable):
  """Dense layers with ReLU between them; the last layer is linear unless `final_activation`.
  Dropout (Droppable) follows every ReLU."""

  def __init__(self, in_dim: int, dims: Sequence[int], *, rngs: nnx.Rngs, final_activation: bool = False,
               dropout: float = 0.0):
    sizes = [in_dim, *dims]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.final_activation = final_activation
    self.dropout = dropout

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1 or self.final_activation:
        x = self.drop(jax.nn.relu(x), i)
    return x


def set_dropout(model: nnx.Module, rate: float) -> nnx.Module:
  """Sets the dropout rate of every Droppable module of `model` (train.dropout); returns the model."""
  for _, module in nnx.iter_modules(model):
    if isinstance(module, Droppable):
      module.dropout = rate
  return model


def seed_dropout(model: nnx.Module, key: jax.Array) -> None:
  """Gives every Droppable module of `model` with dropout its own key for this call (fold_in of its index)."""
  for index, (_, module) in enumerate(nnx.iter_modules(model)):
    if isinstance(module, Droppable) and module.dropout:
      module.dropout_key = jax.random.fold_in(key, index)


def dot_interaction(features_bfd: jax.Array) -> jax.Array:
  """Pairwise dot products of F feature vectors, strictly lower triangle: [B, F, D] -> [B, F(F-1)/2]."""
  with jax.named_scope("dot_interaction"):
    return _lower_gram(features_bfd)


def _pairs(num_features: int) -> tuple[np.ndarray, np.ndarray]:
  """(flat position in [F, F] of each lower pair [P], pair index of each flat position or P [F*F])."""
  rows, cols = np.tril_indices(num_features, k=-1)
  flat = rows * num_features + cols
  pair_of = np.full(num_features * num_features, flat.size, np.int32)
  pair_of[flat] = np.arange(flat.size, dtype=np.int32)
  return flat, pair_of


@jax.custom_vjp
def _lower_gram(x_bfd: jax.Array) -> jax.Array:
  batch, num_features = x_bfd.shape[:2]
  gram_bff = jnp.einsum("bfd,bgd->bfg", x_bfd, x_bfd)
  # One gather along the flattened pair axis: 30% faster fwd+bwd on CPU than a 2-D fancy index.
  return jnp.take(gram_bff.reshape(batch, num_features * num_features), _pairs(num_features)[0], axis=1)


def _lower_gram_fwd(x_bfd):
  return _lower_gram(x_bfd), x_bfd


def _lower_gram_bwd(x_bfd, g_bp):
  """The cotangent of x: (G + G^T) x with G the pairs' cotangents placed in [F, F] by a gather
  (no scatter-add), one batched product instead of autodiff's two."""
  batch, num_features = x_bfd.shape[:2]
  padded = jnp.concatenate([g_bp, jnp.zeros((batch, 1), g_bp.dtype)], axis=1)
  g_bff = jnp.take(padded, _pairs(num_features)[1], axis=1).reshape(batch, num_features, num_features)
  return (jnp.einsum("bfg,bgd->bfd", g_bff + jnp.swapaxes(g_bff, 1, 2), x_bfd).astype(x_bfd.dtype),)


_lower_gram.defvjp(_lower_gram_fwd, _lower_gram_bwd)


class LowRankCrossNet(nnx.Module):
  """DCNv2 cross network with low-rank weights (torchrec's LowRankCrossNet).

  Layer l: x_{l+1} = x_0 * (W_l (V_l x_l) + b_l) + x_l, with V_l: in -> rank (no bias) and
  W_l: rank -> in (bias b_l, zero-initialised). Kernels use Glorot (Xavier) normal scaling, as
  torchrec's xavier_normal_ does (jax's draw is truncated; the variance is the same).
  """

  def __init__(self, in_dim: int, num_layers: int, rank: int, *, rngs: nnx.Rngs):
    xavier = nnx.initializers.glorot_normal()
    self.v_layers = nnx.List([nnx.Linear(in_dim, rank, use_bias=False, kernel_init=xavier, rngs=rngs)
                              for _ in range(num_layers)])
    self.w_layers = nnx.List([nnx.Linear(rank, in_dim, kernel_init=xavier, rngs=rngs)
                              for _ in range(num_layers)])

  def __call__(self, x0_bi: jax.Array) -> jax.Array:
    x_bi = x0_bi
    for v_layer, w_layer in zip(self.v_layers, self.w_layers):
      x_bi = x0_bi * w_layer(v_layer(x_bi)) + x_bi
    return x_bi


class FullCrossNet(nnx.Module):
  """DCNv2 cross network with full-rank weights: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l."""

  def __init__(self, in_dim: int, num_layers: int, *, rngs: nnx.Rngs):
    xavier = nnx.initializers.glorot_normal()
    self.layers = nnx.List([nnx.Linear(in_dim, in_dim, kernel_init=xavier, rngs=rngs) for _ in range(num_layers)])

  def __call__(self, x0_bi: jax.Array) -> jax.Array:
    x_bi = x0_bi
    for layer in self.layers:
      x_bi = x0_bi * layer(x_bi) + x_bi
    return x_bi


class MixtureCrossNet(nnx.Module):
  """DCNv2's mixture of low-rank experts (DCN-Mix, Wang et al. 2021, eq. 4).

  Expert k of layer l: E_k(x_l) = x_0 * (U_k tanh(C_k tanh(V_k^T x_l)) + b_l); a softmax gate over
  x_l weights the experts: x_{l+1} = sum_k g_k(x_l) E_k(x_l) + x_l.
  """

  def __init__(self, in_dim: int, num_layers: int, rank: int, num_experts: int, *, rngs: nnx.Rngs):
    xavier = nnx.initializers.glorot_normal(in_axis=-2, out_axis=-1, batch_axis=(0, 1))
    key = rngs.params
    self.v_lkir = nnx.Param(xavier(key(), (num_layers, num_experts, in_dim, rank)))
    self.c_lkrr = nnx.Param(xavier(key(), (num_layers, num_experts, rank, rank)))
    self.u_lkri = nnx.Param(xavier(key(), (num_layers, num_experts, rank, in_dim)))
    self.bias_li = nnx.Param(jnp.zeros((num_layers, in_dim)))
    self.gates = nnx.List([nnx.Linear(in_dim, num_experts, use_bias=False, rngs=rngs) for _ in range(num_layers)])

  def __call__(self, x0_bi: jax.Array) -> jax.Array:
    """The gate-weighted sum of the experts, sum_k g_k x_0 * (U_k h_k + b), is computed as
    x_0 * ([g_k h_k]_k U + b sum_k g_k): the experts' projections V_k and U_k stacked into one
    [in, experts * rank] and one [experts * rank, in] product, so no [B, experts, in] tensor is
    ever formed (on XLA:CPU its layout changes cost more than the products; BENCHMARKS.md)."""
    x_bi = x0_bi
    _, num_experts, in_dim, rank = self.v_lkir.shape
    for l, gate in enumerate(self.gates):
      v_ij = jnp.transpose(self.v_lkir[l], (1, 0, 2)).reshape(in_dim, num_experts * rank)
      low_bkr = jnp.tanh((x_bi @ v_ij).reshape(-1, num_experts, rank))
      low_bkr = jnp.tanh(jnp.einsum("bkr,krs->bks", low_bkr, self.c_lkrr[l]))
      weights_bk = jax.nn.softmax(gate(x_bi), axis=-1)
      mixed_bj = (weights_bk[:, :, None] * low_bkr).reshape(-1, num_experts * rank)
      projected_bi = mixed_bj @ self.u_lkri[l].reshape(num_experts * rank, in_dim)
      x_bi = x0_bi * (projected_bi + weights_bk.sum(axis=-1, keepdims=True) * self.bias_li[l]) + x_bi
    return x_bi


class DenseFields(nnx.Module):
  """Dense features as fields of the embedding dim: feature j's field is x_j * v_j (a learned
  vector per feature), so field-interaction models treat dense and categorical features alike."""

  def __init__(self, num_dense: int, dim: int, *, rngs: nnx.Rngs):
    self.vectors_nd = nnx.Param(nnx.initializers.normal(0.01)(rngs.params(), (num_dense, dim)))

  def __call__(self, dense_bn: jax.Array) -> jax.Array:
    return dense_bn[:, :, None] * self.vectors_nd[...].astype(dense_bn.dtype)


def factorization_machine(fields_bfd: jax.Array) -> jax.Array:
  """Sum of the pairwise dot products of F field vectors, 0.5 ((sum v)^2 - sum v^2): [B, F, D] -> [B]."""
  with jax.named_scope("factorization_machine"):
    square_of_sum = jnp.square(fields_bfd.sum(axis=1))
    sum_of_squares = jnp.square(fields_bfd).sum(axis=1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(axis=1)


class TransformerBlock(nnx.Module):
  """Post-norm transformer encoder block: multi-head self-attention over the real positions
  (padding is never attended to), residual + LayerNorm, a LeakyReLU feed-forward, residual +
  LayerNorm. Without position inputs it is permutation-equivariant."""

  def __init__(self, dim: int, num_heads: int, feed_forward_dim: int, *, rngs: nnx.Rngs):
    self.attention = nnx.MultiHeadAttention(num_heads, dim, decode=False, rngs=rngs)
    self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
    self.feed_forward = nnx.Linear(dim, feed_forward_dim, rngs=rngs)
    self.feed_back = nnx.Linear(feed_forward_dim, dim, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, rngs=rngs)

  def __call__(self, x_bld: jax.Array, mask_bl: jax.Array) -> jax.Array:
    attention_mask = mask_bl[:, None, None, :]  # Queries attend to real positions only.
    x_bld = self.norm1(x_bld + self.attention(x_bld, mask=attention_mask))
    ffn = self.feed_back(jax.nn.leaky_relu(self.feed_forward(x_bld)))
    return self.norm2(x_bld + ffn)
