"""Dense-parameter optimizers (optax) chosen by config; embedding tables use rankjax.optimizers."""

from __future__ import annotations

import optax

from rankjax.config import ConfigError


def dense_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
  if name == "adam":
    return optax.adam(learning_rate)
  if name == "sgd":
    return optax.sgd(learning_rate)
  if name == "adagrad":
    return optax.adagrad(learning_rate, initial_accumulator_value=0.0, eps=1e-8)
  raise ConfigError("train.dense_optimizer", f"unknown optimizer {name!r}")
