"""Row-wise Adagrad on touched rows equals a NumPy reference; untouched rows stay bit-identical."""

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import sparse_optim


def numpy_row_wise_adagrad(table, accum, rows, grads, lr, eps):
  table, accum = table.astype(np.float64).copy(), accum.astype(np.float64).copy()
  for r in np.unique(rows):
    g = grads[rows == r].astype(np.float64).sum(axis=0)
    accum[r] += np.mean(g * g)
    table[r] -= lr * g / (np.sqrt(accum[r]) + eps)
  return table, accum


def test_dedupe_sums_repeated_rows_in_ascending_order():
  rows = np.array([5, 1, 5, 3, 1, 5], np.int32)
  grads = np.arange(12, dtype=np.float32).reshape(6, 2)
  unique, summed = sparse_optim.dedupe(jnp.asarray(rows), jnp.asarray(grads), num_rows=8)
  expect_rows = np.unique(rows)
  np.testing.assert_array_equal(np.asarray(unique[:3]), expect_rows)
  np.testing.assert_array_equal(np.asarray(unique[3:]), 8)  # padding: out of bounds
  np.testing.assert_allclose(np.asarray(summed[:3]), [grads[rows == r].sum(0) for r in expect_rows])
  np.testing.assert_array_equal(np.asarray(summed[3:]), 0)


def test_row_wise_adagrad_matches_numpy_with_repeated_ids_over_steps():
  rng = np.random.default_rng(0)
  num_rows, dim, lr, eps = 50, 4, 0.1, 1e-8
  table = rng.normal(size=(num_rows, dim)).astype(np.float32)
  accum = np.full(num_rows, 0.1, np.float32)
  ref_table, ref_accum = table.astype(np.float64), accum.astype(np.float64)
  step = jax.jit(sparse_optim.row_wise_adagrad, static_argnums=(4, 5))
  t, a = jnp.asarray(table), jnp.asarray(accum)
  touched = np.zeros(num_rows, bool)
  for _ in range(5):
    rows = rng.integers(0, 20, size=64).astype(np.int32)  # rows 20.. never touched; many repeats
    grads = rng.normal(size=(64, dim)).astype(np.float32)
    touched[rows] = True
    t, a = step(t, a, jnp.asarray(rows), jnp.asarray(grads), lr, eps)
    ref_table, ref_accum = numpy_row_wise_adagrad(ref_table, ref_accum, rows, grads, lr, eps)
  np.testing.assert_allclose(np.asarray(t), ref_table, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(a), ref_accum, rtol=1e-5)
  # Untouched rows: bit-identical to the initial values.
  np.testing.assert_array_equal(np.asarray(t)[~touched], table[~touched])
  np.testing.assert_array_equal(np.asarray(a)[~touched], accum[~touched])
