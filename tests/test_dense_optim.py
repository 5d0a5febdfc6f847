"""Tests for rankjax/dense_optim.py: the dense learning-rate schedules, decoupled weight decay and
gradient clipping against optax's references, and their config checks."""

import numpy as np
import optax
import pytest

from rankjax.config import ConfigError, base_config, validate
from rankjax.dense_optim import dense_optimizer, learning_rate_schedule


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.0, 0.5, 1.0, 2 / 3, 1 / 3, 0.0]),
    ("cosine", [0.0, 0.5, 1.0, 0.75, 0.25, 0.0]),
])
def test_warm_up_then_the_schedule_reaches_its_end_value_at_the_last_step(schedule, expected):
  lr = learning_rate_schedule(1.0, schedule, warmup_steps=2, total_steps=5)
  np.testing.assert_allclose([float(lr(s)) for s in range(6)], expected, atol=1e-6)


def test_the_optimizer_steps_with_the_scheduled_rate():
  tx = dense_optimizer("sgd", 0.1, "linear", warmup_steps=0, total_steps=2)
  params = {"w": np.ones(3, np.float32)}
  state = tx.init(params)
  sizes = []
  for _ in range(2):
    updates, state = tx.update({"w": np.ones(3, np.float32)}, state, params)
    sizes.append(float(-updates["w"][0]))
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(sizes, [0.1, 0.05], rtol=1e-6)


@pytest.mark.parametrize("key, value", [("lr_schedule", "step"), ("warmup_steps", -1), ("warmup_steps", 10_000),
                                        ("weight_decay", -0.1), ("grad_clip_norm", float("nan"))])
def test_bad_schedule_settings_name_the_key(key, value):
  config = base_config()
  config.train[key] = value
  with pytest.raises(ConfigError, match=f"train.{key}"):
    validate(config, 8)


def _run(tx, steps=4, seed=0):
  """Params after `steps` updates of `tx` with random gradients (kernel, bias), and the updates."""
  import jax
  rng = np.random.default_rng(seed)
  params = {"dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32), "bias": rng.normal(size=3).astype(np.float32)}}
  state = tx.init(params)
  for _ in range(steps):
    grads = jax.tree.map(lambda p: (3.0 * rng.normal(size=p.shape)).astype(np.float32), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize("name, clip, decay", [("adam", 0.0, 0.1), ("adam", 0.5, 0.0), ("adam", 0.5, 0.1),
                                               ("adagrad", 0.5, 0.1), ("sgd", 0.0, 0.1)])
def test_weight_decay_and_clipping_equal_optax_references(name, clip, decay):
  import jax
  kernels_only = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
  base = {"adam": lambda: optax.scale_by_adam(), "adagrad": lambda: optax.scale_by_rss(0.0, 1e-8),
          "sgd": lambda: optax.identity()}[name]()
  if name == "adam":  # optax's own AdamW where it has one.
    reference = optax.adamw(0.01, weight_decay=decay, mask=kernels_only)
  else:
    reference = optax.chain(base, optax.add_decayed_weights(decay, mask=kernels_only), optax.scale_by_learning_rate(0.01))
  if clip:
    reference = optax.chain(optax.clip_by_global_norm(clip), reference)
  ours, theirs = _run(dense_optimizer(name, 0.01, weight_decay=decay, clip_norm=clip)), _run(reference)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, theirs)
  plain = _run(dense_optimizer(name, 0.01))
  assert not np.allclose(ours["dense"]["kernel"], plain["dense"]["kernel"])
  if not clip:  # Decay leaves the bias alone: its updates are the plain optimizer's.
    np.testing.assert_allclose(ours["dense"]["bias"], plain["dense"]["bias"], rtol=1e-6)


def test_both_off_is_exactly_the_plain_optax_optimizer():
  tx = dense_optimizer("adam", 0.01)
  assert type(tx.init({"w": np.ones(2, np.float32)})) is type(optax.adam(0.01).init({"w": np.ones(2, np.float32)}))
