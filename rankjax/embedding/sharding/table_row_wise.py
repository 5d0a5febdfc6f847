"""Table-row-wise sharding: each table on one host, its rows split over that host's devices.

On a mesh whose table shard axes start with `host` (rankjax.partitioner.HOST_AXIS; e.g.
mesh.axes ("host", "data"), one index of `host` per process), whole tables are placed on hosts
greedily (largest first onto the least loaded host, as table_wise places them on devices), and
each host's stack of tables is split into contiguous row blocks over its own devices. Every
host's block is as large as the most loaded host's (one stacked array, split evenly), so the
hosts should balance: the planner checks that. Shard s = host x devices_per_host + local device
then owns one contiguous block, as in row_wise, so lookups and updates are row_wise's
(deduplicated ids to their owners and rows back by all-to-all, with its capacity and exact
fallback): what changes is where rows live. A table's rows and optimizer state sit on one
host's devices, and a table too big for one device needs only one host's memory; the ids and
gradients of the other hosts' devices still cross hosts to reach them, as with row_wise: the
bytes each device sends per step are row_wise's. Without a host axis all tables are on the one
host: a row_wise layout with the tables reordered by size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rankjax.embedding.sharding.base import GroupLayout, ShardingType, place_greedily
from rankjax.embedding.sharding.row_wise import RowWise
from rankjax.embedding.tables import EmbeddingTableConfig

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
