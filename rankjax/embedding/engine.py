"""The sharded embedding engine: lookups and fused sparse updates for every sharding type.

Tables with the same sharding type, optimizer, dim and dtype are stacked into one array (a
"group"). Lookups and updates run in `shard_map` over the mesh; tables are split over the
`table_rows` mesh axes (S) and replicated over the other batch axes (R):

  replicated   whole table everywhere; lookup is local; the update all-gathers (ids, grads).
  row_wise     contiguous row blocks; lookup: all-gather ids over S, masked local gather,
               reduce-scatter the rows back; update: all-gather (ids, grads), owner rows only.
  table_wise   whole tables per shard; lookup: all-gather ids over S, gather owned slots,
               all-to-all back; update: the reverse all-to-all, then all-gather over R.
  column_wise  dim/S columns of every table per shard; lookup: all-gather ids over S, local
               gather, all-to-all of column blocks; update: reverse all-to-all.
  gspmd_row_wise  the baseline for comparison only: a row-sharded `take` and scatter left to
               GSPMD (all-gather ids + masked gather + all-reduce).

Gradients arrive w.r.t. the looked-up rows; the sparse optimizer updates only the touched rows.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax.embedding import hashing, optimizers
from rankjax.embedding.tables import DTYPES, EmbeddingTableConfig, FeatureSlots, init_stacked, num_output_vectors, pool


ROW_PAD_MULTIPLE = 1024


class ShardingType(enum.StrEnum):
  REPLICATED = "replicated"
  TABLE_WISE = "table_wise"
  ROW_WISE = "row_wise"
  COLUMN_WISE = "column_wise"
  GSPMD_ROW_WISE = "gspmd_row_wise"


@dataclasses.dataclass
class TableGroup:
  """Tables stacked into one array, with the static maps from batch slots to its rows."""
  name: str
  sharding: ShardingType
  optimizer: optimizers.SparseOptimizer
  dim: int
  dtype: Any
  tables: tuple[EmbeddingTableConfig, ...]
  table_ids: np.ndarray  # [tables] index in the engine's table list (the init key).
  table_offsets: np.ndarray  # [tables] first row of each table in the group's global array.
  num_rows: int  # Rows of the global array, padding included.
  rows_per_shard: int
  slots: np.ndarray  # [T_g] engine slots served by this group.
  slot_offset: np.ndarray  # [T_g] row offset of each slot's table.
  slot_vocab: np.ndarray  # [T_g]
  owned_slots: np.ndarray | None = None  # table_wise: [S, K] group slot positions, -1 = padding.
  slot_position: np.ndarray | None = None  # table_wise: [T_g] owner * K + position.


def _layout(tables: Sequence[EmbeddingTableConfig], sharding: ShardingType, num_shards: int, slot_table: np.ndarray):
  """Row offsets of each table, global rows and rows per shard for a group."""
  vocab = np.array([t.vocab_size for t in tables], np.int64)
  if sharding != ShardingType.TABLE_WISE:
    offsets = np.concatenate([[0], np.cumsum(vocab)[:-1]])
    total = int(vocab.sum())
    shards = num_shards if sharding in (ShardingType.ROW_WISE, ShardingType.GSPMD_ROW_WISE) else 1
    # Rows padded to a multiple of lcm(shards, 1024): the same global shape on 1, 2, 4, ... 1024
    # shards, so checkpoints restore across such meshes without a re-layout.
    multiple = np.lcm(shards, ROW_PAD_MULTIPLE) if shards > 1 else 1
    rows = -(-total // multiple) * multiple
    return offsets, rows, rows // shards, None, None
  # Greedy placement: largest table first onto the least-loaded shard.
  load, owner, local = np.zeros(num_shards, np.int64), np.zeros(len(tables), np.int64), np.zeros(len(tables), np.int64)
  for i in sorted(range(len(tables)), key=lambda i: (-vocab[i], i)):
    s = int(np.argmin(load))
    owner[i], local[i] = s, load[s]
    load[s] += vocab[i]
  per_shard = int(max(load.max(), 1))
  offsets = owner * per_shard + local
  slot_owner = owner[slot_table]
  k = max(int(np.bincount(slot_owner, minlength=num_shards).max()), 1)
  owned = -np.ones((num_shards, k), np.int32)
  position = np.zeros(len(slot_table), np.int32)
  fill = np.zeros(num_shards, np.int64)
  for t, s in enumerate(slot_owner):
    owned[s, fill[s]] = t
    position[t] = s * k + fill[s]
    fill[s] += 1
  return offsets, per_shard * num_shards, per_shard, owned, position


class EmbeddingEngine:
  """Owns the embedding tables of a model: init, shardings, lookup, pooling and sparse updates."""

  def __init__(self, tables: Sequence[EmbeddingTableConfig], slots: FeatureSlots, mesh: jax.sharding.Mesh, *,
               batch_axes: Sequence[str], shard_axes: Sequence[str], default_sharding: str = "row_wise",
               default_optimizer: str = "row_wise_adagrad", optimizer_args: dict[str, dict] | None = None,
               fold_ids: bool = False):
    """fold_ids: map ids >= vocab to id % vocab (tables shrunk by data.row_scale) instead of
    treating them as padding."""
    self.slots, self.mesh, self.fold_ids = slots, mesh, fold_ids
    self.user_tables = tuple(tables)
    # Quotient-remainder tables become two internal tables; the remainder rows get extra slots.
    internal, remainder_of = [], {}
    for t in tables:
      if t.qr_buckets:
        quotient_rows, remainder_rows = hashing.qr_table_sizes(t.vocab_size, t.qr_buckets)
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
    optimizer_args = optimizer_args or {}

    feature_table = {}
    for i, t in enumerate(self.tables):
      for f in t.feature_names:
        if f in feature_table:
          raise ValueError(f"feature {f} is served by tables {self.tables[feature_table[f]].name} and {t.name}")
        feature_table[f] = i
    missing = [f for f in slots.names if f not in feature_table]
    if missing:
      raise ValueError(f"features without a table: {missing}")
    slot_table = np.array([feature_table[slots.names[f]] for f in slots.slot_feature], np.int64)
    self.combiners = [self.tables[feature_table[f]].combiner for f in slots.names]
    self.num_output_vectors = num_output_vectors(slots, self.combiners)  # What the model receives.
    user_table = {t.name: t for t in self.user_tables}
    slot_user = [user_table[self.tables[i].name.removesuffix("/quotient")] for i in slot_table]
    self._slot_vocab = np.array([t.vocab_size for t in slot_user], np.int32)  # Ids valid per slot.
    self._qr_slots = np.array([s for s, t in enumerate(slot_user) if t.qr_buckets], np.int32)
    self._qr_buckets = np.array([slot_user[s].qr_buckets for s in self._qr_slots], np.int32)
    slot_table = np.concatenate([slot_table, [remainder_of[slot_user[s].name] for s in self._qr_slots]]).astype(np.int64)

    keyed: dict[tuple, list[int]] = {}
    for i, t in enumerate(self.tables):
      sharding = ShardingType(t.sharding or default_sharding)
      if sharding == ShardingType.COLUMN_WISE and t.dim % self.num_shards:
        raise ValueError(f"table {t.name}: dim {t.dim} is not divisible by {self.num_shards} column shards")
      keyed.setdefault((sharding, t.optimizer or default_optimizer, t.dim, t.dtype), []).append(i)
    self.groups: list[TableGroup] = []
    for (sharding, opt_name, dim, dtype), ids in keyed.items():
      group_tables = [self.tables[i] for i in ids]
      slot_mask = np.isin(slot_table, ids)
      group_slots = np.flatnonzero(slot_mask).astype(np.int32)
      local_table = np.searchsorted(ids, slot_table[group_slots])
      offsets, rows, per_shard, owned, position = _layout(group_tables, sharding, self.num_shards, local_table)
      self.groups.append(TableGroup(
          name=f"{sharding.value}_{opt_name}_d{dim}_{dtype}", sharding=sharding,
          optimizer=optimizers.make(opt_name, **optimizer_args.get(opt_name, {})), dim=dim,
          dtype=DTYPES[dtype], tables=tuple(group_tables), table_ids=np.array(ids, np.int32),
          table_offsets=np.asarray(offsets, np.int64), num_rows=rows, rows_per_shard=per_shard,
          slots=group_slots, slot_offset=np.asarray(offsets, np.int64)[local_table].astype(np.int32),
          slot_vocab=np.array([group_tables[j].vocab_size for j in local_table], np.int32),
          owned_slots=owned, slot_position=position))
    dims = {g.dim for g in self.groups}
    if len(dims) != 1:
      raise ValueError(f"pooled features need one embedding dim, got {sorted(dims)}")
    self.dim = dims.pop()
    # Engine slot order -> position in the concatenation of the groups' outputs.
    self._slot_order = np.argsort(np.concatenate([g.slots for g in self.groups]), kind="stable")

  # ---- Shardings and init.

  def _table_spec(self, group: TableGroup) -> P:
    s = self.shard_axes or None
    if group.sharding == ShardingType.REPLICATED or not s:
      return P()
    if group.sharding == ShardingType.COLUMN_WISE:
      return P(None, s)
    return P(s, None)

  def _state_specs(self, group: TableGroup) -> dict[str, P]:
    table_spec = self._table_spec(group)
    specs = {"table": table_spec}
    for key, per_row in group.optimizer.state_is_per_row().items():
      if not per_row:
        specs[key] = table_spec
      elif group.sharding == ShardingType.COLUMN_WISE or table_spec == P():
        specs[key] = P()
      else:
        specs[key] = P(table_spec[0])
    return specs

  def shardings(self) -> dict[str, dict[str, NamedSharding]]:
    return {g.name: {k: NamedSharding(self.mesh, spec) for k, spec in self._state_specs(g).items()}
            for g in self.groups}

  def init(self, key: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """Tables and optimizer state; call under jit with out_shardings=self.shardings().

    Each device writes only its own shard of a table (inside shard_map), block by block.
    """
    state = {}
    for g in self.groups:
      state[g.name] = {"table": self._init_table(g, key), **g.optimizer.init(g.num_rows, g.dim)}
    return state

  def _init_table(self, g: TableGroup, key: jax.Array) -> jax.Array:
    scales = np.array([1.0 / np.sqrt(t.vocab_size) if t.initializer == "uniform" else 0.0 for t in g.tables])
    spec = self._table_spec(g)
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

    return self._shard_map(local_init, (P(),), spec)(key)

  # ---- Ids -> rows.

  def valid(self, ids_bt: jax.Array) -> jax.Array:
    """Slots holding an id of the table (padding is -1; unless folding, ids >= vocab count as padding)."""
    if self.fold_ids:
      return ids_bt >= 0
    return (ids_bt >= 0) & (ids_bt < jnp.asarray(self._slot_vocab))

  def _internal_ids(self, ids_bt: jax.Array) -> jax.Array:
    """[B, T] user ids -> [B, T_internal] ids of the internal tables (-1 = padding): folded when
    data.row_scale shrank the tables, split into quotient and remainder for QR tables."""
    if self.fold_ids:
      ids_bt = jnp.where(ids_bt >= 0, ids_bt % jnp.asarray(self._slot_vocab), -1)
    ids_bt = jnp.where(self.valid(ids_bt), ids_bt, -1)
    if not self._qr_slots.size:
      return ids_bt
    qr_ids = ids_bt[:, self._qr_slots]
    quotient, remainder = hashing.qr_split(qr_ids, self._qr_buckets)
    quotient, remainder = jnp.where(qr_ids >= 0, quotient, -1), jnp.where(qr_ids >= 0, remainder, -1)
    return jnp.concatenate([ids_bt.at[:, self._qr_slots].set(quotient), remainder], axis=1)

  def _group_rows(self, group: TableGroup, ids_bt: jax.Array) -> jax.Array:
    """Internal ids -> global rows of the group's stacked array (-1 = padding)."""
    ids = ids_bt[:, group.slots]
    ok = (ids >= 0) & (ids < jnp.asarray(group.slot_vocab))
    return jnp.where(ok, ids + jnp.asarray(group.slot_offset), -1)

  def _shard_map(self, fn, in_specs, out_specs):
    return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

  def lookup(self, state: dict, ids_bt: jax.Array) -> jax.Array:
    """[B, T] ids -> [B, T_internal, D] float32 rows (zeros for padding), batch-sharded.

    T_internal = T plus one slot per QR slot (its remainder row); `pool` combines them. The
    gradient w.r.t. these rows is what `apply_gradients` takes.
    """
    with jax.named_scope("embedding_lookup"):
      ids_bt = self._internal_ids(ids_bt)
      outs = [self._lookup_group(g, state[g.name]["table"], self._group_rows(g, ids_bt)) for g in self.groups]
      rows = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
      return rows if len(outs) == 1 else rows[:, self._slot_order]

  def pool(self, rows_btd: jax.Array, ids_bt: jax.Array) -> jax.Array:
    """Looked-up rows -> [B, F, D] per-feature vectors (QR: quotient + remainder, then the combiner)."""
    num_slots = self.slots.num_slots
    if self._qr_slots.size:
      rows_btd = rows_btd[:, :num_slots].at[:, self._qr_slots].add(rows_btd[:, num_slots:])
    return pool(rows_btd, self.valid(ids_bt), self.slots, self.combiners)

  def _lookup_group(self, g: TableGroup, table: jax.Array, rows_bt: jax.Array) -> jax.Array:
    if g.sharding == ShardingType.GSPMD_ROW_WISE:
      ok = rows_bt >= 0
      got = table.at[jnp.where(ok, rows_bt, 0)].get(mode="promise_in_bounds").astype(jnp.float32)
      return got * ok[..., None]
    S, batch = self.shard_axes, P(self.batch_axes or None)
    table_spec = self._table_spec(g)

    def local_gather(table_local, rows):  # rows: local row or -1.
      ok = rows >= 0
      got = table_local.at[jnp.where(ok, rows, 0)].get(mode="promise_in_bounds").astype(jnp.float32)
      return got * ok[..., None]

    if g.sharding == ShardingType.REPLICATED or not S:
      fn = local_gather
    elif g.sharding == ShardingType.ROW_WISE:
      def fn(table_local, rows):
        all_rows = jax.lax.all_gather(rows, S, tiled=True)  # [S*n, T]
        local = all_rows - jax.lax.axis_index(S) * g.rows_per_shard
        mine = (all_rows >= 0) & (local >= 0) & (local < g.rows_per_shard)
        return jax.lax.psum_scatter(local_gather(table_local, jnp.where(mine, local, -1)), S,
                                    scatter_dimension=0, tiled=True)
    elif g.sharding == ShardingType.TABLE_WISE:
      owned = jnp.asarray(g.owned_slots)
      def fn(table_local, rows):
        n = rows.shape[0]
        all_rows = jax.lax.all_gather(rows, S, tiled=True)
        me = jax.lax.axis_index(S)
        my_slots = owned[me]
        r = jnp.where(my_slots >= 0, all_rows[:, jnp.maximum(my_slots, 0)], -1)
        local = jnp.where(r >= 0, r - me * g.rows_per_shard, -1)
        got = local_gather(table_local, local).reshape(self.num_shards, n, owned.shape[1], g.dim)
        recv = jax.lax.all_to_all(got, S, 0, 0, tiled=True)  # [owner, n, K, D]
        flat = recv.transpose(1, 0, 2, 3).reshape(n, -1, g.dim)
        return flat[:, jnp.asarray(g.slot_position)]
    else:  # COLUMN_WISE
      def fn(table_local, rows):
        n, t = rows.shape
        all_rows = jax.lax.all_gather(rows, S, tiled=True)
        got = local_gather(table_local, all_rows).reshape(self.num_shards, n, t, -1)
        recv = jax.lax.all_to_all(got, S, 0, 0, tiled=True)  # [column block, n, T, D/S]
        return recv.transpose(1, 2, 0, 3).reshape(n, t, g.dim)
    return self._shard_map(fn, (table_spec, batch), batch)(table, rows_bt)

  # ---- Sparse update.

  def apply_gradients(self, state: dict, ids_bt: jax.Array, grads_btd: jax.Array, step: jax.Array) -> dict:
    """Routes [B, T, D] row gradients to the shards that own the rows and updates those rows only."""
    with jax.named_scope("sparse_update"):
      ids_bt = self._internal_ids(ids_bt)
      new_state = {}
      for g in self.groups:
        grads = grads_btd[:, g.slots] if len(self.groups) > 1 else grads_btd
        new_state[g.name] = self._update_group(g, state[g.name], self._group_rows(g, ids_bt), grads, step)
      return new_state

  def _update_group(self, g: TableGroup, gstate: dict, rows_bt: jax.Array, grads_btd: jax.Array, step) -> dict:
    opt = g.optimizer

    def apply(gs, rows, grads, step, **kw):
      table, rest = gs["table"], {k: v for k, v in gs.items() if k != "table"}
      table, rest = opt.update(table, rest, rows.reshape(-1), grads.reshape(-1, grads.shape[-1]), step, **kw)
      return {"table": table, **rest}

    if g.sharding == ShardingType.GSPMD_ROW_WISE:
      return apply(gstate, jnp.where(rows_bt >= 0, rows_bt, g.num_rows), grads_btd, step)
    S, R, B = self.shard_axes, self.replica_axes, self.batch_axes
    batch = P(B or None)
    specs = self._state_specs(g)

    def gather(x, axes):
      return jax.lax.all_gather(x, axes, tiled=True) if axes else x

    if g.sharding == ShardingType.REPLICATED or not S:
      def fn(gs, rows, grads, step):
        rows, grads = gather(rows, B), gather(grads, B)
        local_rows = gs["table"].shape[0]
        return apply(gs, jnp.where(rows >= 0, rows, local_rows), grads, step)
    elif g.sharding == ShardingType.ROW_WISE:
      def fn(gs, rows, grads, step):
        rows, grads = gather(rows, B), gather(grads, B)
        local = rows - jax.lax.axis_index(S) * g.rows_per_shard
        mine = (rows >= 0) & (local >= 0) & (local < g.rows_per_shard)
        return apply(gs, jnp.where(mine, local, g.rows_per_shard), grads, step)
    elif g.sharding == ShardingType.TABLE_WISE:
      owned = jnp.asarray(g.owned_slots)
      def fn(gs, rows, grads, step):
        n, k = rows.shape[0], owned.shape[1]
        me = jax.lax.axis_index(S)
        send = grads[:, jnp.maximum(owned.reshape(-1), 0)].reshape(n, self.num_shards, k, g.dim)
        recv = jax.lax.all_to_all(send.transpose(1, 0, 2, 3), S, 0, 0, tiled=True)  # [source, n, K, D]
        all_rows = jax.lax.all_gather(rows, S, tiled=True)
        my_slots = owned[me]
        r = jnp.where(my_slots >= 0, all_rows[:, jnp.maximum(my_slots, 0)], -1)
        local = jnp.where(r >= 0, r - me * g.rows_per_shard, g.rows_per_shard)
        return apply(gs, gather(local, R), gather(recv.reshape(-1, k, g.dim), R), step)
    else:  # COLUMN_WISE
      def fn(gs, rows, grads, step):
        n, t, _ = grads.shape
        send = grads.reshape(n, t, self.num_shards, -1).transpose(2, 0, 1, 3)
        recv = jax.lax.all_to_all(send, S, 0, 0, tiled=True).reshape(self.num_shards * n, t, -1)
        all_rows = jax.lax.all_gather(rows, S, tiled=True)
        local_rows = gs["table"].shape[0]
        return apply(gs, gather(jnp.where(all_rows >= 0, all_rows, local_rows), R), gather(recv, R), step,
                     row_sum=lambda s: jax.lax.psum(s, S), full_dim=g.dim)
    return self._shard_map(fn, (specs, batch, batch, P()), specs)(gstate, rows_bt, grads_btd, step)

  # ---- Checkpoint layouts: restore onto a mesh or plan with another row layout.

  def layout_descriptor(self) -> dict:
    """Where each table's rows live; saved with a checkpoint (JSON-able)."""
    return {"groups": {g.name: {"num_rows": int(g.num_rows), "dim": int(g.dim)} for g in self.groups},
            "tables": {t.name: [g.name, int(off)] for g in self.groups for t, off in zip(g.tables, g.table_offsets)}}

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
