"""Row-wise sharding: contiguous row blocks per shard. Lookup: all-gather the ids over the shard
axes, a masked local gather, reduce-scatter the rows back; update: all-gather (rows, gradients),
each shard updates the rows it owns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rankjax.embedding.sharding.base import (MeshAxes, Sharding, ShardingType, TableGroup, all_gather,
                                             apply_optimizer, local_gather)


class RowWise(Sharding):
  type = ShardingType.ROW_WISE
  splits_rows = True

  def lookup(self, group: TableGroup, axes: MeshAxes, table: jax.Array, rows_bt: jax.Array) -> jax.Array:
    S = axes.shard

    def fn(table_local, rows):
      all_rows = jax.lax.all_gather(rows, S, tiled=True)  # [S*n, T]
      local = all_rows - jax.lax.axis_index(S) * group.rows_per_shard
      mine = (all_rows >= 0) & (local >= 0) & (local < group.rows_per_shard)
      return jax.lax.psum_scatter(local_gather(table_local, jnp.where(mine, local, -1)), S,
                                  scatter_dimension=0, tiled=True)

    return axes.shard_map(fn, (self.table_spec(axes), axes.batch_spec), axes.batch_spec)(table, rows_bt)

  def update(self, group, axes, gstate, rows_bt, grads_btd, step):
    specs = self.state_specs(group, axes)

    def fn(gs, rows, grads, step):
      rows, grads = all_gather(rows, axes.batch), all_gather(grads, axes.batch)
      local = rows - jax.lax.axis_index(axes.shard) * group.rows_per_shard
      mine = (rows >= 0) & (local >= 0) & (local < group.rows_per_shard)
      return apply_optimizer(group, gs, jnp.where(mine, local, group.rows_per_shard), grads, step)

    return axes.shard_map(fn, (specs, axes.batch_spec, axes.batch_spec, P()), specs)(gstate, rows_bt, grads_btd, step)
