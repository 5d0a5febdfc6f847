"""On a GPU: the sparse update (dedupe by stable sort + segmented scan, no atomics) is bitwise
repeatable and equals the CPU result; skipped on machines without a GPU backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.embedding import optimizers

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["sgd", "row_wise_adagrad", "adam"])
def test_sparse_update_on_gpu_is_bitwise_repeatable_and_matches_cpu(name):
  rng = np.random.default_rng(0)
  rows = rng.zipf(1.3, 200_000).astype(np.int32) % 5000  # many repeats: atomics would reorder sums
  grads = rng.normal(size=(200_000, 16)).astype(np.float32)
  table = rng.normal(size=(5000, 16)).astype(np.float32)
  opt = optimizers.make(name, learning_rate=0.1)

  def run(device):
    t = jax.device_put(table, device)
    state = jax.device_put(opt.init(5000, 16), device)
    update = jax.jit(opt.update)
    for step in range(1, 4):
      t, state = update(t, state, jax.device_put(rows, device), jax.device_put(grads, device), jnp.int32(step))
    return np.asarray(t)

  gpu = jax.devices("gpu")[0]
  first, second = run(gpu), run(gpu)
  np.testing.assert_array_equal(first, second)
  cpu = run(jax.devices("cpu")[0])
  if name != "sgd":
    np.testing.assert_allclose(first, cpu, rtol=1e-4, atol=1e-5)
    return
  # SGD is linear, so a float64 oracle is exact. A row's update sums thousands of gradients, and
  # summed in another order float32 differs by up to ~eps x the sum of their magnitudes (an element
  # that cancels to near 0 keeps that absolute error): both devices stay within that bound.
  oracle = table.astype(np.float64)
  magnitude = np.zeros_like(oracle)
  for _ in range(3):
    np.subtract.at(oracle, rows, 0.1 * grads.astype(np.float64))
    np.add.at(magnitude, rows, 0.1 * np.abs(grads.astype(np.float64)))
  bound = 8 * np.finfo(np.float32).eps * (magnitude + np.abs(oracle))
  for result in (first, cpu):
    assert np.all(np.abs(result - oracle) <= bound), np.max(np.abs(result - oracle) / np.maximum(bound, 1e-30))
