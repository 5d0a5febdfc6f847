"""A learning-to-rank scorer: an MLP maps each document's standardised features to one score;
a query list is scored document by document (no embedding tables)."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from flax import nnx

from rankjax.config import RANKING_LOSSES, ConfigError
from rankjax.layers import MLP

TASK = "ranking"  # Trained on LETOR query lists (rankjax.ltr_step), not on CTR examples.
STD_FLOOR = 1e-6  # A feature whose train std is below this is only centred, not scaled.


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.hidden = (256, 128)  # Hidden layer sizes; a final linear layer gives the score.
  c.normalize = True  # Standardise features with the train split's mean/std (manifest feature_stats).
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  if any(d <= 0 for d in config.model.hidden):
    raise ConfigError("model.hidden", f"layer sizes must be > 0, got {tuple(config.model.hidden)}")
  if config.train.loss not in RANKING_LOSSES:
    raise ConfigError("train.loss", f"model ltr_mlp ranks query lists: must be one of {RANKING_LOSSES}, "
                      f"got {config.train.loss!r}")


def feature_normalization(config: ml_collections.ConfigDict, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
  """(mean_n, std_n), float32 constants the step applies as (x - mean) / std before the model;
  (0, 1) with model.normalize off. They are data statistics, never trained."""
  num_features = manifest["num_features"]
  if not config.model.normalize:
    return np.zeros(num_features, np.float32), np.ones(num_features, np.float32)
  stats = manifest["feature_stats"]
  std = np.asarray(stats["std"], np.float64)
  return (np.asarray(stats["mean"], np.float32),
          np.where(std > STD_FLOOR, std, 1.0).astype(np.float32))


class LtrMLP(nnx.Module):
  """Features [batch, list, features] -> scores [batch, list], each document independently."""

  def __init__(self, config: ml_collections.ConfigDict, num_features: int, *, rngs: nnx.Rngs):
    self.mlp = MLP(num_features, (*config.model.hidden, 1), rngs=rngs)

  def __call__(self, features_bln: jax.Array) -> jax.Array:
    return self.mlp(features_bln)[..., 0]


def create(config: ml_collections.ConfigDict, num_features: int, *, rngs: nnx.Rngs) -> LtrMLP:
  return LtrMLP(config, num_features, rngs=rngs)
