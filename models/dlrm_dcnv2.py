"""DLRM-DCNv2, the MLPerf Training recommendation model (torchrec's DLRM_DCN).

Bottom MLP on dense features, concatenated with the embedded features into x0, a low-rank DCNv2
cross network, then the top MLP to one logit per head. Embeddings arrive looked up and pooled.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.config import ConfigError
from rankjax.layers import MLP, LowRankCrossNet
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import dlrm

TASKS = dlrm.TASKS


def default_config() -> ml_collections.ConfigDict:
  """The MLPerf DLRM-DCNv2 sizes."""
  c = ml_collections.ConfigDict()
  c.embed_dim = 128
  c.bottom_mlp = (512, 256, 128)  # ReLU after every layer; last size must equal embed_dim.
  c.top_mlp = (1024, 1024, 512, 256, 1)  # Last layer linear; last size must be 1 (one logit).
  c.cross_layers = 3  # DCNv2 cross layers.
  c.cross_rank = 512  # Low rank r of each cross layer's W (in x r) V (r x in) factorisation.
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  dlrm.validate_config(config)
  m = config.model
  for key in ("cross_layers", "cross_rank"):
    if not m[key] > 0:
      raise ConfigError(f"model.{key}", f"must be > 0, got {m[key]}")


embedding_tables = dlrm.embedding_tables  # One table per categorical feature, as in DLRM.


class DLRMDCNv2(nnx.Module):
  """Bottom MLP -> [bottom output, embeddings] flattened -> low-rank cross net -> top MLP -> logits."""

  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    dlrm.check_embedding_dims(config, inputs)
    self.heads = inputs.heads
    cross_dim = (inputs.num_embedded_vectors + 1) * m.embed_dim
    self.bottom_mlp = MLP(inputs.num_dense, m.bottom_mlp, rngs=rngs, final_activation=True)
    self.cross_net = LowRankCrossNet(cross_dim, m.cross_layers, m.cross_rank, rngs=rngs)
    self.top_mlp = MLP(cross_dim, (*m.top_mlp[:-1], len(self.heads)), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    with jax.named_scope("bottom_mlp"):
      x_bd = self.bottom_mlp(inputs.dense)
    # Dense vector first, then the features in order (torchrec's InteractionDCNArch layout).
    x0_bi = jnp.concatenate([x_bd[:, None, :], inputs.embedded.stacked()], axis=1).reshape(x_bd.shape[0], -1)
    with jax.named_scope("cross_net"):
      x_bi = self.cross_net(x0_bi)
    with jax.named_scope("top_mlp"):
      logits_bh = self.top_mlp(x_bi)
    return {head: logits_bh[:, i] for i, head in enumerate(self.heads)}


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> DLRMDCNv2:
  return DLRMDCNv2(config, inputs, rngs=rngs)
