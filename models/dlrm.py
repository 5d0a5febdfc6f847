"""DLRM (Naumov et al. 2019): bottom MLP on dense features, embeddings, dot interaction, top MLP.

Embedding rows arrive already gathered ([batch, feature, dim]); the tables live in the sparse
engine, so the gradient w.r.t. the rows is what the sparse optimizer consumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.config import ConfigError
from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.layers import MLP, dot_interaction


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.bottom_mlp = (64, 16)  # Last size must equal embed_dim (it joins the interaction).
  c.top_mlp = (128, 64, 1)  # Last size must be 1 (one logit).
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  """The DLRM family's checks (dlrm_dcnv2 reuses them): positive sizes, the bottom MLP ends at the
  embedding dim, the top MLP at one logit."""
  m = config.model
  if not m.embed_dim > 0:
    raise ConfigError("model.embed_dim", f"must be > 0, got {m.embed_dim}")
  for key in ("bottom_mlp", "top_mlp"):
    if not m[key] or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in m[key]):
      raise ConfigError(f"model.{key}", f"must be a non-empty tuple of positive ints, got {tuple(m[key])}")
  if m.bottom_mlp[-1] != m.embed_dim:
    raise ConfigError("model.bottom_mlp",
                      f"last size must equal model.embed_dim={m.embed_dim}, got {tuple(m.bottom_mlp)}")
  if m.top_mlp[-1] != 1:
    raise ConfigError("model.top_mlp", f"last size must be 1 (the logit), got {tuple(m.top_mlp)}")


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  """One table per categorical feature, named after it."""
  return [EmbeddingTableConfig(name=f"cat_{i}", vocab_size=int(v), dim=config.model.embed_dim,
                               feature_names=(f"cat_{i}",))
          for i, v in enumerate(vocab_sizes)]


class DLRM(nnx.Module):
  """Bottom MLP -> dot interaction with the embedded features -> top MLP -> logit."""

  def __init__(self, config: ml_collections.ConfigDict, num_dense: int, num_sparse: int, *, rngs: nnx.Rngs):
    m = config.model
    self.bottom_mlp = MLP(num_dense, m.bottom_mlp, rngs=rngs, final_activation=True)
    num_vectors = num_sparse + 1
    self.top_mlp = MLP(m.embed_dim + num_vectors * (num_vectors - 1) // 2, m.top_mlp, rngs=rngs)

  def __call__(self, dense_bd: jax.Array, emb_bfd: jax.Array) -> jax.Array:
    with jax.named_scope("bottom_mlp"):
      x_bd = self.bottom_mlp(dense_bd)
    pairs = dot_interaction(jnp.concatenate([x_bd[:, None, :], emb_bfd], axis=1))
    with jax.named_scope("top_mlp"):
      return self.top_mlp(jnp.concatenate([x_bd, pairs], axis=1))[:, 0]


def create(config: ml_collections.ConfigDict, num_dense: int, num_sparse: int, *, rngs: nnx.Rngs) -> DLRM:
  return DLRM(config, num_dense, num_sparse, rngs=rngs)
