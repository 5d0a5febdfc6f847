"""A learning-to-rank scorer: an MLP maps each document's (normalised) features to one score;
a query list is scored document by document (no embedding tables)."""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from rankjax.config import ConfigError
from rankjax.layers import MLP
from rankjax.model_inputs import InputSpec, ModelInputs

TASKS = ("ranking",)  # Trained on LETOR query lists (rankjax.tasks.ranking).


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.hidden = (256, 128)  # Hidden layer sizes; a final linear layer gives the score.
  # Lists with categorical columns (`rankjax data table --lists`): each feature's table dim; its
  # pooled embedding joins the document's dense features.
  c.embed_dim = 16
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  if any(d <= 0 for d in config.model.hidden):
    raise ConfigError("model.hidden", f"layer sizes must be > 0, got {tuple(config.model.hidden)}")


class LtrMLP(nnx.Module):
  """Documents [batch, list, features] -> {head: scores [batch, list]}, each document independently."""

  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    (self.head,) = inputs.heads
    self.mlp = MLP(inputs.num_document_features, (*config.model.hidden, 1), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    return {self.head: self.mlp(inputs.documents)[..., 0]}


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> LtrMLP:
  return LtrMLP(config, inputs, rngs=rngs)
