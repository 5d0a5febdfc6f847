"""Replicated tables (small vocabularies): the whole table on every device; lookups are local, an
update all-gathers the batch's (rows, gradients) so every copy applies the same update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rankjax.embedding.sharding.base import (MeshAxes, Sharding, ShardingType, TableGroup, all_gather,
                                             apply_optimizer, local_gather)


class Replicated(Sharding):
  type = ShardingType.REPLICATED

  def table_spec(self, axes: MeshAxes) -> P:
    return P()

  def lookup(self, group: TableGroup, axes: MeshAxes, table: jax.Array, rows_bt: jax.Array) -> jax.Array:
    return axes.shard_map(local_gather, (self.table_spec(axes), axes.batch_spec), axes.batch_spec)(table, rows_bt)

  def update(self, group, axes, gstate, rows_bt, grads_btd, step):
    specs = self.state_specs(group, axes)

    def fn(gs, rows, grads, step):
      rows, grads = all_gather(rows, axes.batch), all_gather(grads, axes.batch)
      return apply_optimizer(group, gs, jnp.where(rows >= 0, rows, gs["table"].shape[0]), grads, step)

    return axes.shard_map(fn, (specs, axes.batch_spec, axes.batch_spec, P()), specs)(gstate, rows_bt, grads_btd, step)
