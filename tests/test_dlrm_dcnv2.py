"""DLRM-DCNv2 (models/dlrm_dcnv2.py), its cross network and the MLPerf config: shapes and oracles."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rankjax.config import ConfigError, base_config, load_config_file, validate
from rankjax.layers import LowRankCrossNet, MixtureCrossNet
from rankjax.models import dlrm_dcnv2

from helpers import ctr_model_inputs

MLPERF_CONFIG = str(pathlib.Path(__file__).parent.parent / "configs" / "dlrm_dcnv2_mlperf.py")


def small_config():
  config = base_config("dlrm_dcnv2")
  config.model.embed_dim = 8
  config.model.bottom_mlp = (16, 8)
  config.model.top_mlp = (32, 16, 1)
  config.model.cross_layers = 2
  config.model.cross_rank = 4
  return config


def test_dlrm_dcnv2_maps_dense_and_embeddings_to_one_logit_per_example():
  config = small_config()
  spec, inputs = ctr_model_inputs(13, 5, 8)
  model = dlrm_dcnv2.create(config, spec, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  logits = model(inputs(jnp.asarray(rng.normal(size=(4, 13)), jnp.float32),
                        jnp.asarray(rng.normal(size=(4, 5, 8)), jnp.float32)))["click"]
  assert logits.shape == (4,)
  assert np.isfinite(np.asarray(logits)).all()
  assert model.top_mlp.layers[0].kernel[...].shape == (6 * 8, 32)
  assert model.cross_net.v_layers[0].kernel[...].shape == (6 * 8, 4)


def test_dlrm_dcnv2_with_mlperf_sizes_builds_the_mlperf_layer_shapes():
  config = base_config("dlrm_dcnv2")
  model = nnx.eval_shape(
      lambda: dlrm_dcnv2.create(config, ctr_model_inputs(13, 26, 128)[0], rngs=nnx.Rngs(0)))
  assert [layer.kernel.shape for layer in model.bottom_mlp.layers] == [(13, 512), (512, 256), (256, 128)]
  assert len(model.cross_net.v_layers) == 3
  assert model.cross_net.v_layers[0].kernel.shape == (27 * 128, 512)
  assert model.cross_net.w_layers[0].kernel.shape == (512, 27 * 128)
  assert [layer.kernel.shape[1] for layer in model.top_mlp.layers] == [1024, 1024, 512, 256, 1]


def test_low_rank_cross_net_equals_numpy_x0_times_w_v_x_plus_b_plus_x():
  in_dim, rank, layers = 6, 3, 2
  net = LowRankCrossNet(in_dim, layers, rank, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  vs = [rng.normal(size=(in_dim, rank)).astype(np.float32) for _ in range(layers)]
  ws = [rng.normal(size=(rank, in_dim)).astype(np.float32) for _ in range(layers)]
  bs = [rng.normal(size=(in_dim,)).astype(np.float32) for _ in range(layers)]
  for v_layer, w_layer, v, w, b in zip(net.v_layers, net.w_layers, vs, ws, bs):
    v_layer.kernel[...] = jnp.asarray(v)
    w_layer.kernel[...] = jnp.asarray(w)
    w_layer.bias[...] = jnp.asarray(b)
  x0 = rng.normal(size=(5, in_dim)).astype(np.float32)
  expect = x0.astype(np.float64)
  for v, w, b in zip(vs, ws, bs):
    expect = x0 * ((expect @ v) @ w + b) + expect
  np.testing.assert_allclose(np.asarray(net(jnp.asarray(x0))), expect, rtol=1e-4, atol=1e-4)


def test_mixture_cross_net_equals_numpy_per_expert_sum_of_dcn_mix_eq_4():
  """sum_k g_k(x_l) x_0 * (U_k tanh(C_k tanh(V_k^T x_l)) + b) + x_l, one expert at a time."""
  in_dim, rank, layers, experts = 7, 3, 2, 4
  net = MixtureCrossNet(in_dim, layers, rank, experts, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(2)
  net.bias_li[...] = jnp.asarray(rng.normal(size=(layers, in_dim)), jnp.float32)  # Not zero, so b is checked.
  v, c, u, b = (np.asarray(p[...], np.float64) for p in (net.v_lkir, net.c_lkrr, net.u_lkri, net.bias_li))
  x0 = rng.normal(size=(5, in_dim)).astype(np.float32)
  expect = x0.astype(np.float64)
  for l, gate in enumerate(net.gates):
    logits = expect @ np.asarray(gate.kernel[...], np.float64)
    g = np.exp(logits - logits.max(axis=1, keepdims=True))
    g /= g.sum(axis=1, keepdims=True)
    mixed = sum(g[:, k:k + 1] * x0 * (np.tanh(np.tanh(expect @ v[l, k]) @ c[l, k]) @ u[l, k] + b[l])
                for k in range(experts))
    expect = mixed + expect
  np.testing.assert_allclose(np.asarray(net(jnp.asarray(x0))), expect, rtol=1e-4, atol=1e-4)


def test_low_rank_cross_net_starts_with_zero_bias_and_no_v_bias():
  net = LowRankCrossNet(6, 2, 3, rngs=nnx.Rngs(0))
  assert all(layer.bias is None for layer in net.v_layers)
  assert all(not np.asarray(layer.bias[...]).any() for layer in net.w_layers)


def test_base_config_for_dlrm_dcnv2_has_the_mlperf_model_and_validates():
  config = base_config("dlrm_dcnv2")
  validate(config, 8)
  m = config.model
  assert (m.embed_dim, tuple(m.bottom_mlp), tuple(m.top_mlp), m.cross_layers, m.cross_rank) == (
      128, (512, 256, 128), (1024, 1024, 512, 256, 1), 3, 512)


@pytest.mark.parametrize("key, value", [
    ("top_mlp", (64, 2)),
    ("top_mlp", ()),
    ("bottom_mlp", (512, 64)),
    ("bottom_mlp", (0, 128)),
    ("embed_dim", 0),
    ("cross_layers", 0),
    ("cross_rank", -1),
])
def test_validation_errors_name_the_model_key(key, value):
  config = base_config("dlrm_dcnv2")
  config.model[key] = value
  with pytest.raises(ConfigError) as e:
    validate(config, 8)
  assert e.value.key == f"model.{key}"


def test_unknown_model_key_is_rejected_by_name():
  config = base_config("dlrm_dcnv2")
  config.model.cross_depth = 3
  with pytest.raises(ConfigError) as e:
    validate(config, 8)
  assert e.value.key == "model.cross_depth"


def test_embedding_tables_one_per_feature_with_model_dim():
  tables = dlrm_dcnv2.embedding_tables(base_config("dlrm_dcnv2"), [10, 20])
  assert [(t.name, t.vocab_size, t.dim) for t in tables] == [("cat_0", 10, 128), ("cat_1", 20, 128)]


def test_mlperf_config_has_the_mlperf_sizes_and_validates():
  config = load_config_file(MLPERF_CONFIG)
  assert len(config.data.synthetic.vocab_sizes) == 26 and max(config.data.synthetic.vocab_sizes) == 40_000_000
  assert sum(config.data.synthetic.hotness) == 214
  assert config.model.embed_dim == 128 and tuple(config.model.top_mlp) == (1024, 1024, 512, 256, 1)
  assert config.model.cross_layers == 3 and config.model.cross_rank == 512
  validate(config, 8)


def test_row_scale_shrinks_every_table_exactly_with_ceil_and_min_one():
  from rankjax.data.synthetic import SyntheticSpec
  config = load_config_file(MLPERF_CONFIG)
  vocab = SyntheticSpec.from_config(config.data.synthetic, 0.00001).vocab_sizes
  assert vocab[0] == 400  # 40M * 1e-5 exactly, where the float product gives 400.00000000000006
  assert vocab[5] == 1 and vocab[10] == 31  # ceil(3 * 1e-5) = 1, ceil(3067956 * 1e-5) = 31
