"""Dense-parameter optimizers (optax) by name; embedding tables use rankjax.embedding.optimizers."""

from __future__ import annotations

from collections.abc import Callable

import jax
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


# Each optimizer's update direction before the learning rate (what DENSE_OPTIMIZERS chain with
# optax.scale_by_learning_rate), so weight decay can sit between them as in optax.adamw.
_DIRECTIONS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "adam": optax.scale_by_adam,
    "adagrad": lambda: optax.scale_by_rss(initial_accumulator_value=0.0, eps=1e-8),
    "sgd": optax.identity,
}


def decayed(params) -> object:
  """Which parameters weight decay applies to: kernels (2 or more dims), not biases or scales."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def dense_optimizer(name: str, learning_rate: float, schedule: str = "constant", warmup_steps: int = 0,
                    total_steps: int = 1, weight_decay: float = 0.0, clip_norm: float = 0.0
                    ) -> optax.GradientTransformation:
  """The optax optimizer `name` (a key of DENSE_OPTIMIZERS; config validation checks it) with the
  learning rate following `schedule` over the run (see learning_rate_schedule); with
  `clip_norm`, gradients clipped to that global norm first (optax.clip_by_global_norm); with
  `weight_decay`, decoupled decay of the kernels (AdamW-style: lr x weight_decay x w added to the
  update after the optimizer's scaling, as optax.adamw). Both off: exactly DENSE_OPTIMIZERS[name]."""
  rate = (learning_rate if schedule == "constant" and not warmup_steps
          else learning_rate_schedule(learning_rate, schedule, warmup_steps, total_steps))
  if not weight_decay and not clip_norm:
    return DENSE_OPTIMIZERS[name](rate)
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  parts.append(_DIRECTIONS[name]())
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask=decayed))
  return optax.chain(*parts, optax.scale_by_learning_rate(rate))
