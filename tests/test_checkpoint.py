"""Orbax checkpoint round trip: train state (params, dense + sparse optimizer state, step, RNG)
and the Grain iterator state come back equal, on the shardings asked for."""

import jax
import numpy as np

from rankjax import checkpoint as checkpoint_lib
from rankjax import train as train_lib
from rankjax.data import pipeline

from helpers import tiny_config


def test_checkpoint_round_trip_restores_state_and_iterator(tmp_path):
  config = tiny_config()
  exp = train_lib.build(config, tmp_path, jax.devices())
  with jax.set_mesh(exp.partitioner.mesh):
    state = exp.init_fn(config.seed)
    it = pipeline.train_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size,
                                 num_batches=10, seed=0)
    for _ in range(2):
      state, _ = exp.train_fn(state, exp.partitioner.place_batch(next(it)))
    saved = jax.device_get(state)
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    ckpt.save(2, state, {"iterator": it.get_state()})
    ckpt.wait()
    expected_next = next(it)

    abstract = checkpoint_lib.abstract_like(jax.eval_shape(exp.init_fn, config.seed), exp.state_shardings)
    restored, data_state = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2).restore(2, abstract)
  for got, want in zip(jax.tree.leaves(restored.embedding), jax.tree.leaves(exp.state_shardings.embedding)):
    assert got.sharding == want
  for got, want in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(got, want)
  assert int(restored.step) == 2
  it2 = pipeline.train_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size,
                                num_batches=10, seed=0)
  it2.set_state(data_state["iterator"])
  got_next = next(it2)
  for k in expected_next:
    np.testing.assert_array_equal(got_next[k], expected_next[k])


def test_retention_keeps_the_latest_k_plus_the_best_by_metric(tmp_path):
  import jax.numpy as jnp
  by_auc = checkpoint_lib.Checkpointer(str(tmp_path / "auc"), max_to_keep=2, keep_best_metric="auc")
  for step, auc in [(1, 0.7), (2, 0.9), (3, None), (4, 0.6), (5, None)]:
    by_auc.save(step, {"x": jnp.full(3, step)}, {"i": step}, metrics={"auc": auc, "logloss": 1 - auc} if auc else None)
    by_auc.wait()
  assert by_auc.all_steps() == [2, 4, 5]  # latest two + the highest AUC
  by_loss = checkpoint_lib.Checkpointer(str(tmp_path / "loss"), max_to_keep=1, keep_best_metric="logloss")
  for step, loss in [(1, 0.7), (2, 0.5), (3, 0.9)]:
    by_loss.save(step, {"x": jnp.full(3, step)}, {"i": step}, metrics={"auc": 0.5, "logloss": loss})
    by_loss.wait()
  assert by_loss.all_steps() == [2, 3]  # latest one + the lowest log loss


def test_the_best_step_survives_a_restart_of_the_checkpointer(tmp_path):
  """Each step's metrics are on disk: a run restarted (killed, preempted) still ranks the earlier
  steps, so the best one is kept, not deleted at the first save after the restart."""
  import jax.numpy as jnp
  keep = {"best_validation_auc": False}
  first = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1, keep_best=keep)
  for step, auc in [(10, 0.8), (20, None)]:
    first.save(step, {"x": jnp.full(3, step)}, {"i": step}, metrics={"best_validation_auc": auc} if auc else None)
    first.wait()
  first.close()
  restarted = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=1, keep_best=keep)
  for step in (30, 40):
    restarted.save(step, {"x": jnp.full(3, step)}, {"i": step})
    restarted.wait()
  assert restarted.all_steps() == [10, 40]  # The best (10) and the latest.
  restarted.save(50, {"x": jnp.full(3, 50)}, {"i": 50}, metrics={"best_validation_auc": 0.9})
  restarted.wait()
  assert restarted.all_steps() == [50]  # A new best that is also the latest.
  restarted.close()
