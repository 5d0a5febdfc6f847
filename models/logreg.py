"""Logistic regression: one weight per categorical id plus a linear map of the dense features.

The zoo's baseline (every feature-interaction model must beat it on data with planted crosses):
no interactions, so it reaches only the main effects of the planted click model.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
from flax import nnx

from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts

TASKS = ("ctr", "multitask")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 1  # The first-order weights are dim-1 tables (unused otherwise; kept for the CLI's plan).
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim")


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  return _parts.first_order_tables(vocab_sizes)


class LogisticRegression(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    self.heads = inputs.heads
    self.dense_linear = _parts.dense_linear(inputs, rngs=rngs)
    self.bias_h = nnx.Param(nnx.initializers.zeros(rngs.params(), (len(self.heads),)))

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    with jax.named_scope("linear"):
      logit_b = _parts.first_order(inputs, self.dense_linear)
    return _parts.outputs(self.heads, logit_b[:, None] + self.bias_h[...])


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> LogisticRegression:
  return LogisticRegression(config, inputs, rngs=rngs)
