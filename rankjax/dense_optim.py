"""Dense-parameter optimizers (optax) by name; embedding tables use rankjax.embedding.optimizers."""

from __future__ import annotations

from collections.abc import Callable

import optax

DENSE_OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adagrad": lambda lr: optax.adagrad(lr, initial_accumulator_value=0.0, eps=1e-8),
    "sgd": optax.sgd,
}


def dense_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
  """The optax optimizer `name` (a key of DENSE_OPTIMIZERS; config validation checks it)."""
  return DENSE_OPTIMIZERS[name](learning_rate)
