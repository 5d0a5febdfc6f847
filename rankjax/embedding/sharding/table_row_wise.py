"""Table-row-wise sharding: each table on one host, its rows split over that host's devices.

On a mesh whose table shard axes start with `host` (rankjax.partitioner.HOST_AXIS; e.g. mesh.axes ("host", "data"),
one index of `host` per process), whole tables are placed on hosts greedily (largest first onto
the least loaded host, as table_wise places them on devices), and each host's stack of tables is
split into contiguous row blocks over its own devices. Shard s = host x devices_per_host + local
device then owns one contiguous block, as in row_wise, so lookups and updates are row_wise's
(deduplicated ids to their owners and rows back by all-to-all, with its capacity and exact
fallback): what changes is where rows live. A table never straddles hosts, so its rows, its
optimizer state and the traffic to them sit on one host's devices (the fast links), and a table
too big for one device needs only one host's memory; the bytes each device sends per step are
row_wise's (each distinct id goes once to its owner, wherever it is). Without a host axis every
table is on the one host: row_wise's layout, table by table.
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
