"""train.dropout: every ReLU of the model's MLPs is followed by inverted dropout in train steps
(the mask and 1/(1-p) scaling exactly as written out below), never in eval or serving; off, the
step draws nothing; on a mesh the step equals one device's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rankjax import layers
from rankjax import train as train_lib
from rankjax.data import pipeline
from test_train_step import run_steps

from helpers import assert_same_trained_state, tiny_config


def test_mlp_dropout_is_inverted_dropout_after_every_relu():
  mlp = layers.set_dropout(layers.MLP(6, (5, 4, 3), rngs=nnx.Rngs(0), final_activation=True), 0.25)
  x = jax.random.normal(jax.random.key(1), (32, 6))
  deterministic = mlp(x)
  key = jax.random.key(7)
  mlp.dropout_key = key
  got = mlp(x)
  h = np.asarray(x)
  for i, layer in enumerate(mlp.layers):  # The reference: relu, then keep with p 0.75 and scale by 1/0.75.
    h = np.maximum(h @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...]), 0.0)
    keep = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, i), 0.75, h.shape))
    h = np.where(keep, h / 0.75, 0.0)
  np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got, deterministic)
  del mlp.dropout_key  # Eval and serving: no key, no dropout.
  np.testing.assert_array_equal(mlp(x), deterministic)


def test_every_mlp_of_a_model_gets_its_own_key():
  class Two(nnx.Module):
    def __init__(self):
      self.a, self.b = layers.MLP(4, (4, 4), rngs=nnx.Rngs(0)), layers.MLP(4, (4, 4), rngs=nnx.Rngs(0))

  model = layers.set_dropout(Two(), 0.5)
  assert model.a.dropout == model.b.dropout == 0.5
  layers.seed_dropout(model, jax.random.key(3))
  assert not np.array_equal(jax.random.key_data(model.a.dropout_key), jax.random.key_data(model.b.dropout_key))


def _jaxpr_of_step(config, tmp_path) -> str:
  exp = train_lib.build(config, tmp_path, jax.devices()[:1])
  state = exp.init_fn(config.seed)
  batch = next(iter(pipeline.train_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size,
                                            num_batches=1, seed=0)))
  return str(jax.make_jaxpr(exp.task.train_step)(state, jax.tree.map(jnp.asarray, batch)))


def test_dropout_off_draws_nothing_and_on_draws_in_the_step(tmp_path):
  config = tiny_config()
  config.mesh.shape = (1, 1)
  assert "random_bits" not in _jaxpr_of_step(config, tmp_path / "off")
  config.train.dropout = 0.2
  assert "random_bits" in _jaxpr_of_step(config, tmp_path / "on")


@pytest.fixture(scope="module")
def single_device_dropout(tmp_path_factory):
  config = tiny_config(dropout=0.3)
  config.mesh.shape = (1, 1)
  return run_steps(config, tmp_path_factory.mktemp("dropout"), jax.devices()[:1], 3)


def test_dropout_steps_on_a_2x4_mesh_equal_one_device_and_differ_from_no_dropout(single_device_dropout, tmp_path):
  ref_exp, ref_state, ref_losses = single_device_dropout
  config = tiny_config(dropout=0.3)
  config.mesh.shape = (2, 4)
  exp, state, losses = run_steps(config, tmp_path / "mesh", jax.devices(), 3)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_same_trained_state(exp, state, ref_exp, ref_state)
  plain = tiny_config()
  plain.mesh.shape = (1, 1)
  _, _, plain_losses = run_steps(plain, tmp_path / "plain", jax.devices()[:1], 3)
  assert plain_losses[0] != ref_losses[0]  # Same data and init: only dropout differs.
  # Eval scores with the same parameters do not depend on the dropout rate.
  batch = jax.tree.map(jnp.asarray, next(iter(pipeline.eval_iterator(
      ref_exp.data_dir, ref_exp.manifest, global_batch_size=256, spec=ref_exp.task.batch_spec))))
  plain_exp = train_lib.build(plain, tmp_path / "plain", jax.devices()[:1])
  with jax.set_mesh(ref_exp.partitioner.mesh):
    with_dropout, without = ref_exp.task.forward(ref_state, batch), plain_exp.task.forward(ref_state, batch)
  np.testing.assert_array_equal(with_dropout["click"], without["click"])


def test_dins_dice_mlps_drop_too():
  from rankjax.models.din import DiceMLP
  mlp = layers.set_dropout(DiceMLP(4, (16, 16), 1, rngs=nnx.Rngs(0)), 0.5)
  x = jax.random.normal(jax.random.key(1), (8, 4))
  deterministic = mlp(x)
  layers.seed_dropout(mlp, jax.random.key(2))
  assert not np.allclose(mlp(x), deterministic)
