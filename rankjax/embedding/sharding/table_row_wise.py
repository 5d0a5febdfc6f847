"""Table-row-wise sharding: each table on one host, its rows split over that host's devices.

On a mesh whose table shard axes start with `host` (rankjax.partitioner.HOST_AXIS; e.g.
mesh.axes ("host", "data"), one index of `host` per process), whole tables are placed on hosts
greedily (largest first onto the least loaded host, as table_wise places them on devices), and
each host's stack of tables is split into contiguous row blocks over its own devices. Every
host's block is as large as the most loaded host's (one stacked array, split evenly), so the
hosts should balance: the planner checks that. Shard s = host x devices_per_host + local device
then owns one contiguous block, as in row_wise. Without a host axis (or with one device a host)
all tables are on one host: a row_wise layout with the tables reordered by size, and row_wise's
exchange.

With H hosts of D > 1 devices the exchange takes two stages, so that what crosses hosts is
deduplicated over a host's devices first (what the slow links carry shrinks with the repeats
among the host's ids, not with its device count):
  1. within the host: each device sends its distinct rows to the device of its own host that has
     the owner's local index (row_wise's send buffer of `capacity` per owner, one all-to-all over
     the local axes);
  2. that device merges the D requests for each owner host into distinct rows, at most
     `host_capacity` per host, and sends them across hosts to the owner (an all-to-all over
     `host`, named HOST_SCOPE in the HLO); the rows come back the same two ways.
The update sends row gradients the same way, summed at each stage. A step in which some device's
rows overflow either capacity takes row_wise's exact all-gather path instead (the train metric
embedding_exchange_fallback); `exchange_fallback` runs stage 1 to know, so it adds an
intra-host all-to-all of ids to the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rankjax.embedding import optimizers
from rankjax.embedding.sharding import row_wise
from rankjax.embedding.sharding.base import (GroupLayout, MeshAxes, ShardingType, TableGroup, all_gather,
                                             apply_optimizer, place_greedily)
from rankjax.embedding.sharding.row_wise import RowWise
from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.partitioner import HOST_AXIS

HOST_SCOPE = "table_row_wise_across_hosts"  # Named scope of the cross-host all-to-alls (HLO metadata).


def host_capacity(group: TableGroup, axes: MeshAxes, local_ids: int) -> int:
  """Distinct rows a device sends one owner host in stage 2: host_exchange_capacity x an even
  share of the host's ids per owner (local_ids x D / shards), rounded up to 8, at most what stage
  1 can bring it (D x row_wise.capacity: then stage 2 can never overflow)."""
  hosts = axes.mesh.shape[HOST_AXIS]
  per_host = axes.num_shards // hosts
  share = math.ceil(group.host_exchange_capacity * local_ids / hosts / 8) * 8
  return max(1, min(per_host * row_wise.capacity(group, axes, local_ids), share))


def _two_stage(axes: MeshAxes) -> bool:
  return bool(axes.shard) and axes.shard[0] == HOST_AXIS and 1 < axes.mesh.shape[HOST_AXIS] < axes.num_shards


class TableRowWise(RowWise):
  type = ShardingType.TABLE_ROW_WISE
  splits_rows = True

  def layout(self, tables: Sequence[EmbeddingTableConfig], num_shards: int, slot_table: np.ndarray,
             num_hosts: int = 1) -> GroupLayout:
    if num_shards % num_hosts:
      raise ValueError(f"table_row_wise: {num_shards} table shards do not split evenly over {num_hosts} hosts")
    per_host_devices = num_shards // num_hosts
    host, offset, loads = place_greedily([t.vocab_size for t in tables], num_hosts)
    per_host = -(-max(int(loads.max()), 1) // per_host_devices) * per_host_devices
    return GroupLayout(host * per_host + offset, per_host * num_hosts, per_host // per_host_devices)

  # ---- The two-stage exchange (inside shard_map; a device's ids `rows` [n, T]).

  def _stage_one(self, group: TableGroup, axes: MeshAxes, rows: jax.Array, unique: jax.Array, *payload: jax.Array):
    """Stage 1 of a device's distinct rows (ascending, `unique`) and per-row payloads: (row_wise's
    send bounds and capacity, then what this device received from its host's devices, as [H, D x
    cap] ids (-1 = none) grouped by the owner's host, and the payloads alike, and whether stage 1
    overflowed here)."""
    hosts, num_shards = axes.mesh.shape[HOST_AXIS], axes.num_shards
    per_host, m = num_shards // hosts, rows.size
    cap = row_wise.capacity(group, axes, m)
    bounds = row_wise._owner_bounds(unique, group, num_shards)
    slots, ok = row_wise._send_slots(bounds, num_shards, cap, m)
    local_axes = axes.shard[1:]

    def to_peers(x, fill):
      x = jnp.where(ok.reshape(ok.shape + (1,) * (x.ndim - 1)), x[slots], fill)  # [S, cap, ...] owner-major
      x = x.reshape(hosts, per_host, *x.shape[1:]).swapaxes(0, 1)  # [D (owner's local index), H, cap, ...]
      x = jax.lax.all_to_all(x, local_axes, 0, 0, tiled=True)  # [D (source), H, cap, ...]
      return x.swapaxes(0, 1).reshape(hosts, per_host * cap, *x.shape[3:])

    with jax.named_scope("table_row_wise_to_host_peers"):
      received = (to_peers(unique, -1),) + tuple(to_peers(p, 0) for p in payload)
    return bounds, cap, received, jnp.any(bounds[1:] - bounds[:-1] > cap)

  def _stage_two_slots(self, group: TableGroup, axes: MeshAxes, u2: jax.Array, m: int):
    """Where stage 2 sends the merged distinct rows `u2` (ascending over all owner hosts):
    (bounds [H + 1], capacity, slots [H, cap2], which are real, whether stage 2 overflows here)."""
    hosts = axes.mesh.shape[HOST_AXIS]
    per_host = axes.num_shards // hosts
    cap2 = host_capacity(group, axes, m)
    me = jax.lax.axis_index(axes.shard[1:])
    starts = (jnp.arange(hosts, dtype=jnp.int32) * per_host + me) * group.rows_per_shard  # Owner (h, me)'s block.
    bounds2 = jnp.searchsorted(u2, jnp.append(starts, group.num_rows).astype(u2.dtype), side="left").astype(jnp.int32)
    slots2, ok2 = row_wise._send_slots(bounds2, hosts, cap2, u2.shape[0])
    return bounds2, cap2, slots2, ok2, jnp.any(bounds2[1:] - bounds2[:-1] > cap2)

  def exchange_fallback(self, group: TableGroup, axes: MeshAxes, rows_bt: jax.Array) -> jax.Array | None:
    if not _two_stage(axes):
      return super().exchange_fallback(group, axes, rows_bt)
    m = row_wise.local_ids(axes, rows_bt)
    per_host = axes.num_shards // axes.mesh.shape[HOST_AXIS]
    cap = row_wise.capacity(group, axes, m)
    if cap >= m and host_capacity(group, axes, m) >= per_host * cap:
      return None

    def fn(rows):
      unique, _ = row_wise._distinct(rows.reshape(-1), group)
      _, _, (ids,), over = self._stage_one(group, axes, rows, unique)
      u2, _ = row_wise._distinct(ids.reshape(-1), group)
      over = over | self._stage_two_slots(group, axes, u2, rows.size)[-1]
      return jax.lax.psum(over.astype(jnp.int32), axes.batch) > 0

    return axes.shard_map(fn, (axes.batch_spec,), P())(rows_bt)

  def _lookup_all_to_all(self, group, axes, table, rows_bt):
    if not _two_stage(axes):
      return super()._lookup_all_to_all(group, axes, table, rows_bt)
    hosts, num_shards = axes.mesh.shape[HOST_AXIS], axes.num_shards

    def fn(table_local, rows):
      n, t = rows.shape
      m = n * t
      unique, inverse = row_wise._distinct(rows.reshape(-1), group)
      bounds, cap, (ids,), _ = self._stage_one(group, axes, rows, unique)
      u2, inverse2 = row_wise._distinct(ids.reshape(-1), group)
      bounds2, cap2, slots2, ok2, _ = self._stage_two_slots(group, axes, u2, m)
      with jax.named_scope(HOST_SCOPE):
        wanted = jax.lax.all_to_all(jnp.where(ok2, u2[slots2], -1), HOST_AXIS, 0, 0, tiled=True)  # [H, cap2]
      local = jnp.where(wanted >= 0, wanted - jax.lax.axis_index(axes.shard) * group.rows_per_shard, -1)
      got = table_local.at[jnp.maximum(local, 0)].get(mode="promise_in_bounds")
      got = jnp.where((local >= 0)[..., None], got, jnp.zeros((), got.dtype))  # Table dtype on the wire.
      with jax.named_scope(HOST_SCOPE):
        merged = jax.lax.all_to_all(got, HOST_AXIS, 0, 0, tiled=True).reshape(hosts * cap2, -1)
      # Each request of stage 1 (owner host h, position j) reads its merged row, then goes home.
      host = jnp.arange(ids.size, dtype=jnp.int32) // ids.shape[1]
      at = jnp.clip(host * cap2 + inverse2 - bounds2[host], 0, hosts * cap2 - 1)
      per_host = num_shards // hosts
      answers = merged[at].reshape(hosts, per_host, cap, -1).swapaxes(0, 1)  # [D (source), H, cap, dim]
      with jax.named_scope("table_row_wise_rows_to_sources"):
        back = jax.lax.all_to_all(answers, axes.shard[1:], 0, 0, tiled=True)  # [D (owner's local), H, cap, dim]
      back = back.swapaxes(0, 1).reshape(num_shards * cap, -1)  # Owner-major, as row_wise's.
      owner = jnp.minimum(unique // group.rows_per_shard, num_shards - 1)
      position = owner * cap + jnp.arange(m, dtype=jnp.int32) - bounds[owner]
      out = back[jnp.clip(position, 0, num_shards * cap - 1)[inverse]].astype(jnp.float32)
      return (out * (rows.reshape(-1) >= 0)[:, None]).reshape(n, t, -1)

    return axes.shard_map(fn, (self.table_spec(axes), axes.batch_spec), axes.batch_spec)(table, rows_bt)

  def _update_all_to_all(self, group, axes, gstate, rows_bt, grads_btd, step):
    if not _two_stage(axes):
      return super()._update_all_to_all(group, axes, gstate, rows_bt, grads_btd, step)
    specs = self.state_specs(group, axes)

    def fn(gs, rows, grads, step):
      m = rows.size
      unique, summed = optimizers.dedupe(rows.reshape(-1), grads.reshape(m, -1).astype(jnp.float32), group.num_rows)
      _, _, (ids, sums), _ = self._stage_one(group, axes, rows, unique, summed)
      u2, summed2 = optimizers.dedupe(ids.reshape(-1), sums.reshape(ids.size, -1), group.num_rows)
      _, _, slots2, ok2, _ = self._stage_two_slots(group, axes, u2, m)
      with jax.named_scope(HOST_SCOPE):
        recv_rows = jax.lax.all_to_all(jnp.where(ok2, u2[slots2], -1), HOST_AXIS, 0, 0, tiled=True)
        recv_grads = jax.lax.all_to_all(jnp.where(ok2[..., None], summed2[slots2], 0.0), HOST_AXIS, 0, 0, tiled=True)
      local = jnp.where(recv_rows >= 0, recv_rows - jax.lax.axis_index(axes.shard) * group.rows_per_shard,
                        group.rows_per_shard)
      return apply_optimizer(group, gs, all_gather(local, axes.replica), all_gather(recv_grads, axes.replica), step)

    return axes.shard_map(fn, (specs, axes.batch_spec, axes.batch_spec, P()), specs)(gstate, rows_bt, grads_btd, step)
