"""The sharded embedding engine: table init, id routing, lookups, pooling and fused sparse updates.

Tables with the same sharding type, optimizer, dim and dtype are stacked into one array (a
"group"). Each group's lookup and update run the collectives of its sharding type, one module per
type in rankjax/embedding/sharding/ (replicated, row_wise, table_wise, column_wise, and the GSPMD
baseline gspmd_row_wise); tables are split over the `table_rows` mesh axes and replicated over
the other batch axes.

A step routes the batch's ids once (`route`: folding, quotient-remainder split, per-group global
rows) and reuses that routing for the lookup, the pooling and the update. Gradients arrive w.r.t.
the looked-up rows of each group; the sparse optimizer updates only the touched rows. Groups may
have different dims: pooled outputs come per dim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax.embedding import dynamic, dynamic_shards, optimizers, quotient_remainder
from rankjax.embedding.sharding import SHARDINGS
from rankjax.embedding.sharding.base import ROW_PAD_MULTIPLE, MeshAxes, ShardingType, TableGroup
from rankjax.errors import ConfigError
from rankjax.partitioner import HOST_AXIS
from rankjax.embedding.tables import (DTYPES, EmbeddingTableConfig, FeatureSlots, init_stacked, num_output_vectors,
                                     check_raw_id_table, pool, with_rows)

DYNAMIC = "dynamic"  # The embedding state's key of the dynamic tables' maps (no group is named so).
DYNAMIC_KEY_STREAM = 0x64796E  # fold_in(table init key, this): the maps' keys.

__all__ = ["ROW_PAD_MULTIPLE", "EmbeddingEngine", "Routing", "ShardingType", "TableGroup"]


@dataclasses.dataclass(frozen=True)
class _Dynamic:
  """A dynamic table in the engine: its map's spec, the batch columns of its features' ids, its
  group, its first row there, its init scale and its index among the engine's tables."""
  spec: dynamic.DynamicSpec
  columns: np.ndarray
  group: TableGroup
  offset: int
  scale: float
  index: int


@flax.struct.dataclass
class Routing:
  """Where a batch's ids go, computed once per step: for each group the global rows [B, T_g]
  (-1 = padding), which of the batch's slots hold an id (`valid_bt`, for pooling), and for groups
  whose exchange has a fixed capacity whether this step takes the exact fallback (`fallback`)."""
  rows: dict[str, jax.Array]
  valid_bt: jax.Array
  fallback: dict[str, jax.Array]

  def dropped(self, drop: jax.Array) -> "Routing":
    """Every id padding when `drop` (a skipped step touches no row); otherwise unchanged."""
    return self.replace(rows={k: jnp.where(drop, -1, v) for k, v in self.rows.items()})


class EmbeddingEngine:
  """Owns the embedding tables of a model: init, shardings, routing, lookup, pooling, sparse updates."""

  def __init__(self, tables: Sequence[EmbeddingTableConfig], slots: FeatureSlots, mesh: jax.sharding.Mesh, *,
               batch_axes: Sequence[str], shard_axes: Sequence[str], default_sharding: str = "row_wise",
               default_optimizer: str = "row_wise_adagrad", optimizer_args: dict[str, dict] | None = None,
               fold_ids: bool = False, exchange_capacity: float = 1.25, host_exchange_capacity: float = 1.25):
    """fold_ids: map ids >= vocab to id % vocab (tables shrunk by data.row_scale) instead of
    treating them as padding. exchange_capacity: row_wise's all-to-all room per owner shard, as a
    multiple of an even share of a device's ids (rankjax/embedding/sharding/row_wise.py);
    host_exchange_capacity: table_row_wise's room across hosts, of an even share of a host's ids
    (rankjax/embedding/sharding/table_row_wise.py)."""
    self.slots, self.mesh, self.fold_ids = slots, mesh, fold_ids
    # A dynamic table's ids become rows 0..capacity (the last the default row) before routing; a
    # static table with `rows` set hashes its ids into that many rows (id mod rows).
    tables = [with_rows(t) for t in tables]
    self.user_tables = tuple(tables)
    # Quotient-remainder tables become two internal tables; the remainder rows get extra slots.
    internal, remainder_of = [], {}
    for t in tables:
      if t.qr_buckets:
        quotient_rows, remainder_rows = quotient_remainder.qr_table_sizes(t.vocab_size, t.qr_buckets)
        internal.append(dataclasses.replace(t, name=f"{t.name}/quotient", qr_buckets=0, vocab_size=quotient_rows))
        remainder_of[t.name] = len(internal)
        internal.append(dataclasses.replace(t, name=f"{t.name}/remainder", qr_buckets=0,
                                            vocab_size=remainder_rows, feature_names=()))
      else:
        internal.append(t)
    self.tables = tuple(internal)
    self.batch_axes = tuple(a for a in batch_axes if mesh.shape[a] > 1)
    self.shard_axes = tuple(a for a in shard_axes if mesh.shape[a] > 1)
    if not set(self.shard_axes) <= set(self.batch_axes):
      raise ValueError(f"table shard axes {self.shard_axes} must be batch axes too ({self.batch_axes})")
    self.replica_axes = tuple(a for a in self.batch_axes if a not in self.shard_axes)
    self.num_shards = int(np.prod([mesh.shape[a] for a in self.shard_axes]))
    self.num_hosts = mesh.shape[HOST_AXIS] if HOST_AXIS in self.shard_axes else 1  # table_row_wise's hosts.
    self.axes = MeshAxes(mesh, self.batch_axes, self.shard_axes, self.replica_axes, self.num_shards)
    optimizer_args = optimizer_args or {}

    # A feature served by several tables (first- and second-order embeddings of one feature, one
    # per tower, ...) is looked up once per table: its key is "FEATURE@TABLE" instead of FEATURE.
    serving: dict[str, list[int]] = {}
    for i, t in enumerate(self.tables):
      for f in t.feature_names:
        serving.setdefault(f, []).append(i)
    missing = [f for f in slots.names if f not in serving]
    if missing:
      raise ValueError(f"features without a table: {missing}")
    names, hotness, source, key_table = [], [], [], []
    for name, h, start in zip(slots.names, slots.hotness, slots.start):
      for i in serving[name]:
        names.append(name if len(serving[name]) == 1 else f"{name}@{self.tables[i].name}")
        hotness.append(h)
        source.extend(range(int(start), int(start) + h))
        key_table.append(i)
    self.batch_slots = slots  # The batch's id columns.
    self.slots = FeatureSlots(tuple(names), tuple(hotness))  # One per (feature, table): the output keys.
    # Batch id column of each slot; None when every feature has one table (slots = columns).
    self._slot_source = None if len(names) == len(slots.names) else np.array(source, np.int32)
    slot_table = np.repeat(np.array(key_table, np.int64), hotness)
    self.combiners = [self.tables[i].combiner for i in key_table]
    self.num_output_vectors = num_output_vectors(self.slots, self.combiners)  # What the model receives.
    self._feature_dim = {n: self.tables[i].dim for n, i in zip(names, key_table)}
    user_table = {t.name: t for t in self.user_tables}
    slot_user = [user_table[self.tables[i].name.removesuffix("/quotient")] for i in slot_table]
    self._slot_vocab = np.array([t.vocab_size for t in slot_user], np.int32)  # Ids valid per slot.
    self._slot_fold = np.array([fold_ids or bool(t.rows) for t in slot_user], bool)  # Ids folded mod vocab.
    # Raw 64-bit ids (id_bits 64): a hashed table's batch columns are hashed from both words first.
    self.raw_ids = any(t.id_bits == 64 for t in self.user_tables)
    for t in self.user_tables:
      check_raw_id_table(t)
    self._raw_hashed_columns = np.array(sorted({
        int(c) for t in self.user_tables if t.id_bits == 64 and t.rows for f in t.feature_names
        for c in range(int(slots.start[slots.names.index(f)]), int(slots.start[slots.names.index(f)])
                       + slots.hotness[slots.names.index(f)])}), np.int32)
    self._qr_slots = np.array([s for s, t in enumerate(slot_user) if t.qr_buckets], np.int32)
    self._qr_buckets = np.array([slot_user[s].qr_buckets for s in self._qr_slots], np.int32)
    slot_table = np.concatenate([slot_table, [remainder_of[slot_user[s].name] for s in self._qr_slots]]).astype(np.int64)

    keyed: dict[tuple, list[int]] = {}
    for i, t in enumerate(self.tables):
      sharding = ShardingType(t.sharding or default_sharding)
      SHARDINGS[sharding].check_table(t, self.num_shards)
      if sharding == ShardingType.TABLE_ROW_WISE and self.num_hosts > 1 and self.shard_axes[0] != HOST_AXIS:
        raise ValueError(f"table {t.name}: table_row_wise needs the {HOST_AXIS!r} axis first among the table "
                         f"shard axes {self.shard_axes} (mesh.rules' table_rows), so that a host's devices hold "
                         "contiguous row blocks")
      keyed.setdefault((sharding, t.optimizer or default_optimizer, t.dim, t.dtype), []).append(i)
    self.groups: list[TableGroup] = []
    for (sharding, opt_name, dim, dtype), ids in keyed.items():
      group_tables = [self.tables[i] for i in ids]
      group_slots = np.flatnonzero(np.isin(slot_table, ids)).astype(np.int32)
      local_table = np.searchsorted(ids, slot_table[group_slots])
      layout = SHARDINGS[sharding].layout(group_tables, self.num_shards, local_table, num_hosts=self.num_hosts)
      self.groups.append(TableGroup(
          name=f"{sharding.value}_{opt_name}_d{dim}_{dtype}", sharding=sharding,
          optimizer=optimizers.make(opt_name, **optimizer_args.get(opt_name, {})), dim=dim,
          dtype=DTYPES[dtype], tables=tuple(group_tables), table_ids=np.array(ids, np.int32), layout=layout,
          slots=group_slots, slot_offset=np.asarray(layout.table_offsets, np.int64)[local_table].astype(np.int32),
          slot_vocab=np.array([group_tables[j].vocab_size for j in local_table], np.int32),
          exchange_capacity=exchange_capacity, host_exchange_capacity=host_exchange_capacity))
    self.dynamic = self._dynamic_tables(serving)
    # Per dim: its groups, and the order that puts their concatenated slots in engine slot order.
    self.dims = tuple(sorted({g.dim for g in self.groups}))
    self._groups_of_dim = {d: [g for g in self.groups if g.dim == d] for d in self.dims}
    self._slot_order = {d: np.argsort(np.concatenate([g.slots for g in gs]), kind="stable")
                        for d, gs in self._groups_of_dim.items()}

  def _dynamic_tables(self, serving: dict[str, list[int]]) -> dict[str, "_Dynamic"]:
    """Each dynamic table's map spec, its columns of the batch's ids, and where its rows live."""
    out = {}
    starts = dict(zip(self.batch_slots.names, self.batch_slots.start))
    hotness = dict(zip(self.batch_slots.names, self.batch_slots.hotness))
    for i, t in enumerate(self.tables):
      if t.kind != "dynamic":
        continue
      shared = [f for f in t.feature_names if len(serving[f]) > 1]
      if shared:
        raise ValueError(f"table {t.name}: dynamic, but feature {shared[0]!r} is served by another table too")
      group = next(g for g in self.groups if i in g.table_ids)
      offset = int(group.table_offsets[list(group.table_ids).index(i)])
      columns = np.concatenate([np.arange(starts[f], starts[f] + hotness[f]) for f in t.feature_names])
      spec = dynamic.DynamicSpec.of(t)
      scale = 1.0 / np.sqrt(t.vocab_size) if t.initializer == "uniform" else 0.0
      out[t.name] = _Dynamic(spec, columns.astype(np.int32), group, offset, scale, index=i)
    return out

  def _sharding(self, group: TableGroup):
    """The module that runs a group's collectives: without shard axes every type is local."""
    sharding = SHARDINGS[group.sharding]
    return SHARDINGS[ShardingType.REPLICATED] if not self.shard_axes and sharding.local_without_shards else sharding

  @property
  def dim(self) -> int:
    """The embedding dim, when every table has the same."""
    if len(self.dims) != 1:
      raise ValueError(f"the tables have several dims {self.dims}: use the per-dim views")
    return self.dims[0]

  def feature_dim(self, feature: str) -> int:
    """The embedding dim of a feature's vectors."""
    return self._feature_dim[feature]

  # ---- Shardings and init.

  def shardings(self) -> dict[str, dict[str, NamedSharding]]:
    out = {g.name: {k: NamedSharding(self.mesh, spec)
                    for k, spec in SHARDINGS[g.sharding].state_specs(g, self.axes).items()}
           for g in self.groups}
    if self.dynamic:  # The maps are replicated; a map in pieces is split over the table-row axes.
      out[DYNAMIC] = {name: {k: NamedSharding(self.mesh, self._map_spec(d.spec, k)) for k in self._abstract_map(d)}
                      for name, d in self.dynamic.items()}
    return out

  @staticmethod
  def _init_map(spec: dynamic.DynamicSpec, key_data: jax.Array) -> dict[str, jax.Array]:
    return (dynamic_shards.init if spec.shards > 1 else dynamic.init_map)(spec, key_data)

  def _abstract_map(self, d: _Dynamic) -> dict[str, jax.ShapeDtypeStruct]:
    return jax.eval_shape(lambda: self._init_map(d.spec, jnp.zeros((2,), jnp.uint32)))

  def init(self, key: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """Tables and optimizer state; call under jit with out_shardings=self.shardings().

    Each device writes only its own shard of a table (inside shard_map), block by block.
    """
    state = {}
    for g in self.groups:
      state[g.name] = {"table": self._init_table(g, key), **g.optimizer.init(g.num_rows, g.dim)}
    if self.dynamic:  # The default row starts at zero: what an id unknown at eval reads if never trained.
      for d in self.dynamic.values():
        arrays = state[d.group.name]
        arrays["table"] = arrays["table"].at[d.offset + d.spec.capacity].set(0)
      map_key = jax.random.fold_in(key, DYNAMIC_KEY_STREAM)
      state[DYNAMIC] = {name: self._init_map(d.spec, jax.random.key_data(jax.random.fold_in(map_key, d.index)))
                        for name, d in self.dynamic.items()}
    return state

  def _init_table(self, g: TableGroup, key: jax.Array) -> jax.Array:
    scales = np.array([1.0 / np.sqrt(t.vocab_size) if t.initializer == "uniform" else 0.0 for t in g.tables])
    spec = SHARDINGS[g.sharding].table_spec(self.axes)
    sharded_rows, sharded_cols = spec != P() and spec[0] is not None, spec != P() and spec[0] is None
    S = self.shard_axes

    def local_init(key):
      me = jax.lax.axis_index(S) if S and spec != P() else 0
      return init_stacked(
          key, num_rows=g.num_rows // self.num_shards if sharded_rows else g.num_rows,
          dim=g.dim // self.num_shards if sharded_cols else g.dim,
          row_offset=me * g.rows_per_shard if sharded_rows else 0,
          col_offset=me * (g.dim // self.num_shards) if sharded_cols else 0,
          table_offsets=g.table_offsets, table_ids=g.table_ids,
          vocab_sizes=np.array([t.vocab_size for t in g.tables]), scales=scales, dtype=g.dtype)

    return self.axes.shard_map(local_init, (P(),), spec)(key)

  # ---- Dynamic tables: raw ids -> rows, before routing.

  def admit(self, state: dict, ids_bt: jax.Array, step: jax.Array, ids_hi_bt: jax.Array | None = None
            ) -> tuple[dict, jax.Array, dict[str, jax.Array]]:
    """A train step's map updates: (state with the maps and the new ids' fresh rows, the batch's
    ids with each dynamic table's raw ids replaced by its rows, stats summed over the dynamic
    tables: embedding_dynamic_{admitted,evicted,pending,overflow} and the mean occupancy).
    `ids_hi_bt` holds the high words of 64-bit ids (`ids_bt` their low words), when the data has them."""
    ids_bt = self._hash_raw(ids_bt, ids_hi_bt)
    if not self.dynamic:
      return state, ids_bt, {}
    state, maps, totals = dict(state), dict(state[DYNAMIC]), {}
    with jax.named_scope("embedding_dynamic_admit"):
      for name, d in self.dynamic.items():
        hi = ids_hi_bt[:, d.columns] if d.spec.wide else None
        admit = self._admit_pieces if d.spec.shards > 1 else dynamic.admit
        maps[name], rows, fresh_rows, fresh_ids, stats = admit(d.spec, maps[name], ids_bt[:, d.columns], step, hi)
        ids_bt = ids_bt.at[:, d.columns].set(rows)
        state[d.group.name] = self._fresh(d, state[d.group.name], fresh_rows, fresh_ids, maps[name]["key"])
        for k, v in stats.items():
          totals[f"embedding_dynamic_{k}"] = totals.get(f"embedding_dynamic_{k}", 0.0) + v.astype(jnp.float32)
    totals["embedding_dynamic_occupancy"] = totals["embedding_dynamic_occupancy"] / len(self.dynamic)
    state[DYNAMIC] = maps
    return state, ids_bt, totals

  def _fresh(self, d: _Dynamic, arrays: dict, fresh_rows: jax.Array, fresh_ids: tuple[jax.Array, jax.Array],
             key: jax.Array) -> dict:
    """The group's arrays with the rows new ids took initialised from the ids and their
    optimizer state reset to its initial value."""
    g = d.group
    at = jnp.where(fresh_rows >= 0, d.offset + fresh_rows, g.num_rows)  # Out of range: dropped.
    out = dict(arrays)
    values = dynamic.fresh_values(key, fresh_ids, g.dim, d.scale)
    out["table"] = arrays["table"].at[at].set(values.astype(arrays["table"].dtype), mode="drop")
    initial = g.optimizer.init(1, g.dim)
    for k in g.optimizer.state_is_per_row():
      out[k] = arrays[k].at[at].set(jnp.broadcast_to(initial[k][0], (at.shape[0], *arrays[k].shape[1:])),
                                    mode="drop")
    return out

  def map_ids(self, state: dict, ids_bt: jax.Array, ids_hi_bt: jax.Array | None = None) -> jax.Array:
    """Eval and serving: each dynamic table's raw ids -> its rows (unknown ids: the default row)."""
    ids_bt = self._hash_raw(ids_bt, ids_hi_bt)
    for name, d in self.dynamic.items():
      hi = ids_hi_bt[:, d.columns] if d.spec.wide else None
      if d.spec.shards > 1:
        rows = self._lookup_pieces(d.spec, state[DYNAMIC][name], ids_bt[:, d.columns], hi)
      else:
        rows = dynamic.lookup(state[DYNAMIC][name], ids_bt[:, d.columns], hi)
      ids_bt = ids_bt.at[:, d.columns].set(rows)
    return ids_bt

  # A map in pieces (dynamic_shards): on the table-row axes when they divide the pieces, else whole
  # on every device. Each device updates its pieces from their slices of the batch's distinct ids;
  # rows combine by pmax.

  def _pieces_split(self, spec: dynamic.DynamicSpec) -> bool:
    return spec.shards > 1 and self.num_shards > 1 and spec.shards % self.num_shards == 0

  def _map_spec(self, spec: dynamic.DynamicSpec, key: str) -> P:
    return P(self.shard_axes) if self._pieces_split(spec) and key not in dynamic_shards.SHARED else P()

  def _on_pieces(self, spec: dynamic.DynamicSpec, pieces: dict, fn: Callable, reduce: Callable,
                 out_specs: Callable, *args):
    """fn(pieces, first piece, *args) on the pieces each device holds, then `reduce(outputs, axes)`
    (collectives over the table-row axes); `out_specs(the pieces' specs)` describes the outputs."""
    if not self._pieces_split(spec):
      return fn(pieces, jnp.int32(0), *args)
    axes, local = self.shard_axes, spec.shards // self.num_shards
    specs = {k: self._map_spec(spec, k) for k in pieces}

    def on_device(pieces, *args):
      return reduce(fn(pieces, jax.lax.axis_index(axes) * local, *args), axes)

    return self.axes.shard_map(on_device, (specs, *(P(),) * len(args)), out_specs(specs))(pieces, *args)

  def _admit_pieces(self, spec: dynamic.DynamicSpec, pieces: dict, ids: jax.Array, step: jax.Array,
                    ids_hi: jax.Array | None):
    """dynamic.admit's results for a map in pieces (fresh rows and ids those of the batch's distinct ids)."""
    words = dynamic.key_words(ids.reshape(-1), None if ids_hi is None else ids_hi.reshape(-1))
    u, counts = dynamic.distinct(words)

    def reduce(out, axes):
      new, rows, fresh, stats = out
      return new, jax.lax.pmax(rows, axes), jax.lax.pmax(fresh, axes), {k: jax.lax.psum(v, axes) for k, v in stats.items()}

    new, rows, fresh, stats = self._on_pieces(
        spec, pieces, lambda p, first, u, c, t: dynamic_shards.admit(spec, p, first, u, c, t), reduce,
        lambda specs: (specs, P(), P(), P()), u, counts, step)
    return new, dynamic.at_ids(u, rows, words).reshape(ids.shape), fresh, u, dict(stats, occupancy=stats["occupancy"] / spec.shards)

  def _lookup_pieces(self, spec: dynamic.DynamicSpec, pieces: dict, ids: jax.Array, ids_hi: jax.Array | None):
    words = dynamic.key_words(ids.reshape(-1), None if ids_hi is None else ids_hi.reshape(-1))
    rows = self._on_pieces(spec, pieces, lambda p, first, w: dynamic_shards.lookup(spec, p, first, w),
                           lambda rows, axes: jax.lax.pmax(rows, axes), lambda specs: P(), words)
    return rows.reshape(ids.shape)

  def _hash_raw(self, ids_bt: jax.Array, ids_hi_bt: jax.Array | None) -> jax.Array:
    """Raw 64-bit ids of hashed tables -> 31-bit ids (dynamic.hash_words; padding stays -1), which
    routing folds into the tables' rows."""
    if self.raw_ids and ids_hi_bt is None:
      raise ValueError("the tables take 64-bit ids: the batch's high words (ids_hi_bt) are missing")
    if not len(self._raw_hashed_columns):
      return ids_bt
    cols = self._raw_hashed_columns
    lo, hi = ids_bt[:, cols], ids_hi_bt[:, cols]
    return ids_bt.at[:, cols].set(jnp.where((lo == -1) & (hi == -1), -1, dynamic.hash_words(hi, lo)))

  # ---- Ids -> rows.

  def valid(self, ids_bt: jax.Array) -> jax.Array:
    """Slots holding an id of the table (padding is -1; unless folding, ids >= vocab count as
    padding); `ids_bt` in slot order (see `route`)."""
    if self._slot_fold.all():
      return ids_bt >= 0
    return (ids_bt >= 0) & (jnp.asarray(self._slot_fold) | (ids_bt < jnp.asarray(self._slot_vocab)))

  def route(self, ids_bt: jax.Array) -> Routing:
    """[B, T] batch ids -> the routing of the step: ids copied to one slot per table of a feature,
    folded when data.row_scale shrank the tables,
    split into quotient and remainder for QR tables (the remainder gets an extra slot), then global
    rows of each group's stacked array (-1 = padding)."""
    with jax.named_scope("embedding_route"):
      if self._slot_source is not None:
        ids_bt = ids_bt[:, self._slot_source]
      valid_bt = self.valid(ids_bt)
      if self._slot_fold.any():
        ids_bt = jnp.where(ids_bt >= 0, jnp.where(jnp.asarray(self._slot_fold), ids_bt % jnp.asarray(self._slot_vocab),
                                                  ids_bt), -1)
      ids_bt = jnp.where(self.valid(ids_bt), ids_bt, -1)
      if self._qr_slots.size:
        qr_ids = ids_bt[:, self._qr_slots]
        quotient, remainder = quotient_remainder.qr_split(qr_ids, self._qr_buckets)
        quotient, remainder = jnp.where(qr_ids >= 0, quotient, -1), jnp.where(qr_ids >= 0, remainder, -1)
        ids_bt = jnp.concatenate([ids_bt.at[:, self._qr_slots].set(quotient), remainder], axis=1)
      rows, fallback = {}, {}
      for g in self.groups:
        ids = ids_bt[:, g.slots]
        ok = (ids >= 0) & (ids < jnp.asarray(g.slot_vocab))
        rows[g.name] = jnp.where(ok, ids + jnp.asarray(g.slot_offset), -1)
        flag = self._sharding(g).exchange_fallback(g, self.axes, rows[g.name])
        if flag is not None:
          fallback[g.name] = flag
      return Routing(rows=rows, valid_bt=valid_bt, fallback=fallback)

  def exchange_fallback(self, routing: Routing) -> jax.Array | None:
    """The share of this step's capacity-bound exchanges that took the exact fallback path (a
    train metric, `embedding_exchange_fallback`); None when no group has such an exchange."""
    if not routing.fallback:
      return None
    return jnp.mean(jnp.stack([f.astype(jnp.float32) for f in routing.fallback.values()]))

  @staticmethod
  def _extra(g: TableGroup, routing: Routing) -> dict:
    return {"fallback": routing.fallback[g.name]} if g.name in routing.fallback else {}

  def _routing(self, ids_or_routing: jax.Array | Routing) -> Routing:
    return ids_or_routing if isinstance(ids_or_routing, Routing) else self.route(ids_or_routing)

  def lookup_groups(self, state: dict, routing: Routing) -> dict[str, jax.Array]:
    """Group name -> [B, T_g, D_g] float32 rows (zeros for padding), batch-sharded: what the
    gradient is taken w.r.t. and `apply_gradients` takes back."""
    with jax.named_scope("embedding_lookup"):
      return {g.name: self._sharding(g).lookup(g, self.axes, state[g.name]["table"], routing.rows[g.name],
                                               **self._extra(g, routing))
              for g in self.groups}

  def _rows_of_dim(self, rows: dict[str, jax.Array], dim: int) -> jax.Array:
    """The dim's groups' rows in engine slot order: [B, T_dim, dim] (QR remainder slots last)."""
    groups = self._groups_of_dim[dim]
    if len(groups) == 1:
      return rows[groups[0].name]
    return jnp.concatenate([rows[g.name] for g in groups], axis=1)[:, self._slot_order[dim]]

  def lookup(self, state: dict, ids_or_routing: jax.Array | Routing) -> jax.Array:
    """[B, T] ids -> [B, T_internal, D] float32 rows in slot order (tables of one dim): T_internal
    = T plus one slot per QR slot (its remainder row); `pool` combines them."""
    return self._rows_of_dim(self.lookup_groups(state, self._routing(ids_or_routing)), self.dim)

  def pool_by_dim(self, rows: dict[str, jax.Array], routing: Routing
                  ) -> tuple[dict[int, jax.Array], dict[str, jax.Array]]:
    """Looked-up rows per group -> (dim -> [B, V_dim, dim] vectors of that dim's features in
    order, sequence feature -> its [B, H] mask): what rankjax.model_inputs.KeyedEmbeddings holds."""
    pooled = {dim: self._pool_dim(self._rows_of_dim(rows, dim), dim, routing) for dim in self.dims}
    masks = {name: routing.valid_bt[:, start:start + h]
             for name, start, h, combiner in zip(self.slots.names, self.slots.start, self.slots.hotness, self.combiners)
             if combiner == "none"}
    return pooled, masks

  def pool(self, rows_btd: jax.Array, ids_or_routing: jax.Array | Routing) -> jax.Array:
    """`lookup`'s rows -> [B, num_output_vectors, D] per-feature vectors (tables of one dim)."""
    return self._pool_dim(rows_btd, self.dim, self._routing(ids_or_routing))

  def _pool_dim(self, rows_btd: jax.Array, dim: int, routing: Routing) -> jax.Array:
    """A dim's rows in slot order -> its features' vectors: QR features add quotient and remainder
    rows, then each feature's combiner pools its slots (padding never counts)."""
    features = [f for f, name in enumerate(self.slots.names) if self._feature_dim[name] == dim]
    if len(features) == len(self.slots.names):
      slots, valid_bt, sub_slots = np.arange(self.slots.num_slots), routing.valid_bt, self.slots
    else:
      slots = np.flatnonzero(np.isin(self.slots.slot_feature, features))
      valid_bt = routing.valid_bt[:, slots]
      sub_slots = FeatureSlots(tuple(self.slots.names[f] for f in features),
                               tuple(self.slots.hotness[f] for f in features))
    qr = self._qr_slots[np.isin(self._qr_slots, slots)]
    if qr.size:  # Remainder rows follow the dim's own slots, in the order of its QR slots.
      rows_btd = rows_btd[:, :len(slots)].at[:, np.searchsorted(slots, qr)].add(rows_btd[:, len(slots):])
    return pool(rows_btd, valid_bt, sub_slots, [self.combiners[f] for f in features])

  # ---- Sparse update.

  def apply_gradients(self, state: dict, ids_or_routing: jax.Array | Routing,
                      grads: dict[str, jax.Array] | jax.Array, step: jax.Array) -> dict:
    """Routes row gradients (per group, as `lookup_groups` gave the rows, or one [B, T_internal, D]
    array in slot order) to the shards that own the rows and updates those rows only."""
    routing = self._routing(ids_or_routing)
    if not isinstance(grads, dict):
      grads = {g.name: grads if len(self.groups) == 1 else grads[:, g.slots] for g in self.groups}
    with jax.named_scope("sparse_update"):
      out = {g.name: self._sharding(g).update(g, self.axes, state[g.name], routing.rows[g.name], grads[g.name], step,
                                              **self._extra(g, routing))
             for g in self.groups}
    if DYNAMIC in state:  # The maps (updated by `admit`) pass through.
      out[DYNAMIC] = state[DYNAMIC]
    return out

  # ---- Checkpoint layouts: restore onto a mesh or plan with another row layout.

  def layout_descriptor(self) -> dict:
    """Where each table's rows live; saved with a checkpoint (JSON-able)."""
    out = {"groups": {g.name: {"num_rows": int(g.num_rows), "dim": int(g.dim)} for g in self.groups},
           "tables": {t.name: [g.name, int(off)] for g in self.groups for t, off in zip(g.tables, g.table_offsets)}}
    if self.dynamic:
      out[DYNAMIC] = {name: dataclasses.asdict(d.spec) for name, d in self.dynamic.items()}
    return out

  def _check_dynamic(self, descriptor: dict) -> None:
    """A checkpoint's dynamic tables must be these, with the same maps (capacity, policy)."""
    saved = descriptor.get(DYNAMIC, {})
    for name in sorted(set(saved) | set(self.dynamic)):
      now = dataclasses.asdict(self.dynamic[name].spec) if name in self.dynamic else None
      if saved.get(name) != now:
        raise ConfigError("embedding.overrides", f"table {name}: the checkpoint's dynamic map is "
                          f"{saved.get(name) or 'absent'}, the config's {now or 'absent'}: restore with the same "
                          "kind, capacity and policy, or point --workdir elsewhere")

  def abstract_state_for(self, descriptor: dict) -> dict:
    """Abstract embedding state in a saved layout, sharded over rows where they divide evenly."""
    out = {}
    for name, meta in descriptor["groups"].items():
      table_name = next(t for t, (gname, _) in descriptor["tables"].items() if gname == name)
      group = self._group_of(table_name)
      rows = meta["num_rows"]
      spec = P(self.shard_axes or None) if self.shard_axes and rows % self.num_shards == 0 else P()
      rows_sharding = NamedSharding(self.mesh, spec)
      two_d = NamedSharding(self.mesh, P(*spec, None)) if spec != P() else rows_sharding
      out[name] = {"table": jax.ShapeDtypeStruct((rows, meta["dim"]), group.dtype, sharding=two_d)}
      for key, per_row in group.optimizer.state_is_per_row().items():
        shape = (rows,) if per_row else (rows, meta["dim"])
        out[name][key] = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rows_sharding if per_row else two_d)
    self._check_dynamic(descriptor)
    if self.dynamic:
      out[DYNAMIC] = {name: {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                                     sharding=NamedSharding(self.mesh, self._map_spec(d.spec, k)))
                             for k, v in self._abstract_map(d).items()}
                      for name, d in self.dynamic.items()}
    return out

  def _group_of(self, table_name: str) -> TableGroup:
    return next(g for g in self.groups if any(t.name == table_name for t in g.tables))

  def relayout(self, old_state: dict, descriptor: dict) -> dict:
    """Moves every table's rows (and optimizer state rows) from a saved layout into this one.

    Jit it with out_shardings=self.shardings(); it costs a copy of the tables once, at restore.
    """
    new_state = {}
    for g in self.groups:
      arrays = {}
      keys = ["table", *g.optimizer.state_is_per_row()]
      for key in keys:
        template = jnp.zeros((g.num_rows,) if key != "table" and g.optimizer.state_is_per_row()[key]
                             else (g.num_rows, g.dim), g.dtype if key == "table" else jnp.float32)
        for t, offset in zip(g.tables, g.table_offsets):
          old_group, old_offset = descriptor["tables"][t.name]
          if key not in old_state[old_group]:
            raise ValueError(f"table {t.name}: checkpoint has no optimizer state {key!r} (optimizer changed?)")
          rows = jax.lax.dynamic_slice_in_dim(old_state[old_group][key], old_offset, t.vocab_size, axis=0)
          template = jax.lax.dynamic_update_slice_in_dim(template, rows.astype(template.dtype), int(offset), axis=0)
        arrays[key] = template
      new_state[g.name] = arrays
    self._check_dynamic(descriptor)
    if self.dynamic:  # Replicated, and rows keep their numbers within a table: moved as they are.
      new_state[DYNAMIC] = old_state[DYNAMIC]
    return new_state

  # ---- Host views.

  def table_values(self, state: dict) -> dict[str, np.ndarray]:
    """Every table as a float32 host array [vocab, dim], whatever its layout (tests, export)."""
    out = {}
    for g in self.groups:
      full = np.asarray(jax.device_get(state[g.name]["table"])).astype(np.float32)
      for t, off in zip(g.tables, g.table_offsets):
        out[t.name] = full[off:off + t.vocab_size]
    return out
