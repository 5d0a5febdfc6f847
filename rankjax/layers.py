"""Building blocks shared by the model zoo: MLP and the DLRM dot interaction."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class MLP(nnx.Module):
  """Dense layers with ReLU between them; the last layer is linear unless `final_activation`."""

  def __init__(self, in_dim: int, dims: Sequence[int], *, rngs: nnx.Rngs, final_activation: bool = False):
    sizes = [in_dim, *dims]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.final_activation = final_activation

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1 or self.final_activation:
        x = jax.nn.relu(x)
    return x


def dot_interaction(features_bfd: jax.Array) -> jax.Array:
  """Pairwise dot products of F feature vectors, strictly lower triangle: [B, F, D] -> [B, F(F-1)/2]."""
  with jax.named_scope("dot_interaction"):
    num_features = features_bfd.shape[1]
    gram_bff = jnp.einsum("bfd,bgd->bfg", features_bfd, features_bfd)
    rows, cols = np.tril_indices(num_features, k=-1)
    return gram_bff[:, rows, cols]
