"""MMoE (Ma et al. 2018, "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD).

Shared experts (MLPs) read the dense features and the embeddings; each task's softmax gate mixes
the experts' outputs for that task's tower, which gives its logit. Heads are the task's
(`task.heads`, e.g. click and conversion).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.layers import MLP
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts

TASKS = ("multitask", "ctr")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.num_experts = 4
  c.expert_mlp = (256, 128)  # Each expert (ReLU after every layer).
  c.tower_mlp = (64,)  # Each task's tower hidden layers; a linear layer gives its logit.
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim", "num_experts")
  _parts.check_sizes(config, "expert_mlp")
  _parts.check_sizes(config, "tower_mlp", allow_empty=True)


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  return _parts.feature_tables(config, vocab_sizes)


class Experts(nnx.Module):
  """`num` expert MLPs on one input: [B, in] -> [B, num, out]."""

  def __init__(self, in_dim: int, num: int, sizes: Sequence[int], *, rngs: nnx.Rngs):
    self.experts = nnx.List([MLP(in_dim, sizes, rngs=rngs, final_activation=True) for _ in range(num)])

  def __call__(self, x_bi: jax.Array) -> jax.Array:
    return jnp.stack([expert(x_bi) for expert in self.experts], axis=1)


def mix(gate: nnx.Linear, x_bi: jax.Array, experts_bed: jax.Array) -> jax.Array:
  """softmax(gate(x)) over the experts, their outputs weighted: [B, E, D] -> [B, D]."""
  return jnp.einsum("be,bed->bd", jax.nn.softmax(gate(x_bi), axis=-1), experts_bed)


class MMoE(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    _parts.check_field_dim(config, inputs)
    self.heads, self.dim = inputs.heads, m.embed_dim
    in_dim = _parts.flat_input_dim(inputs, m.embed_dim)
    self.experts = Experts(in_dim, m.num_experts, m.expert_mlp, rngs=rngs)
    self.gates = nnx.List([nnx.Linear(in_dim, m.num_experts, rngs=rngs) for _ in self.heads])
    self.towers = nnx.List([MLP(m.expert_mlp[-1], (*m.tower_mlp, 1), rngs=rngs) for _ in self.heads])

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    x_bi = _parts.flat_input(inputs, self.dim)
    with jax.named_scope("experts"):
      experts_bed = self.experts(x_bi)
    outputs = {}
    for head, gate, tower in zip(self.heads, self.gates, self.towers):
      with jax.named_scope(f"tower_{head}"):
        outputs[head] = tower(mix(gate, x_bi, experts_bed))[:, 0]
    return outputs


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> MMoE:
  return MMoE(config, inputs, rngs=rngs)
