"""DIN (Zhou et al. 2018, "Deep Interest Network for Click-Through Rate Prediction", KDD).

The user's behaviour sequence is pooled by target attention: a local activation unit (an MLP over
[history item, target, difference, product]) weighs each earlier item by its relevance to the
target item; the weights are not softmax-normalised (the paper's choice, so the sum keeps the
intensity of interest) and padding positions weigh nothing. The interest vector, the target, the
other features and the dense features feed an MLP with Dice activations.

Dice here gates with a learned centre and scale instead of batch statistics, so a prediction
never depends on the other examples of its batch (identical in training, eval and serving).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.layers import Droppable
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts, _sequence

TASKS = ("ctr", "multitask")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.attention_mlp = (36,)  # The local activation unit's hidden layers (Dice).
  c.deep_mlp = (200, 80)  # The prediction MLP's hidden layers (Dice).
  _sequence.add_config(c)
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim")
  _parts.check_sizes(config, "attention_mlp", "deep_mlp")
  _sequence.validate(config)


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  return _sequence.embedding_tables(config, vocab_sizes)


class Dice(nnx.Module):
  """x * p + alpha * x * (1 - p), p = sigmoid((x - centre) / scale), per unit."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.alpha = nnx.Param(jnp.zeros((dim,)))
    self.centre = nnx.Param(jnp.zeros((dim,)))
    self.log_scale = nnx.Param(jnp.zeros((dim,)))

  def __call__(self, x: jax.Array) -> jax.Array:
    p = jax.nn.sigmoid((x - self.centre[...]) * jnp.exp(-self.log_scale[...]))
    return x * p + self.alpha[...] * x * (1.0 - p)


class DiceMLP(nnx.Module, Droppable):
  """Linear layers with Dice between them, then a linear output layer; dropout (train.dropout)
  after each Dice."""

  def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, *, rngs: nnx.Rngs):
    sizes = [in_dim, *hidden]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.activations = nnx.List([Dice(b, rngs=rngs) for b in hidden])
    self.out = nnx.Linear(sizes[-1], out_dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, (layer, activation) in enumerate(zip(self.layers, self.activations)):
      x = self.drop(activation(layer(x)), i)
    return self.out(x)


class DIN(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    self.others = _sequence.check_inputs(config, inputs)
    self.config, self.heads, self.use_history = config, inputs.heads, m.use_history
    d = m.embed_dim
    self.attention = DiceMLP(4 * d, m.attention_mlp, 1, rngs=rngs)
    in_dim = inputs.num_dense + len(self.others) * d + d * (2 if m.use_history else 1)
    self.deep = DiceMLP(in_dim, m.deep_mlp, len(self.heads), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    target_bd, history_bhd, mask_bh = _sequence.target_and_history(self.config, inputs)
    parts = [_sequence.others_flat(inputs, self.others), target_bd]
    if self.use_history:
      with jax.named_scope("target_attention"):
        target_bhd = jnp.broadcast_to(target_bd[:, None], history_bhd.shape)
        unit_in = jnp.concatenate([history_bhd, target_bhd, history_bhd - target_bhd, history_bhd * target_bhd], -1)
        weight_bh = self.attention(unit_in)[..., 0] * mask_bh
        parts.append(jnp.einsum("bh,bhd->bd", weight_bh, history_bhd))
    with jax.named_scope("deep"):
      return _parts.outputs(self.heads, self.deep(jnp.concatenate(parts, axis=1)))


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> DIN:
  return DIN(config, inputs, rngs=rngs)
