"""Table-wise sharding: whole tables per shard, placed greedily (largest first onto the least
loaded shard). Lookup: all-gather the ids over the shard axes, each shard gathers the slots of
its tables, an all-to-all brings the rows back; update: the reverse all-to-all of the gradients,
then an all-gather over the replica axes."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rankjax.embedding.sharding.base import (GroupLayout, MeshAxes, Sharding, ShardingType, TableGroup, all_gather,
                                             apply_optimizer, local_gather, place_greedily)
from rankjax.embedding.tables import EmbeddingTableConfig


class TableWise(Sharding):
  type = ShardingType.TABLE_WISE

  def layout(self, tables: Sequence[EmbeddingTableConfig], num_shards: int, slot_table: np.ndarray,
             num_hosts: int = 1) -> GroupLayout:
    del num_hosts
    owner, local, load = place_greedily([t.vocab_size for t in tables], num_shards)
    per_shard = int(max(load.max(), 1))
    slot_owner = owner[slot_table]
    k = max(int(np.bincount(slot_owner, minlength=num_shards).max()), 1)
    owned = -np.ones((num_shards, k), np.int32)
    position = np.zeros(len(slot_table), np.int32)
    fill = np.zeros(num_shards, np.int64)
    for t, s in enumerate(slot_owner):
      owned[s, fill[s]] = t
      position[t] = s * k + fill[s]
      fill[s] += 1
    return GroupLayout(owner * per_shard + local, per_shard * num_shards, per_shard, owned, position)

  def lookup(self, group: TableGroup, axes: MeshAxes, table: jax.Array, rows_bt: jax.Array) -> jax.Array:
    S, owned = axes.shard, jnp.asarray(group.layout.owned_slots)

    def fn(table_local, rows):
      n = rows.shape[0]
      all_rows = jax.lax.all_gather(rows, S, tiled=True)
      me = jax.lax.axis_index(S)
      my_slots = owned[me]
      r = jnp.where(my_slots >= 0, all_rows[:, jnp.maximum(my_slots, 0)], -1)
      local = jnp.where(r >= 0, r - me * group.rows_per_shard, -1)
      got = local_gather(table_local, local).reshape(axes.num_shards, n, owned.shape[1], group.dim)
      recv = jax.lax.all_to_all(got, S, 0, 0, tiled=True)  # [owner, n, K, D]
      flat = recv.transpose(1, 0, 2, 3).reshape(n, -1, group.dim)
      return flat[:, jnp.asarray(group.layout.slot_position)]

    return axes.shard_map(fn, (self.table_spec(axes), axes.batch_spec), axes.batch_spec)(table, rows_bt)

  def update(self, group, axes, gstate, rows_bt, grads_btd, step):
    S, owned, specs = axes.shard, jnp.asarray(group.layout.owned_slots), self.state_specs(group, axes)

    def fn(gs, rows, grads, step):
      n, k = rows.shape[0], owned.shape[1]
      me = jax.lax.axis_index(S)
      send = grads[:, jnp.maximum(owned.reshape(-1), 0)].reshape(n, axes.num_shards, k, group.dim)
      recv = jax.lax.all_to_all(send.transpose(1, 0, 2, 3), S, 0, 0, tiled=True)  # [source, n, K, D]
      all_rows = jax.lax.all_gather(rows, S, tiled=True)
      my_slots = owned[me]
      r = jnp.where(my_slots >= 0, all_rows[:, jnp.maximum(my_slots, 0)], -1)
      local = jnp.where(r >= 0, r - me * group.rows_per_shard, group.rows_per_shard)
      return apply_optimizer(group, gs, all_gather(local, axes.replica),
                             all_gather(recv.reshape(-1, k, group.dim), axes.replica), step)

    return axes.shard_map(fn, (specs, axes.batch_spec, axes.batch_spec, P()), specs)(gstate, rows_bt, grads_btd, step)
