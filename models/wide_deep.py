"""Wide & Deep (Cheng et al. 2016, "Wide & Deep Learning for Recommender Systems", DLRS).

Wide: a linear model over the categorical ids (one weight per id), crossed features (each pair in
`crosses` hashed into `cross_buckets` weights per cross, rankjax.tasks.crossed_features) and the
dense features. Deep: an MLP over the dense features and the embeddings. Trained jointly; the
logit is their sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
from flax import nnx

from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.layers import MLP
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts
from rankjax.tasks.crossed_features import cross_name

TASKS = ("ctr", "multitask")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.deep_mlp = (256, 128)
  # Crossed feature pairs of the wide part; the default crosses neighbouring features of the
  # embedded synthetic data (a user lists the crosses their data calls for).
  c.crosses = tuple((f"cat_{i}", f"cat_{i + 1}") for i in range(0, 25))
  c.cross_buckets = 100_000  # Hash buckets (weights) per cross.
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim", "cross_buckets")
  _parts.check_sizes(config, "deep_mlp")


def crossed_features(config: ml_collections.ConfigDict) -> tuple[tuple[str, str], ...]:
  return tuple(tuple(pair) for pair in config.model.crosses)


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  """Per feature: its deep embedding and its wide weight; per cross: a table of wide weights."""
  crosses = [EmbeddingTableConfig(name=cross_name(pair), vocab_size=config.model.cross_buckets, dim=1,
                                  feature_names=(cross_name(pair),), initializer="zeros")
             for pair in crossed_features(config)]
  return _parts.feature_tables(config, vocab_sizes) + _parts.first_order_tables(vocab_sizes) + crosses


class WideDeep(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    _parts.check_field_dim(config, inputs, extra_dims=(1,))
    self.heads, self.dim = inputs.heads, m.embed_dim
    self.dense_linear = _parts.dense_linear(inputs, rngs=rngs)
    self.deep = MLP(_parts.flat_input_dim(inputs, m.embed_dim), (*m.deep_mlp, len(self.heads)), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    with jax.named_scope("wide"):
      wide_b = _parts.first_order(inputs, self.dense_linear)  # Ids, crosses and dense features.
    with jax.named_scope("deep"):
      deep_bh = self.deep(_parts.flat_input(inputs, self.dim))
    return _parts.outputs(self.heads, deep_bh + wide_b[:, None])


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> WideDeep:
  return WideDeep(config, inputs, rngs=rngs)
