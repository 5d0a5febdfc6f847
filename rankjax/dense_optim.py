"""Dense-parameter optimizers (optax) by name; embedding tables use rankjax.embedding.optimizers."""

from __future__ import annotations

from collections.abc import Callable

import optax

DENSE_OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adagrad": lambda lr: optax.adagrad(lr, initial_accumulator_value=0.0, eps=1e-8),
    "sgd": optax.sgd,
}


LR_SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(learning_rate: float, schedule: str, warmup_steps: int, total_steps: int
                           ) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_steps`, then `schedule`: constant, or a cosine / linear
  decay to 0 at `total_steps`."""
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps) if warmup_steps else None
  decay_steps = max(total_steps - warmup_steps, 1)
  after = {"constant": optax.constant_schedule(learning_rate),
           "cosine": optax.cosine_decay_schedule(learning_rate, decay_steps),
           "linear": optax.linear_schedule(learning_rate, 0.0, decay_steps)}[schedule]
  return optax.join_schedules([warmup, after], [warmup_steps]) if warmup else after


def dense_optimizer(name: str, learning_rate: float, schedule: str = "constant", warmup_steps: int = 0,
                    total_steps: int = 1) -> optax.GradientTransformation:
  """The optax optimizer `name` (a key of DENSE_OPTIMIZERS; config validation checks it) with the
  learning rate following `schedule` over the run (see learning_rate_schedule)."""
  if schedule == "constant" and not warmup_steps:
    return DENSE_OPTIMIZERS[name](learning_rate)
  return DENSE_OPTIMIZERS[name](learning_rate_schedule(learning_rate, schedule, warmup_steps, total_steps))
