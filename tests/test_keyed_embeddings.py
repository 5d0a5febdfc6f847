"""Embeddings keyed by feature name: tables of different dims in one model, and one feature served
by several tables (first-order dim-1 and second-order dim-D embeddings of the same feature), on a
sharded mesh equal to NumPy lookups of the tables; a factorization machine defined in this file
(Rendle 2010) trains on them through the trainer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from helpers import tiny_config
from rankjax.embedding.engine import EmbeddingEngine
from rankjax.embedding.tables import EmbeddingTableConfig, FeatureSlots
from rankjax.model_inputs import EmbeddedFeature, KeyedEmbeddings
from rankjax.partitioner import make_mesh

SLOTS = FeatureSlots(("user", "item", "history"), (1, 1, 3))
TABLES = [EmbeddingTableConfig("user_first", 40, 1, ("user",)), EmbeddingTableConfig("item_first", 30, 1, ("item",)),
          EmbeddingTableConfig("user", 40, 4, ("user",)), EmbeddingTableConfig("item", 30, 4, ("item", "history"),
                                                                                combiner="none")]
VOCAB = np.array([40, 30, 30, 30, 30])


@pytest.mark.parametrize("sharding", ["row_wise", "table_wise", "replicated"])
def test_features_of_several_tables_and_dims_come_keyed_and_equal_numpy(sharding):
  mesh = make_mesh(("data", "model"), (2, 4))
  tables = [t.__class__(**{**t.__dict__, "sharding": sharding}) for t in TABLES]
  engine = EmbeddingEngine(tables, SLOTS, mesh, batch_axes=("data", "model"), shard_axes=("data", "model"),
                           optimizer_args={"row_wise_adagrad": {"learning_rate": 0.1}})
  assert engine.dims == (1, 4)
  assert engine.slots.names == ("user@user_first", "user@user", "item@item_first", "item@item", "history")
  rng = np.random.default_rng(0)
  ids = (rng.integers(0, 1000, (16, 5)) % VOCAB).astype(np.int32)
  ids[rng.random(ids.shape) < 0.3] = -1
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(engine.batch_axes))
  features = tuple(EmbeddedFeature(n, engine.feature_dim(n), length=h if c == "none" else 1, pooled=c != "none")
                   for n, h, c in zip(engine.slots.names, engine.slots.hotness, engine.combiners))

  def keyed(state, ids):
    routing = engine.route(ids)
    values, masks = engine.pool_by_dim(engine.lookup_groups(state, routing), routing)
    emb = KeyedEmbeddings(features, values, masks)
    return {n: emb[n] for n in emb.keys()} | {"history_mask": emb.mask("history")}

  with jax.set_mesh(mesh):
    state = jax.jit(engine.init, out_shardings=engine.shardings())(jax.random.key(0))
    got = jax.device_get(jax.jit(keyed)(state, jax.device_put(ids, batch)))
  values = engine.table_values(state)

  def rows(table, column):
    ok = ids[:, column] >= 0
    return np.where(ok[:, None], values[table][np.maximum(ids[:, column], 0)], 0.0)

  np.testing.assert_allclose(got["user@user_first"], rows("user_first", 0), rtol=1e-6)
  np.testing.assert_allclose(got["user@user"], rows("user", 0), rtol=1e-6)
  np.testing.assert_allclose(got["item@item_first"], rows("item_first", 1), rtol=1e-6)
  assert got["item@item"].shape == (16, 1, 4)  # The item table keeps positions (combiner none).
  np.testing.assert_allclose(got["item@item"][:, 0], rows("item", 1), rtol=1e-6)
  assert got["history"].shape == (16, 3, 4)
  for position in range(3):
    np.testing.assert_allclose(got["history"][:, position], rows("item", 2 + position), rtol=1e-6)
  np.testing.assert_array_equal(got["history_mask"], ids[:, 2:] >= 0)


# ---- A factorization machine over keyed embeddings, registered by this module's name.

TASKS = ("ctr",)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 4  # Factor dim of the pairwise interactions.
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  pass


def embedding_tables(config, vocab_sizes):
  """Per feature a dim-1 first-order table and a dim-k factor table."""
  names = [f"cat_{i}" for i in range(len(vocab_sizes))]
  return ([EmbeddingTableConfig(f"{n}_first", int(v), 1, (n,)) for n, v in zip(names, vocab_sizes)]
          + [EmbeddingTableConfig(n, int(v), config.model.embed_dim, (n,)) for n, v in zip(names, vocab_sizes)])


class FactorizationMachine(nnx.Module):
  def __init__(self, config, inputs, *, rngs):
    (self.head,) = inputs.heads
    self.first = tuple(f.name for f in inputs.embedded if f.dim == 1)
    self.factors = tuple(f.name for f in inputs.embedded if f.dim == config.model.embed_dim)
    self.dense = nnx.Linear(inputs.num_dense, 1, rngs=rngs)

  def __call__(self, inputs):
    emb = inputs.embedded
    first_b = sum(emb[n][:, 0] for n in self.first)
    v_bfk = emb.stacked(self.factors)
    pairs_b = 0.5 * jnp.sum(jnp.sum(v_bfk, axis=1) ** 2 - jnp.sum(v_bfk ** 2, axis=1), axis=1)
    return {self.head: self.dense(inputs.dense)[:, 0] + first_b + pairs_b}


def create(config, inputs, *, rngs):
  return FactorizationMachine(config, inputs, rngs=rngs)


def test_a_factorization_machine_over_first_and_second_order_tables_trains(tmp_path):
  from rankjax.config import base_config
  from rankjax.train import train
  config = base_config("test_keyed_embeddings")
  reference = tiny_config()
  config.data.synthetic = reference.data.synthetic
  config.train = reference.train
  config.train.steps = 60
  config.checkpoint.every_steps = 60
  config.mesh.shape = (4, 2)
  summary = train(config, tmp_path, log=lambda *_: None)
  assert summary["steps"] == 60 and summary["eval_auc"] > 0.6, summary
