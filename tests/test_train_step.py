"""One jitted train step on 8x1 and 4x2 meshes equals the single-device step."""

import jax
import numpy as np
import pytest

from rankjax import train as train_lib
from rankjax.data import pipeline

from helpers import assert_same_trained_state, tiny_config


def run_steps(config, workdir, devices, num_steps):
  exp = train_lib.build(config, workdir, devices)
  with jax.set_mesh(exp.partitioner.mesh):
    state = exp.init_fn(config.seed)
    it = pipeline.train_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size,
                                 num_batches=num_steps, seed=0, spec=exp.task.batch_spec)
    losses = []
    for batch in it:
      state, metrics = exp.train_fn(state, exp.partitioner.place_batch(batch))
      losses.append(float(metrics["loss"]))
    state = jax.device_get(state)
  return exp, state, losses


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
  config = tiny_config()
  config.mesh.shape = (1, 1)
  return run_steps(config, tmp_path_factory.mktemp("single"), jax.devices()[:1], 3)


def multi_hot_config(sharding):
  config = tiny_config()
  config.data.synthetic.hotness = (2, 1, 3, 1, 1, 2)
  config.embedding.sharding = sharding
  config.embedding.overrides = ("cat_2:combiner=mean", "cat_5:combiner=none")
  return config


@pytest.mark.parametrize("sharding", ["table_wise", "column_wise", "auto"])
def test_multi_hot_sharded_train_steps_equal_the_single_device_steps(sharding, tmp_path):
  ref_config = multi_hot_config(sharding)
  ref_config.mesh.shape = (1, 1)
  ref_exp, ref_state, ref_losses = run_steps(ref_config, tmp_path / "ref", jax.devices()[:1], 3)
  config = multi_hot_config(sharding)
  config.mesh.shape = (2, 4)
  exp, state, losses = run_steps(config, tmp_path / "mesh", jax.devices(), 3)
  assert exp.manifest["hotness"] == [2, 1, 3, 1, 1, 2]
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  tables, ref_tables = exp.task.engine.table_values(state.embedding), ref_exp.task.engine.table_values(ref_state.embedding)
  for name in ref_tables:
    np.testing.assert_allclose(tables[name], ref_tables[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(8, 1), (4, 2)])
def test_sharded_train_steps_equal_the_single_device_steps(single_device, shape, tmp_path):
  ref_exp, ref_state, ref_losses = single_device
  config = tiny_config()
  config.mesh.shape = shape
  exp, state, losses = run_steps(config, tmp_path, jax.devices(), 3)
  assert exp.partitioner.mesh.devices.shape == shape
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_same_trained_state(exp, state, ref_exp, ref_state)
  assert int(state.step) == 3


def test_tables_are_row_sharded_over_all_devices_and_batch_is_sharded(tmp_path):
  config = tiny_config()
  config.mesh.shape = (4, 2)
  exp = train_lib.build(config, tmp_path, jax.devices())
  (group,) = exp.task.engine.groups
  assert exp.state_shardings.embedding[group.name]["table"].spec[0] == ("data", "model")
  assert exp.partitioner.sharding("batch", None).spec[0] == ("data", "model")
  with jax.set_mesh(exp.partitioner.mesh):
    state = exp.init_fn(config.seed)
  shard_rows = {s.data.shape[0] for s in state.embedding[group.name]["table"].addressable_shards}
  assert shard_rows == {group.num_rows // 8}


def test_embedding_l2_adds_l2_times_the_row_to_each_lookups_gradient(tmp_path):
  # With sgd on the tables, l2 changes a step's table update by -lr * l2 * (lookups of the row) * row,
  # and nothing else: dense parameters and rows not looked up are the same.
  def one_step(l2):
    config = tiny_config()
    config.mesh.shape, config.embedding.optimizer, config.embedding.l2 = (1, 1), "sgd", l2
    exp = train_lib.build(config, tmp_path, jax.devices()[:1])
    batch = next(pipeline.train_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size,
                                         num_batches=1, seed=0, spec=exp.task.batch_spec))
    with jax.set_mesh(exp.partitioner.mesh):
      before = jax.device_get(exp.init_fn(config.seed))
      placed = exp.partitioner.place_batch(batch, exp.batch_shardings)
      routing = jax.device_get(jax.jit(lambda b: exp.task.engine.route(exp.task.sparse_ids(b)))(placed))
      after, _ = exp.train_fn(exp.init_fn(config.seed), placed)
    return config, before, jax.device_get(after), routing

  config, before, plain, routing = one_step(0.0)
  _, _, regularised, _ = one_step(0.25)
  lr = config.embedding.learning_rate
  for group, rows in routing.rows.items():
    table = before.embedding[group]["table"]
    counts = np.bincount(np.asarray(rows).reshape(-1)[np.asarray(rows).reshape(-1) >= 0], minlength=len(table))
    expected = plain.embedding[group]["table"] - lr * 0.25 * counts[:, None] * table
    np.testing.assert_allclose(regularised.embedding[group]["table"], expected, rtol=1e-5, atol=1e-6)
    assert counts.any() and (counts == 0).any()
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(regularised.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("schedule, warmup", [("cosine", 4), ("linear", 0)])
def test_embedding_lr_schedule_scales_each_steps_table_update_as_optax(tmp_path, schedule, warmup):
  import optax
  steps = 10
  reference = (optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, steps, end_value=0.0) if schedule == "cosine"
               else optax.linear_schedule(1.0, 0.0, steps))

  def table_delta(lr_schedule, at_step):
    config = tiny_config(steps=steps)
    config.mesh.shape, config.embedding.optimizer = (1, 1), "sgd"
    config.embedding.lr_schedule, config.embedding.warmup_steps = lr_schedule, warmup if lr_schedule != "constant" else 0
    exp = train_lib.build(config, tmp_path, jax.devices()[:1])
    batch = next(pipeline.train_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size,
                                         num_batches=1, seed=0, spec=exp.task.batch_spec))
    with jax.set_mesh(exp.partitioner.mesh):
      state = exp.init_fn(config.seed)
      before = jax.device_get(state.embedding)
      after, _ = exp.train_fn(state.replace(step=state.step + at_step), exp.partitioner.place_batch(
          batch, exp.batch_shardings))
    return {g: jax.device_get(after.embedding)[g]["table"] - before[g]["table"] for g in before}

  for at_step in (0, 2, 7):  # The update after `at_step` steps: optax's schedule at count `at_step`.
    constant, scheduled = table_delta("constant", at_step), table_delta(schedule, at_step)
    for group in constant:
      # Deltas are (table + delta) - table in float32: exact to a few ulps of the table's values.
      np.testing.assert_allclose(scheduled[group], float(reference(at_step)) * constant[group], rtol=1e-5, atol=1e-6)


def test_an_embedding_lr_schedule_with_ftrl_tables_is_a_config_error(tmp_path):
  from rankjax.config import ConfigError
  config = tiny_config()
  config.embedding.optimizer, config.embedding.lr_schedule = "ftrl", "cosine"
  with pytest.raises(ConfigError, match="embedding.lr_schedule.*ftrl"):
    train_lib.build(config, tmp_path)
