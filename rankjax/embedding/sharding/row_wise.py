"""Row-wise sharding: contiguous row blocks per shard; ids and rows travel by all-to-all.

Each device deduplicates its ids, and since the distinct rows come out sorted and shards own
contiguous blocks, they are already grouped by owner: an all-to-all sends each owner only the
distinct rows it holds (at most `capacity` per owner), and a second one brings those rows back.
The update sends each owner the same distinct rows with their summed gradients. Per device and
step that is shards x capacity x (2 ids + 2 rows), instead of all-gathering every row gradient of
the batch (BENCHMARKS.md, "Collectives per step").

Capacity is static (`TableGroup.exchange_capacity` x an even share of a device's ids, rounded up
to 8). A step in which some device has more distinct rows for one owner than that takes the exact
all-gather path instead (lookup: all-gather the ids, masked local gathers, reduce-scatter the rows;
update: all-gather rows and gradients): every device agrees on the branch through one all-reduce of
a flag, which the engine reports as `embedding_exchange_fallback` in the train metrics.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rankjax.embedding import optimizers
from rankjax.embedding.sharding.base import (MeshAxes, Sharding, ShardingType, TableGroup, all_gather,
                                             apply_optimizer, local_gather)

FALLBACK_SCOPE = "row_wise_all_gather_fallback"  # Named scope of the fallback's collectives (HLO metadata).


def capacity(group: TableGroup, axes: MeshAxes, local_ids: int) -> int:
  """Distinct rows a device may send one owner in a step: exchange_capacity x local_ids / shards,
  rounded up to a multiple of 8, at most local_ids (which can never overflow)."""
  share = math.ceil(group.exchange_capacity * local_ids / axes.num_shards / 8) * 8
  return max(1, min(local_ids, share))


def local_ids(axes: MeshAxes, rows_bt: jax.Array) -> int:
  """Ids a device holds of a batch-sharded [B, T] array of rows."""
  return rows_bt.shape[0] // max(1, math.prod(axes.mesh.shape[a] for a in axes.batch)) * rows_bt.shape[1]


def _owner_bounds(sorted_unique: jax.Array, group: TableGroup, num_shards: int) -> jax.Array:
  """[S + 1] first position of each owner's rows in ascending distinct rows (the last entry: how many
  are real rows; the rest are the padding value group.num_rows)."""
  starts = jnp.arange(num_shards + 1, dtype=sorted_unique.dtype) * group.rows_per_shard
  return jnp.searchsorted(sorted_unique, starts, side="left").astype(jnp.int32)


def _distinct(rows_m: jax.Array, group: TableGroup) -> tuple[jax.Array, jax.Array]:
  """(ascending distinct rows padded with group.num_rows [m], index of each id's row in them [m])."""
  m = rows_m.shape[0]
  flat = jnp.where(rows_m >= 0, rows_m, group.num_rows)
  sorted_rows = jnp.sort(flat)
  is_new = jnp.concatenate([jnp.ones((1,), jnp.int32), (sorted_rows[1:] != sorted_rows[:-1]).astype(jnp.int32)])
  segment = jnp.cumsum(is_new) - 1
  unique = jnp.full((m,), group.num_rows, flat.dtype).at[segment].set(sorted_rows)
  return unique, segment[jnp.searchsorted(sorted_rows, flat, side="left")]


def _send_slots(bounds: jax.Array, num_shards: int, cap: int, m: int) -> tuple[jax.Array, jax.Array]:
  """Positions in the distinct rows of what goes to each owner [S, cap], and which are real."""
  offset = jnp.arange(cap, dtype=jnp.int32)
  ok = offset[None, :] < (bounds[1:] - bounds[:-1])[:, None]
  return jnp.minimum(bounds[:-1, None] + offset[None, :], m - 1), ok


class RowWise(Sharding):
  type = ShardingType.ROW_WISE
  splits_rows = True

  def exchange_fallback(self, group: TableGroup, axes: MeshAxes, rows_bt: jax.Array) -> jax.Array | None:
    """Whether this step's ids overflow the all-to-all's capacity on some device (a replicated bool);
    None when they never can."""
    m = local_ids(axes, rows_bt)
    cap = capacity(group, axes, m)
    if cap >= m:
      return None

    def fn(rows):
      unique, _ = _distinct(rows.reshape(-1), group)
      bounds = _owner_bounds(unique, group, axes.num_shards)
      over = jnp.any(bounds[1:] - bounds[:-1] > cap).astype(jnp.int32)
      return jax.lax.psum(over, axes.batch) > 0

    return axes.shard_map(fn, (axes.batch_spec,), P())(rows_bt)

  # ---- Lookup.

  def lookup(self, group: TableGroup, axes: MeshAxes, table: jax.Array, rows_bt: jax.Array,
             fallback: jax.Array | None = None) -> jax.Array:
    fast = lambda t, r: self._lookup_all_to_all(group, axes, t, r)
    if fallback is None:
      return fast(table, rows_bt)
    return jax.lax.cond(fallback, lambda t, r: self._lookup_all_gather(group, axes, t, r), fast, table, rows_bt)

  def _lookup_all_to_all(self, group, axes, table, rows_bt):
    S, num_shards = axes.shard, axes.num_shards

    def fn(table_local, rows):
      n, t = rows.shape
      m = n * t
      cap = capacity(group, axes, m)
      unique, inverse = _distinct(rows.reshape(-1), group)
      bounds = _owner_bounds(unique, group, num_shards)
      slots, ok = _send_slots(bounds, num_shards, cap, m)
      send = jnp.where(ok, unique[slots], -1)  # [S, cap] global rows for each owner.
      with jax.named_scope("row_wise_ids_to_owners"):
        recv = jax.lax.all_to_all(send, S, 0, 0, tiled=True)  # [S, cap] rows wanted by each source.
      local = jnp.where(recv >= 0, recv - jax.lax.axis_index(S) * group.rows_per_shard, -1)
      ok_local = local >= 0
      got = table_local.at[jnp.where(ok_local, local, 0)].get(mode="promise_in_bounds")
      got = jnp.where(ok_local[..., None], got, jnp.zeros((), got.dtype))  # Table dtype on the wire.
      with jax.named_scope("row_wise_rows_to_sources"):
        back = jax.lax.all_to_all(got, S, 0, 0, tiled=True).reshape(num_shards * cap, -1)
      owner = jnp.minimum(unique // group.rows_per_shard, num_shards - 1)
      position = owner * cap + jnp.arange(m, dtype=jnp.int32) - bounds[owner]
      out = back[jnp.clip(position, 0, num_shards * cap - 1)[inverse]].astype(jnp.float32)
      return (out * (rows.reshape(-1) >= 0)[:, None]).reshape(n, t, -1)

    return axes.shard_map(fn, (self.table_spec(axes), axes.batch_spec), axes.batch_spec)(table, rows_bt)

  def _lookup_all_gather(self, group, axes, table, rows_bt):
    S = axes.shard

    def fn(table_local, rows):
      all_rows = jax.lax.all_gather(rows, S, tiled=True)  # [S*n, T]
      local = all_rows - jax.lax.axis_index(S) * group.rows_per_shard
      mine = (all_rows >= 0) & (local >= 0) & (local < group.rows_per_shard)
      return jax.lax.psum_scatter(local_gather(table_local, jnp.where(mine, local, -1)), S,
                                  scatter_dimension=0, tiled=True)

    with jax.named_scope(FALLBACK_SCOPE):
      return axes.shard_map(fn, (self.table_spec(axes), axes.batch_spec), axes.batch_spec)(table, rows_bt)

  # ---- Update.

  def update(self, group, axes, gstate, rows_bt, grads_btd, step, fallback: jax.Array | None = None):
    fast = lambda *args: self._update_all_to_all(group, axes, *args)
    args = (gstate, rows_bt, grads_btd, step)
    if fallback is None:
      return fast(*args)
    return jax.lax.cond(fallback, lambda *a: self._update_all_gather(group, axes, *a), fast, *args)

  def _update_all_to_all(self, group, axes, gstate, rows_bt, grads_btd, step):
    S, num_shards, specs = axes.shard, axes.num_shards, self.state_specs(group, axes)

    def fn(gs, rows, grads, step):
      m = rows.size
      cap = capacity(group, axes, m)
      unique, summed = optimizers.dedupe(rows.reshape(-1), grads.reshape(m, -1).astype(jnp.float32), group.num_rows)
      bounds = _owner_bounds(unique, group, num_shards)
      slots, ok = _send_slots(bounds, num_shards, cap, m)
      with jax.named_scope("row_wise_gradients_to_owners"):
        recv_rows = jax.lax.all_to_all(jnp.where(ok, unique[slots], -1), S, 0, 0, tiled=True)
        recv_grads = jax.lax.all_to_all(jnp.where(ok[..., None], summed[slots], 0.0), S, 0, 0, tiled=True)
      local = jnp.where(recv_rows >= 0, recv_rows - jax.lax.axis_index(S) * group.rows_per_shard, group.rows_per_shard)
      return apply_optimizer(group, gs, all_gather(local, axes.replica), all_gather(recv_grads, axes.replica), step)

    return axes.shard_map(fn, (specs, axes.batch_spec, axes.batch_spec, P()), specs)(gstate, rows_bt, grads_btd, step)

  def _update_all_gather(self, group, axes, gstate, rows_bt, grads_btd, step):
    specs = self.state_specs(group, axes)

    def fn(gs, rows, grads, step):
      rows, grads = all_gather(rows, axes.batch), all_gather(grads, axes.batch)
      local = rows - jax.lax.axis_index(axes.shard) * group.rows_per_shard
      mine = (rows >= 0) & (local >= 0) & (local < group.rows_per_shard)
      return apply_optimizer(group, gs, jnp.where(mine, local, group.rows_per_shard), grads, step)

    with jax.named_scope(FALLBACK_SCOPE):
      return axes.shard_map(fn, (specs, axes.batch_spec, axes.batch_spec, P()), specs)(gstate, rows_bt, grads_btd, step)
