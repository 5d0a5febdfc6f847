"""The baseline for comparison only: a row-sharded table whose `take` and scatter are left to
GSPMD's automatic partitioning (all-gather ids + masked gather + all-reduce)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankjax.embedding.sharding.base import MeshAxes, Sharding, ShardingType, TableGroup, apply_optimizer, local_gather


class GspmdRowWise(Sharding):
  type = ShardingType.GSPMD_ROW_WISE
  splits_rows = True
  local_without_shards = False  # GSPMD partitions it whatever the mesh.

  def lookup(self, group: TableGroup, axes: MeshAxes, table: jax.Array, rows_bt: jax.Array) -> jax.Array:
    return local_gather(table, rows_bt)

  def update(self, group, axes, gstate, rows_bt, grads_btd, step):
    return apply_optimizer(group, gstate, jnp.where(rows_bt >= 0, rows_bt, group.num_rows), grads_btd, step)
