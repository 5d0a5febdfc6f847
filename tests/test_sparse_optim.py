"""Every sparse optimizer matches an independent NumPy float64 reference on the touched rows only.

Also: ids outside the table are ignored, untouched rows of the table and state stay bit-identical,
runs are bitwise reproducible, bf16 tables track f32 ones, and column shards equal one table.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.embedding import optimizers

NUM_ROWS, DIM, IDS_PER_STEP, NUM_STEPS = 64, 8, 48, 20
TOUCHABLE_ROWS = 40  # rows 40..63 are never looked up
# Ids that belong to no row. -1 and -64 would wrap to rows 63 and 0 if negative ids were indexed
# Python-style; row 63 is never touched, so a wrap shows up as a changed untouched row.
FOREIGN_IDS = np.array([-1, -64, -7, NUM_ROWS, NUM_ROWS + 1, 1000, 2**31 - 1], np.int32)

HPARAMS = {
    "sgd": {"learning_rate": 0.1},
    "adagrad": {"learning_rate": 0.1, "initial_accumulator": 0.1},
    "row_wise_adagrad": {"learning_rate": 0.1, "initial_accumulator": 0.1},
    "adam": {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.95},
    "ftrl": {"learning_rate": 0.5, "l1": 0.02, "l2": 0.1},
}
# FTRL's general-power branch (x ** -p rather than sqrt) gets its own case.
CASES = {**{name: (name, hparams) for name, hparams in HPARAMS.items()},
         "ftrl_power_0.7": ("ftrl", {"learning_rate": 0.5, "learning_rate_power": -0.7, "l1": 0.02,
                                     "l2": 0.1, "initial_accumulator": 0.2})}


# --- NumPy float64 references: one loop over the distinct rows of the table ---------------------

def numpy_sgd(w, state, g, step, learning_rate):
  return w - learning_rate * g, state


def numpy_adagrad(w, state, g, step, learning_rate, initial_accumulator, epsilon=1e-8):
  accum = state["accumulator"] + g ** 2
  return w - learning_rate * g / (np.sqrt(accum) + epsilon), {"accumulator": accum}


def numpy_row_wise_adagrad_row(w, state, g, step, learning_rate, initial_accumulator, epsilon=1e-8):
  accum = state["accumulator"] + np.mean(g ** 2)
  return w - learning_rate * g / (np.sqrt(accum) + epsilon), {"accumulator": accum}


def numpy_adam(w, state, g, step, learning_rate, beta1, beta2, epsilon=1e-8):
  m = beta1 * state["first_moment"] + (1 - beta1) * g
  v = beta2 * state["second_moment"] + (1 - beta2) * g ** 2
  lr_t = learning_rate * np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
  return w - lr_t * m / (np.sqrt(v) + epsilon), {"first_moment": m, "second_moment": v}


def numpy_ftrl(w, state, g, step, learning_rate, l1, l2, learning_rate_power=-0.5,
               initial_accumulator=0.1):
  n, z = state["accumulator"], state["linear"]
  new_n = n + g ** 2
  power = -learning_rate_power
  z = z + g - (new_n ** power - n ** power) / learning_rate * w
  new_w = np.zeros_like(w)
  for j in range(w.shape[0]):
    if abs(z[j]) > l1:
      new_w[j] = (np.sign(z[j]) * l1 - z[j]) / (new_n[j] ** power / learning_rate + 2 * l2)
  return new_w, {"accumulator": new_n, "linear": z}


NUMPY_ROW_UPDATES = {"sgd": numpy_sgd, "adagrad": numpy_adagrad,
                     "row_wise_adagrad": numpy_row_wise_adagrad_row, "adam": numpy_adam,
                     "ftrl": numpy_ftrl}


def numpy_step(name, hparams, table, state, rows, grads, step):
  table = table.copy()
  state = {key: value.copy() for key, value in state.items()}
  for r in np.unique(rows[(rows >= 0) & (rows < table.shape[0])]):
    g = grads[rows == r].astype(np.float64).sum(axis=0)
    new_w, new_state = NUMPY_ROW_UPDATES[name](
        table[r], {key: value[r] for key, value in state.items()}, g, step, **hparams)
    table[r] = new_w
    for key, value in new_state.items():
      state[key][r] = value
  return table, state


# --- Shared runs --------------------------------------------------------------------------------

def make_batches(seed=0):
  """NUM_STEPS (rows, grads) pairs: ids repeat within and across steps, some are foreign."""
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(NUM_STEPS):
    rows = rng.integers(0, TOUCHABLE_ROWS, size=IDS_PER_STEP).astype(np.int32)
    rows[rng.choice(IDS_PER_STEP, size=len(FOREIGN_IDS), replace=False)] = FOREIGN_IDS
    grads = rng.normal(size=(IDS_PER_STEP, DIM)).astype(np.float32)  # foreign ids too: nonzero
    batches.append((rows, grads))
  return batches


def initial_table():
  return np.random.default_rng(1).normal(size=(NUM_ROWS, DIM)).astype(np.float32)


@functools.cache
def jitted_update(case):
  name, hparams = CASES[case]
  return jax.jit(optimizers.make(name, **hparams).update)


def run(case, table_dtype=jnp.float32, num_steps=NUM_STEPS):
  """Runs the jitted optimizer over the batches; returns (table f32, state) as NumPy arrays."""
  name, hparams = CASES[case]
  table = jnp.asarray(initial_table(), table_dtype)
  state = optimizers.make(name, **hparams).init(NUM_ROWS, DIM)
  for step, (rows, grads) in enumerate(make_batches()[:num_steps], start=1):
    table, state = jitted_update(case)(table, state, jnp.asarray(rows), jnp.asarray(grads),
                                       jnp.int32(step))
  assert all(value.dtype == jnp.float32 for value in state.values())
  return np.asarray(table.astype(jnp.float32)), {key: np.asarray(v) for key, v in state.items()}


@functools.cache
def run_float32(case):
  return run(case)


def touched_rows():
  touched = np.zeros(NUM_ROWS, bool)
  for rows, _ in make_batches():
    touched[rows[(rows >= 0) & (rows < NUM_ROWS)]] = True
  return touched


# --- Tests --------------------------------------------------------------------------------------

def test_dedupe_sums_repeated_rows_in_ascending_order():
  rows = np.array([5, 1, 5, 3, 1, 5], np.int32)
  grads = np.arange(12, dtype=np.float32).reshape(6, 2)
  unique, summed = optimizers.dedupe(jnp.asarray(rows), jnp.asarray(grads), num_rows=8)
  expect_rows = np.unique(rows)
  np.testing.assert_array_equal(np.asarray(unique[:3]), expect_rows)
  np.testing.assert_array_equal(np.asarray(unique[3:]), 8)  # padding: out of bounds
  np.testing.assert_allclose(np.asarray(summed[:3]), [grads[rows == r].sum(0) for r in expect_rows])
  np.testing.assert_array_equal(np.asarray(summed[3:]), 0)


def test_dedupe_maps_foreign_ids_to_num_rows_with_zero_gradient():
  rows = np.array([2, -1, 8, 2, 100, -8], np.int32)
  grads = np.arange(12, dtype=np.float32).reshape(6, 2) + 1
  unique, summed = optimizers.dedupe(jnp.asarray(rows), jnp.asarray(grads), num_rows=8)
  np.testing.assert_array_equal(np.asarray(unique), [2, 8, 8, 8, 8, 8])
  np.testing.assert_array_equal(np.asarray(summed[0]), grads[0] + grads[3])
  np.testing.assert_array_equal(np.asarray(summed[1:]), 0)


def test_make_builds_every_name_with_float32_state_of_declared_shapes():
  for name in optimizers.NAMES:
    optimizer = optimizers.make(name, **HPARAMS[name])
    assert optimizer.name == name
    state = optimizer.init(NUM_ROWS, DIM)
    per_row = optimizer.state_is_per_row()
    assert set(state) == set(per_row)
    for key, value in state.items():
      assert value.dtype == jnp.float32
      assert value.shape == ((NUM_ROWS,) if per_row[key] else (NUM_ROWS, DIM))


def test_make_rejects_unknown_name():
  with pytest.raises(ValueError, match="unknown sparse optimizer"):
    optimizers.make("rmsprop", learning_rate=0.1)


@pytest.mark.parametrize("case", CASES)
def test_matches_numpy_reference_over_steps_with_repeated_and_foreign_ids(case):
  name, hparams = CASES[case]
  ref_table = initial_table().astype(np.float64)
  ref_state = {key: np.asarray(value, np.float64)
               for key, value in optimizers.make(name, **hparams).init(NUM_ROWS, DIM).items()}
  for step, (rows, grads) in enumerate(make_batches(), start=1):
    ref_table, ref_state = numpy_step(name, hparams, ref_table, ref_state, rows, grads, step)
  table, state = run_float32(case)
  np.testing.assert_allclose(table, ref_table, rtol=1e-5, atol=1e-6)
  for key in ref_state:
    np.testing.assert_allclose(state[key], ref_state[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_untouched_rows_of_table_and_state_stay_bit_identical(case):
  name, hparams = CASES[case]
  untouched = ~touched_rows()
  assert untouched[TOUCHABLE_ROWS:].all() and untouched.sum() == NUM_ROWS - TOUCHABLE_ROWS
  table, state = run_float32(case)
  np.testing.assert_array_equal(table[untouched], initial_table()[untouched])
  initial_state = optimizers.make(name, **hparams).init(NUM_ROWS, DIM)
  for key, value in state.items():
    np.testing.assert_array_equal(value[untouched], np.asarray(initial_state[key])[untouched],
                                  err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_two_identical_runs_are_bitwise_identical(case):
  first_table, first_state = run(case)
  second_table, second_state = run(case)
  np.testing.assert_array_equal(first_table, second_table)
  for key in first_state:
    np.testing.assert_array_equal(first_state[key], second_state[key], err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_bfloat16_table_tracks_float32_table_within_bf16_rounding(case):
  num_steps = 5
  # Start the float32 run from the same bf16-representable values, so only per-step rounding
  # differs: each step rounds every touched value once, by at most half a bf16 ulp (2**-9
  # relative); allow twice that per step, plus an absolute floor for values near zero.
  bf16_table, bf16_state = run(case, jnp.bfloat16, num_steps)
  name, hparams = CASES[case]
  table = jnp.asarray(initial_table(), jnp.bfloat16).astype(jnp.float32)
  state = optimizers.make(name, **hparams).init(NUM_ROWS, DIM)
  for step, (rows, grads) in enumerate(make_batches()[:num_steps], start=1):
    table, state = jitted_update(case)(table, state, jnp.asarray(rows), jnp.asarray(grads),
                                       jnp.int32(step))
  tolerance = num_steps * 2**-8
  np.testing.assert_allclose(bf16_table, np.asarray(table), rtol=tolerance, atol=tolerance * 0.1)
  # Only FTRL's linear term reads the table: it sums terms sigma * w, each off by up to a bf16
  # rounding of w, so its error is absolute, on the scale of the whole state array.
  for key, value in state.items():
    value = np.asarray(value)
    np.testing.assert_allclose(bf16_state[key], value, rtol=tolerance,
                               atol=tolerance * np.abs(value).max(), err_msg=key)


def test_sgd_on_bfloat16_table_sums_repeats_before_rounding():
  # 256 occurrences of row 0, each moving it by 2**-10: less than half a bf16 ulp of 1.0, so a
  # bf16 scatter-add would round every one away; summed first they move it by exactly 0.25.
  table = jnp.ones((4, 2), jnp.bfloat16)
  rows = jnp.zeros((256,), jnp.int32)
  grads = jnp.full((256, 2), 2.0**-10, jnp.float32)
  table, _ = jax.jit(optimizers.make("sgd", learning_rate=1.0).update)(table, {}, rows, grads, 1)
  np.testing.assert_array_equal(np.asarray(table.astype(jnp.float32)),
                                [[0.75, 0.75]] + [[1, 1]] * 3)


def test_row_wise_adagrad_on_two_column_shards_equals_unsharded_table():
  optimizer = optimizers.make("row_wise_adagrad", **HPARAMS["row_wise_adagrad"])
  half = DIM // 2

  @jax.jit
  def sharded_step(left_table, left_accum, right_table, right_accum, rows, grads, step):
    left_grads, right_grads = grads[:, :half], grads[:, half:]
    # What a psum across column shards returns: each shard's sum(g**2), in dedupe's row order.
    left_sum = jnp.sum(optimizers.dedupe(rows, left_grads, NUM_ROWS)[1] ** 2, axis=-1)
    right_sum = jnp.sum(optimizers.dedupe(rows, right_grads, NUM_ROWS)[1] ** 2, axis=-1)
    left_table, left_state = optimizer.update(
        left_table, {"accumulator": left_accum}, rows, left_grads, step,
        row_sum=lambda s: s + right_sum, full_dim=DIM)
    right_table, right_state = optimizer.update(
        right_table, {"accumulator": right_accum}, rows, right_grads, step,
        row_sum=lambda s: left_sum + s, full_dim=DIM)
    return left_table, left_state["accumulator"], right_table, right_state["accumulator"]

  table = jnp.asarray(initial_table())
  left_table, right_table = table[:, :half], table[:, half:]
  left_accum = right_accum = optimizer.init(NUM_ROWS, DIM)["accumulator"]
  for step, (rows, grads) in enumerate(make_batches(), start=1):
    left_table, left_accum, right_table, right_accum = sharded_step(
        left_table, left_accum, right_table, right_accum, jnp.asarray(rows), jnp.asarray(grads),
        jnp.int32(step))
  unsharded_table, unsharded_state = run_float32("row_wise_adagrad")
  np.testing.assert_array_equal(np.asarray(left_accum), np.asarray(right_accum))
  np.testing.assert_allclose(np.asarray(left_accum), unsharded_state["accumulator"], rtol=1e-6)
  np.testing.assert_allclose(np.concatenate([left_table, right_table], axis=1), unsharded_table,
                             rtol=1e-6, atol=1e-7)


def test_row_wise_adagrad_matches_numpy_when_few_rows_repeat_many_times():
  rng = np.random.default_rng(0)
  num_rows, dim, lr, eps = 50, 4, 0.1, 1e-8
  hparams = {"learning_rate": lr, "epsilon": eps, "initial_accumulator": 0.1}
  optimizer = optimizers.make("row_wise_adagrad", **hparams)
  table = rng.normal(size=(num_rows, dim)).astype(np.float32)
  accum = np.asarray(optimizer.init(num_rows, dim)["accumulator"])
  ref_table, ref_state = table.astype(np.float64), {"accumulator": accum.astype(np.float64)}
  update = jax.jit(optimizer.update)
  t, state = jnp.asarray(table), {"accumulator": jnp.asarray(accum)}
  touched = np.zeros(num_rows, bool)
  for step in range(1, 6):
    rows = rng.integers(0, 20, size=64).astype(np.int32)  # rows 20.. never touched; many repeats
    grads = rng.normal(size=(64, dim)).astype(np.float32)
    touched[rows] = True
    t, state = update(t, state, jnp.asarray(rows), jnp.asarray(grads), step)
    ref_table, ref_state = numpy_step("row_wise_adagrad", hparams, ref_table, ref_state, rows,
                                      grads, step)
  a = np.asarray(state["accumulator"])
  np.testing.assert_allclose(np.asarray(t), ref_table, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a, ref_state["accumulator"], rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(t)[~touched], table[~touched])
  np.testing.assert_array_equal(a[~touched], accum[~touched])


def test_scan_segment_sum_used_off_cpu_equals_segment_sum():
  rng = np.random.default_rng(3)
  rows = np.sort(rng.integers(0, 40, 300)).astype(np.int32)
  is_start = np.concatenate([[1], rows[1:] != rows[:-1]]).astype(np.int32)
  segment = np.cumsum(is_start) - 1
  values = rng.normal(size=(300, 4)).astype(np.float32)
  got = jax.jit(optimizers.segment_sum_by_scan)(jnp.asarray(values), jnp.asarray(segment), jnp.asarray(is_start))
  want = jax.ops.segment_sum(jnp.asarray(values), jnp.asarray(segment), num_segments=300)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_cpu_and_sorted_dedupe_paths_agree():
  rng = np.random.default_rng(5)
  rows = jnp.asarray(rng.integers(-3, 60, 500).astype(np.int32))
  grads = jnp.asarray(rng.normal(size=(500, 3)).astype(np.float32))
  clean = jnp.where((rows >= 0) & (rows < 50), rows, 50)
  u_cpu, s_cpu = jax.jit(optimizers._dedupe_cpu, static_argnums=2)(clean, grads, 50)
  u_sorted, s_sorted = jax.jit(optimizers._dedupe_sorted, static_argnums=2)(clean, grads, 50)
  np.testing.assert_array_equal(np.asarray(u_cpu), np.asarray(u_sorted))
  np.testing.assert_allclose(np.asarray(s_cpu), np.asarray(s_sorted), rtol=1e-5, atol=1e-6)
