"""The sharded embedding engine: every sharding type on 8x1 and 2x4 meshes equals the single-device
engine (forward rows and tables after 10 updates), runs are bitwise repeatable, padding never counts."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.embedding.tables import EmbeddingTableConfig, FeatureSlots
from rankjax.embedding.engine import EmbeddingEngine
from rankjax.embedding.sharding import row_wise, table_row_wise
from rankjax.partitioner import make_mesh

SHARDINGS = ["replicated", "table_wise", "row_wise", "column_wise", "gspmd_row_wise", "table_row_wise"]
TABLES = [
    EmbeddingTableConfig("users", 37, 8, ("user", "friend")),  # shared by two features
    EmbeddingTableConfig("items", 100, 8, ("item",), combiner="mean"),
    EmbeddingTableConfig("tiny", 5, 8, ("flag",)),
    EmbeddingTableConfig("cats", 64, 8, ("cat",)),
]
SLOTS = FeatureSlots(("user", "friend", "item", "flag", "cat"), (1, 2, 3, 1, 2))
VOCAB_OF_SLOT = np.array([37, 37, 37, 100, 100, 100, 5, 64, 64])
BATCH = 32


def make_engine(shape, table_axes, sharding, optimizer="row_wise_adagrad", tables=TABLES, exchange_capacity=1.25,
                mesh_axes=("data", "model"), host_exchange_capacity=1.25):
  devices = jax.devices()[: int(np.prod(shape))]
  mesh = make_mesh(mesh_axes, shape, devices)
  tables = [t.__class__(**{**t.__dict__, "sharding": sharding}) for t in tables]
  return EmbeddingEngine(tables, SLOTS, mesh, batch_axes=mesh_axes, shard_axes=table_axes,
                         default_optimizer=optimizer,
                         optimizer_args={optimizer: {"learning_rate": 0.05}}, exchange_capacity=exchange_capacity,
                         host_exchange_capacity=host_exchange_capacity)


def batches(num, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(num):
    ids = (rng.zipf(1.5, size=(BATCH, len(VOCAB_OF_SLOT))) - 1) % VOCAB_OF_SLOT  # many repeats
    ids[rng.random(ids.shape) < 0.2] = -1  # padding
    yield ids.astype(np.int32)


def run(engine, num_steps=10):
  mesh = engine.mesh
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(engine.batch_axes or None))
  shardings = engine.shardings()
  init = jax.jit(engine.init, out_shardings=shardings)
  lookup = jax.jit(engine.lookup, in_shardings=(shardings, batch_sharding), out_shardings=batch_sharding)

  def step(state, ids, step):
    rows = engine.lookup(state, ids)
    grads = jnp.sin(7.0 * rows) + 1e-4 * jnp.sum(ids, axis=1)[:, None, None]  # errors would compound
    return engine.apply_gradients(state, ids, grads, step)

  update = jax.jit(step, in_shardings=(shardings, batch_sharding, None), out_shardings=shardings, donate_argnums=0)
  with jax.set_mesh(mesh):
    state = init(jax.random.key(3))
    forwards = []
    for i, ids in enumerate(batches(num_steps)):
      ids = jax.device_put(ids, batch_sharding)
      forwards.append(np.asarray(lookup(state, ids)))
      state = update(state, ids, jnp.int32(i + 1))
  return forwards, engine.table_values(state)


@pytest.fixture(scope="module")
def single_device_runs():
  return {s: run(make_engine((1, 1), ("data", "model"), s)) for s in SHARDINGS}


@pytest.mark.parametrize("sharding", SHARDINGS)
@pytest.mark.parametrize("shape, table_axes", [((8, 1), ("data", "model")), ((2, 4), ("data", "model")),
                                               ((2, 4), ("model",))])
def test_sharded_engine_equals_single_device(single_device_runs, sharding, shape, table_axes):
  assert_runs_equal(run(make_engine(shape, table_axes, sharding)), single_device_runs[sharding])


def assert_runs_equal(got_run, want_run):
  """Forward rows of every step and the tables after them, to 1e-6."""
  (forwards, tables), (ref_forwards, ref_tables) = got_run, want_run
  for got, want in zip(forwards, ref_forwards, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  for name in ref_tables:
    np.testing.assert_allclose(tables[name], ref_tables[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("capacity", [1.25, 8.0])  # Falls back on every batch / never.
def test_table_row_wise_keeps_each_table_on_one_host_and_equals_single_device(single_device_runs, capacity):
  engine = make_engine((2, 4), ("host", "data"), "table_row_wise", mesh_axes=("host", "data"),
                       exchange_capacity=capacity)
  (group,) = engine.groups
  host_rows = group.num_rows // 2
  assert engine.num_hosts == 2 and group.rows_per_shard * 4 == host_rows
  hosts = {t.name: off // host_rows for t, off in zip(group.tables, group.table_offsets)}
  for t, off in zip(group.tables, group.table_offsets):  # Whole tables inside one host's row block.
    assert (off + t.vocab_size - 1) // host_rows == hosts[t.name]
  assert hosts == {"items": 0, "cats": 1, "users": 1, "tiny": 0}  # Largest first onto the lighter host.
  assert_runs_equal(run(engine), single_device_runs["table_row_wise"])


def table_row_wise_fallback_reference(ids, engine):
  """Per batch, the two-stage exchange on 2 hosts x 4 devices: whether some device has more distinct
  rows for one owner than row_wise's capacity (stage 1), or some device gets more distinct rows
  for one owner host from its host's devices than host_capacity (stage 2)."""
  (group,) = engine.groups
  n = ids.shape[0] // 8
  m = n * ids.shape[1]
  cap, cap2 = row_wise.capacity(group, engine.axes, m), table_row_wise.host_capacity(group, engine.axes, m)
  rows = np.where((ids >= 0) & (ids < group.slot_vocab), ids + group.slot_offset, -1)
  mine = [set(np.unique(rows[d * n:(d + 1) * n])) - {-1} for d in range(8)]
  owner = lambda r: r // group.rows_per_shard
  over = any(sum(owner(r) == o for r in rows_d) > cap for rows_d in mine for o in range(8))
  for host, me, to in itertools.product(range(2), range(4), range(2)):  # Stage 2 at device (host, me).
    merged = set().union(*({r for r in mine[host * 4 + d] if owner(r) == to * 4 + me} for d in range(4)))
    over |= len(merged) > cap2
  return over


# Stage 1 never overflows at exchange_capacity 8 (room for all of a device's ids); stage 2 then
# falls back on every batch at 0.25 (room for 8 distinct rows an owner host, these batches bring
# 11 to 15), never at 1.25 (24) and has no conditional at 8.
@pytest.mark.parametrize("host_capacity", [0.25, 1.25, 8.0])
def test_table_row_wise_across_hosts_equals_single_device_and_falls_back_exactly_when_over_capacity(
    single_device_runs, host_capacity):
  engine = make_engine((2, 4), ("host", "data"), "table_row_wise", mesh_axes=("host", "data"),
                       exchange_capacity=8.0, host_exchange_capacity=host_capacity)
  batch_sharding = jax.sharding.NamedSharding(engine.mesh, jax.sharding.PartitionSpec(engine.batch_axes))
  flag = jax.jit(lambda ids: engine.exchange_fallback(engine.route(ids)))
  with jax.set_mesh(engine.mesh):
    got = [flag(jax.device_put(ids, batch_sharding)) for ids in batches(10)]
  want = [table_row_wise_fallback_reference(ids, engine) for ids in batches(10)]
  if host_capacity >= 8.0:
    assert got == [None] * 10 and not any(want)
  else:
    assert [bool(g) for g in got] == want == [host_capacity < 1] * 10
  assert_runs_equal(run(engine), single_device_runs["table_row_wise"])


def test_table_row_wise_needs_the_host_axis_first_among_the_table_axes():
  with pytest.raises(ValueError, match="table_row_wise needs the 'host' axis first"):
    make_engine((4, 2), ("data", "host"), "table_row_wise", mesh_axes=("data", "host"))


def row_wise_fallback_reference(ids, engine, shards):
  """Per batch: whether some device (a contiguous block of the batch) has more distinct rows for
  one owner shard than the all-to-all's capacity."""
  (group,) = engine.groups
  devices = 8
  n = ids.shape[0] // devices
  cap = row_wise.capacity(group, engine.axes, n * ids.shape[1])
  rows = np.where((ids >= 0) & (ids < group.slot_vocab), ids + group.slot_offset, -1)
  over = False
  for d in range(devices):
    distinct = np.unique(rows[d * n:(d + 1) * n])
    distinct = distinct[distinct >= 0]
    over |= np.bincount(distinct // group.rows_per_shard, minlength=shards).max() > cap
  return over


# Default capacity falls back on every one of these batches (tests above: the all-gather path);
# 2.0 falls back on some (both paths), 8.0 never (capacity = all of a device's ids: no conditional).
@pytest.mark.parametrize("capacity", [2.0, 8.0])
@pytest.mark.parametrize("shape, table_axes, shards", [((8, 1), ("data", "model"), 8), ((2, 4), ("model",), 4)])
def test_row_wise_all_to_all_equals_single_device_and_falls_back_exactly_when_over_capacity(
    single_device_runs, capacity, shape, table_axes, shards):
  engine = make_engine(shape, table_axes, "row_wise", exchange_capacity=capacity)
  batch_sharding = jax.sharding.NamedSharding(engine.mesh, jax.sharding.PartitionSpec(engine.batch_axes))
  flag = jax.jit(lambda ids: engine.exchange_fallback(engine.route(ids)))
  with jax.set_mesh(engine.mesh):
    got = [flag(jax.device_put(ids, batch_sharding)) for ids in batches(10)]
  want = [row_wise_fallback_reference(ids, engine, shards) for ids in batches(10)]
  if capacity >= 8.0:
    assert got == [None] * 10 and not any(want)
  else:
    assert [bool(g) for g in got] == want and 0 < sum(want) < 10  # Both paths run.
  assert_runs_equal(run(engine), single_device_runs["row_wise"])


def test_every_sharding_type_starts_from_the_same_tables():
  values = [run(make_engine((2, 4), ("data", "model"), s), num_steps=0)[1] for s in SHARDINGS]
  for other in values[1:]:
    for name in values[0]:
      np.testing.assert_array_equal(other[name], values[0][name])


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise", "column_wise"])
def test_two_identical_runs_are_bitwise_identical(sharding):
  a = run(make_engine((2, 4), ("data", "model"), sharding), num_steps=3)
  b = run(make_engine((2, 4), ("data", "model"), sharding), num_steps=3)
  for x, y in zip(a[0], b[0]):
    np.testing.assert_array_equal(x, y)
  for name in a[1]:
    np.testing.assert_array_equal(a[1][name], b[1][name])


@pytest.mark.parametrize("sharding", ["replicated", "table_wise", "row_wise", "column_wise"])
def test_lookup_and_pooling_match_numpy_with_masked_padding(sharding):
  engine = make_engine((2, 4), ("data", "model"), sharding)
  batch_sharding = jax.sharding.NamedSharding(engine.mesh, jax.sharding.PartitionSpec(engine.batch_axes))
  with jax.set_mesh(engine.mesh):
    state = jax.jit(engine.init, out_shardings=engine.shardings())(jax.random.key(0))
    ids = next(batches(1, seed=5))
    placed = jax.device_put(ids, batch_sharding)
    pooled = np.asarray(jax.jit(lambda s, i: engine.pool(engine.lookup(s, i), i))(state, placed))
  tables = engine.table_values(state)
  table_of = {f: t for t in TABLES for f in t.feature_names}
  start = SLOTS.start
  for f, name in enumerate(SLOTS.names):
    t = table_of[name]
    expect = np.zeros((BATCH, 8), np.float32)
    count = np.zeros(BATCH)
    for s in range(start[f], start[f] + SLOTS.hotness[f]):
      ok = ids[:, s] >= 0
      expect[ok] += tables[t.name][ids[ok, s]]
      count += ok
    if t.combiner == "mean":
      expect /= np.maximum(count, 1)[:, None]
    np.testing.assert_allclose(pooled[:, f], expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "row_wise_adagrad", "adam", "ftrl"])
@pytest.mark.parametrize("sharding", ["table_wise", "row_wise", "column_wise"])
def test_padding_ids_change_nothing(optimizer, sharding):
  engine = make_engine((2, 4), ("data", "model"), sharding, optimizer=optimizer)
  batch_sharding = jax.sharding.NamedSharding(engine.mesh, jax.sharding.PartitionSpec(engine.batch_axes))
  with jax.set_mesh(engine.mesh):
    state = jax.jit(engine.init, out_shardings=engine.shardings())(jax.random.key(0))
    before = jax.device_get(state)
    ids = jax.device_put(np.full((BATCH, len(VOCAB_OF_SLOT)), -1, np.int32), batch_sharding)
    grads = jnp.ones((BATCH, len(VOCAB_OF_SLOT), 8))
    after = jax.device_get(jax.jit(engine.apply_gradients)(state, ids, grads, jnp.int32(1)))
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(x, y)


def test_bfloat16_tables_track_float32_tables():
  bf16 = [t.__class__(**{**t.__dict__, "dtype": "bfloat16"}) for t in TABLES]
  _, got = run(make_engine((2, 4), ("data", "model"), "row_wise", tables=bf16), num_steps=5)
  _, want = run(make_engine((2, 4), ("data", "model"), "row_wise"), num_steps=5)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=2e-2, atol=2e-3)


QR_TABLES = [t if t.name != "items" else t.__class__(**{**t.__dict__, "qr_buckets": 7}) for t in TABLES]


@pytest.mark.parametrize("sharding", ["row_wise", "table_wise", "column_wise"])
def test_quotient_remainder_tables_shard_like_the_single_device_engine(sharding):
  forwards, tables = run(make_engine((2, 4), ("data", "model"), sharding, tables=QR_TABLES), num_steps=4)
  ref_forwards, ref_tables = run(make_engine((1, 1), ("data", "model"), sharding, tables=QR_TABLES), num_steps=4)
  assert tables["items/quotient"].shape == (15, 8) and tables["items/remainder"].shape == (7, 8)
  for got, want in zip(forwards, ref_forwards):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  for name in ref_tables:
    np.testing.assert_allclose(tables[name], ref_tables[name], rtol=1e-6, atol=1e-7)


def test_quotient_remainder_vector_is_quotient_row_plus_remainder_row():
  engine = make_engine((2, 4), ("data", "model"), "row_wise", tables=QR_TABLES)
  batch_sharding = jax.sharding.NamedSharding(engine.mesh, jax.sharding.PartitionSpec(engine.batch_axes))
  with jax.set_mesh(engine.mesh):
    state = jax.jit(engine.init, out_shardings=engine.shardings())(jax.random.key(0))
    ids = next(batches(1, seed=9))
    pooled = np.asarray(jax.jit(lambda s, i: engine.pool(engine.lookup(s, i), i))(state, jax.device_put(ids, batch_sharding)))
  tables = engine.table_values(state)
  item = SLOTS.names.index("item")
  start, h = SLOTS.start[item], SLOTS.hotness[item]
  expect = np.zeros((BATCH, 8), np.float32)
  count = np.zeros(BATCH)
  for s in range(start, start + h):
    ok = ids[:, s] >= 0
    expect[ok] += tables["items/quotient"][ids[ok, s] // 7] + tables["items/remainder"][ids[ok, s] % 7]
    count += ok
  np.testing.assert_allclose(pooled[:, item], expect / np.maximum(count, 1)[:, None], rtol=1e-6, atol=1e-7)


def test_sequence_features_keep_their_positions_with_combiner_none():
  seq_tables = [t if t.name != "cats" else t.__class__(**{**t.__dict__, "combiner": "none"}) for t in TABLES]
  engine = make_engine((2, 4), ("data", "model"), "row_wise", tables=seq_tables)
  assert engine.num_output_vectors == len(SLOTS.names) - 1 + 2  # "cat" has hotness 2
  batch_sharding = jax.sharding.NamedSharding(engine.mesh, jax.sharding.PartitionSpec(engine.batch_axes))
  with jax.set_mesh(engine.mesh):
    state = jax.jit(engine.init, out_shardings=engine.shardings())(jax.random.key(0))
    ids = next(batches(1, seed=4))
    out = np.asarray(jax.jit(lambda s, i: engine.pool(engine.lookup(s, i), i))(state, jax.device_put(ids, batch_sharding)))
  assert out.shape == (BATCH, engine.num_output_vectors, 8)
  cats = engine.table_values(state)["cats"]
  start = SLOTS.start[SLOTS.names.index("cat")]
  for position in range(2):
    slot_ids = ids[:, start + position]
    expect = np.where((slot_ids >= 0)[:, None], cats[np.maximum(slot_ids, 0)], 0.0)
    np.testing.assert_allclose(out[:, 4 + position], expect, rtol=1e-6, atol=1e-7)
