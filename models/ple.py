"""PLE (Tang et al. 2020, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations", RecSys).

Levels of customized gate control (CGC): each task has its own experts and the tasks share some;
task t's gate mixes its own and the shared experts, a shared gate mixes all of them for the next
level. After the last level each task's tower gives its logit.
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
from rankjax.models.mmoe import Experts, mix

TASKS = ("multitask", "ctr")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.levels = 2  # Extraction levels (CGC layers).
  c.task_experts = 2  # Experts per task per level.
  c.shared_experts = 2  # Shared experts per level.
  c.expert_mlp = (128, 64)
  c.tower_mlp = (64,)
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim", "levels", "task_experts", "shared_experts")
  _parts.check_sizes(config, "expert_mlp")
  _parts.check_sizes(config, "tower_mlp", allow_empty=True)


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  return _parts.feature_tables(config, vocab_sizes)


class ExtractionLevel(nnx.Module):
  """One CGC level: per-task and shared experts, per-task gates (and a shared gate unless last)."""

  def __init__(self, in_dim: int, num_tasks: int, m: ml_collections.ConfigDict, last: bool, *, rngs: nnx.Rngs):
    self.task_experts = nnx.List([Experts(in_dim, m.task_experts, m.expert_mlp, rngs=rngs) for _ in range(num_tasks)])
    self.shared_experts = Experts(in_dim, m.shared_experts, m.expert_mlp, rngs=rngs)
    self.task_gates = nnx.List([nnx.Linear(in_dim, m.task_experts + m.shared_experts, rngs=rngs)
                                for _ in range(num_tasks)])
    total = num_tasks * m.task_experts + m.shared_experts
    self.shared_gate = None if last else nnx.Linear(in_dim, total, rngs=rngs)

  def __call__(self, task_x: list[jax.Array], shared_x: jax.Array) -> tuple[list[jax.Array], jax.Array | None]:
    shared_bed = self.shared_experts(shared_x)
    own = [experts(x) for experts, x in zip(self.task_experts, task_x)]
    task_out = [mix(gate, x, jnp.concatenate([own_bed, shared_bed], axis=1))
                for gate, x, own_bed in zip(self.task_gates, task_x, own)]
    shared_out = None
    if self.shared_gate is not None:
      shared_out = mix(self.shared_gate, shared_x, jnp.concatenate([*own, shared_bed], axis=1))
    return task_out, shared_out


class PLE(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    _parts.check_field_dim(config, inputs)
    self.heads, self.dim = inputs.heads, m.embed_dim
    in_dims = [_parts.flat_input_dim(inputs, m.embed_dim)] + [m.expert_mlp[-1]] * (m.levels - 1)
    self.levels = nnx.List([ExtractionLevel(d, len(self.heads), m, last=i == m.levels - 1, rngs=rngs)
                            for i, d in enumerate(in_dims)])
    self.towers = nnx.List([MLP(m.expert_mlp[-1], (*m.tower_mlp, 1), rngs=rngs) for _ in self.heads])

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    x_bi = _parts.flat_input(inputs, self.dim)
    task_x, shared_x = [x_bi] * len(self.heads), x_bi
    for i, level in enumerate(self.levels):
      with jax.named_scope(f"extraction_level_{i}"):
        task_x, shared_x = level(task_x, shared_x)
    outputs = {}
    for head, tower, x in zip(self.heads, self.towers, task_x):
      with jax.named_scope(f"tower_{head}"):
        outputs[head] = tower(x)[:, 0]
    return outputs


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> PLE:
  return PLE(config, inputs, rngs=rngs)
