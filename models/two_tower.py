"""Two-tower retrieval (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", RecSys 2019; Covington et al., "Deep Neural Networks for YouTube
Recommendations", RecSys 2016): a query tower and an item tower, each an MLP over the
concatenated embeddings of its own features, meet in a dot product (or cosine) scaled by a
learned temperature. The task (rankjax.tasks.retrieval) trains it with in-batch negatives and
the log-Q correction and scores the whole corpus at eval.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.config import ConfigError
from rankjax.layers import MLP
from rankjax.model_inputs import InputSpec, ModelInputs

TASKS = ("retrieval",)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 32  # Every feature's embedding dim.
  c.tower = (128, 64)  # Hidden sizes of each tower; the last is the output vector's size.
  c.similarity = "cosine"  # cosine | dot
  c.initial_temperature = 0.1  # Scores are similarity / temperature; learned (in log space).
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  m = config.model
  if not m.tower or any(d <= 0 for d in m.tower):
    raise ConfigError("model.tower", f"layer sizes must be > 0 (at least one), got {tuple(m.tower)}")
  if m.similarity not in ("cosine", "dot"):
    raise ConfigError("model.similarity", f"must be 'cosine' or 'dot', got {m.similarity!r}")
  if not m.initial_temperature > 0:
    raise ConfigError("model.initial_temperature", f"must be > 0, got {m.initial_temperature}")


class TwoTower(nnx.Module):
  """-> {"query": [B, D], "item": [B, D] (unit vectors for cosine), "temperature": []}."""

  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    by_name = {f.name: f for f in inputs.embedded}
    self.query_features, self.item_features = inputs.towers
    width = lambda names: sum(by_name[n].dim for n in names)  # noqa: E731
    self.query_tower = MLP(width(self.query_features), tuple(config.model.tower), rngs=rngs)
    self.item_tower = MLP(width(self.item_features), tuple(config.model.tower), rngs=rngs)
    self.cosine = config.model.similarity == "cosine"
    self.log_temperature = nnx.Param(jnp.log(jnp.asarray(config.model.initial_temperature, jnp.float32)))

  def _tower(self, mlp: MLP, inputs: ModelInputs, names: tuple[str, ...]) -> jax.Array:
    vector = mlp(jnp.concatenate([inputs.embedded[n] for n in names], axis=-1))
    if self.cosine:
      vector = vector * jax.lax.rsqrt(jnp.sum(jnp.square(vector), axis=-1, keepdims=True) + 1e-12)
    return vector

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    with jax.named_scope("query_tower"):
      query = self._tower(self.query_tower, inputs, self.query_features)
    with jax.named_scope("item_tower"):
      item = self._tower(self.item_tower, inputs, self.item_features)
    return {"query": query, "item": item, "temperature": jnp.exp(self.log_temperature[...])}


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> TwoTower:
  return TwoTower(config, inputs, rngs=rngs)
