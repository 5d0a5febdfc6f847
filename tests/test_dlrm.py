"""DLRM (models/dlrm.py, installed as rankjax.models.dlrm): shapes and the interaction layout."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankjax.config import base_config
from rankjax.layers import dot_interaction
from rankjax.models import dlrm

from helpers import ctr_model_inputs


def test_dlrm_maps_dense_and_embeddings_to_one_logit_per_example():
  config = base_config("dlrm")
  spec, inputs = ctr_model_inputs(13, 26, config.model.embed_dim)
  model = dlrm.create(config, spec, rngs=nnx.Rngs(0))
  dense = jnp.ones((8, 13))
  emb = jnp.ones((8, 26, config.model.embed_dim))
  assert model(inputs(dense, emb))["click"].shape == (8,)
  first_top = model.top_mlp.layers[0].kernel[...]
  assert first_top.shape[0] == config.model.embed_dim + 27 * 26 // 2


def test_dot_interaction_is_the_strict_lower_triangle_of_the_gram_matrix():
  x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
  out = np.asarray(dot_interaction(jnp.asarray(x)))
  expect = [[x[b, i] @ x[b, j] for i in range(5) for j in range(i)] for b in range(3)]
  np.testing.assert_allclose(out, np.array(expect), rtol=1e-5)


def test_dot_interaction_gradient_equals_autodiff_of_the_plain_gather():
  """Its custom VJP (one product with the symmetrised cotangent) against autodiff of the gram
  matrix and a 2-D fancy index."""
  x = jax.random.normal(jax.random.key(0), (6, 7, 5))
  w = jax.random.normal(jax.random.key(1), (6, 21))
  rows, cols = np.tril_indices(7, k=-1)
  plain = lambda x: jnp.einsum("bfd,bgd->bfg", x, x)[:, rows, cols]
  loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)) * w)
  np.testing.assert_allclose(dot_interaction(x), plain(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.grad(loss(dot_interaction))(x), jax.grad(loss(plain))(x), rtol=1e-5, atol=1e-5)


def test_embedding_tables_one_per_feature_with_model_dim():
  config = base_config("dlrm")
  tables = dlrm.embedding_tables(config, [10, 20, 30])
  assert [t.vocab_size for t in tables] == [10, 20, 30]
  assert {t.dim for t in tables} == {config.model.embed_dim}
  assert [t.feature_names for t in tables] == [("cat_0",), ("cat_1",), ("cat_2",)]


def test_dlrm_gives_one_logit_per_head_of_a_multitask_model():
  config = base_config("dlrm")
  spec, inputs = ctr_model_inputs(13, 4, config.model.embed_dim, heads=("click", "conversion"))
  model = dlrm.create(config, spec, rngs=nnx.Rngs(0))
  outputs = model(inputs(jnp.ones((8, 13)), jnp.ones((8, 4, config.model.embed_dim))))
  assert set(outputs) == {"click", "conversion"} and outputs["conversion"].shape == (8,)
  assert not np.allclose(outputs["click"], outputs["conversion"])
