"""DLRM (Naumov et al. 2019): bottom MLP on dense features, embeddings, dot interaction, top MLP.

Embedding vectors arrive already looked up and pooled (rankjax.model_inputs.KeyedEmbeddings);
the tables live in the sparse engine. One logit per head: the top MLP's last layer has one unit
per head (a shared-bottom multi-task model when the task has several).
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
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts

TASKS = ("ctr", "multitask")  # The tasks it serves; the first is its default.


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.bottom_mlp = (64, 16)  # Last size must equal embed_dim (it joins the interaction).
  c.top_mlp = (128, 64, 1)  # Last size must be 1 (one logit per head).
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
  return _parts.feature_tables(config, vocab_sizes)


def check_embedding_dims(config: ml_collections.ConfigDict, inputs: InputSpec) -> None:
  """Every embedded feature must have model.embed_dim (they join one interaction)."""
  if inputs.embedding_dims not in ((), (config.model.embed_dim,)):
    raise ConfigError("model.embed_dim", f"{config.model.name} interacts features of one dim, "
                      f"model.embed_dim={config.model.embed_dim}; the tables have dims {inputs.embedding_dims}")


class DLRM(nnx.Module):
  """Bottom MLP -> dot interaction with the embedded features -> top MLP -> one logit per head."""

  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    check_embedding_dims(config, inputs)
    self.heads = inputs.heads
    self.bottom_mlp = MLP(inputs.num_dense, m.bottom_mlp, rngs=rngs, final_activation=True)
    num_vectors = inputs.num_embedded_vectors + 1
    self.top_mlp = MLP(m.embed_dim + num_vectors * (num_vectors - 1) // 2, (*m.top_mlp[:-1], len(self.heads)),
                       rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    with jax.named_scope("bottom_mlp"):
      x_bd = self.bottom_mlp(inputs.dense)
    pairs = dot_interaction(jnp.concatenate([x_bd[:, None, :], inputs.embedded.stacked()], axis=1))
    with jax.named_scope("top_mlp"):
      logits_bh = self.top_mlp(jnp.concatenate([x_bd, pairs], axis=1))
    return {head: logits_bh[:, i] for i, head in enumerate(self.heads)}


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> DLRM:
  return DLRM(config, inputs, rngs=rngs)
