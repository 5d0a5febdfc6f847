"""Tests for rankjax/dense_optim.py: the dense learning-rate schedules and their config checks."""

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


@pytest.mark.parametrize("key, value", [("lr_schedule", "step"), ("warmup_steps", -1), ("warmup_steps", 10_000)])
def test_bad_schedule_settings_name_the_key(key, value):
  config = base_config()
  config.train[key] = value
  with pytest.raises(ConfigError, match=f"train.{key}"):
    validate(config, 8)
