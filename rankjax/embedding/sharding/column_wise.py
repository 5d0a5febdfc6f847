"""Column-wise sharding: dim / S columns of every table per shard. Lookup: all-gather the ids over
the shard axes, a local gather of the column block, an all-to-all of column blocks; update: the
reverse all-to-all; row-wise optimizer state sums its per-row statistics over the shards."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rankjax.embedding.sharding.base import (MeshAxes, Sharding, ShardingType, TableGroup, all_gather,
                                             apply_optimizer, local_gather)
from rankjax.embedding.tables import EmbeddingTableConfig


class ColumnWise(Sharding):
  type = ShardingType.COLUMN_WISE

  def check_table(self, table: EmbeddingTableConfig, num_shards: int) -> None:
    if table.dim % num_shards:
      raise ValueError(f"table {table.name}: dim {table.dim} is not divisible by {num_shards} column shards")

  def table_spec(self, axes: MeshAxes) -> P:
    return P(None, axes.shard) if axes.shard else P()

  def state_specs(self, group: TableGroup, axes: MeshAxes) -> dict[str, P]:
    """Per-row optimizer state is whole on every shard (each shard sees every row's columns)."""
    table_spec = self.table_spec(axes)
    return {"table": table_spec, **{key: P() if per_row else table_spec
                                    for key, per_row in group.optimizer.state_is_per_row().items()}}

  def lookup(self, group: TableGroup, axes: MeshAxes, table: jax.Array, rows_bt: jax.Array) -> jax.Array:
    S = axes.shard

    def fn(table_local, rows):
      n, t = rows.shape
      all_rows = jax.lax.all_gather(rows, S, tiled=True)
      got = local_gather(table_local, all_rows).reshape(axes.num_shards, n, t, -1)
      recv = jax.lax.all_to_all(got, S, 0, 0, tiled=True)  # [column block, n, T, D/S]
      return recv.transpose(1, 2, 0, 3).reshape(n, t, group.dim)

    return axes.shard_map(fn, (self.table_spec(axes), axes.batch_spec), axes.batch_spec)(table, rows_bt)

  def update(self, group, axes, gstate, rows_bt, grads_btd, step):
    S, specs = axes.shard, self.state_specs(group, axes)

    def fn(gs, rows, grads, step):
      n, t, _ = grads.shape
      send = grads.reshape(n, t, axes.num_shards, -1).transpose(2, 0, 1, 3)
      recv = jax.lax.all_to_all(send, S, 0, 0, tiled=True).reshape(axes.num_shards * n, t, -1)
      all_rows = jax.lax.all_gather(rows, S, tiled=True)
      local_rows = gs["table"].shape[0]
      return apply_optimizer(group, gs, all_gather(jnp.where(all_rows >= 0, all_rows, local_rows), axes.replica),
                             all_gather(recv, axes.replica), step, row_sum=lambda s: jax.lax.psum(s, S),
                             full_dim=group.dim)

    return axes.shard_map(fn, (specs, axes.batch_spec, axes.batch_spec, P()), specs)(gstate, rows_bt, grads_btd, step)
