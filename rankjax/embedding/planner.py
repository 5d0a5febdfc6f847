"""The embedding sharding planner: picks a sharding type per table and accounts bytes per device.

Rules (after TorchRec's planner, simplified): a table whose params + optimizer state fit in
`replicate_bytes` is replicated (no collectives, cheap to all-gather updates for); a table
bigger than an even share of all tables is row-wise sharded (no single shard could hold it
evenly), or, when the job spans hosts (`num_hosts` > 1, a mesh with a host axis),
table-row-wise: the whole table on the least loaded host, its rows split over that host's
devices, unless one host's devices cannot hold it within `device_memory` (then row-wise); the
rest are table-wise, placed largest-first on the least-loaded shard. A table's own `sharding`
(from config overrides) always wins. Devices are numbered host-major (host h holds devices
h*L .. h*L + L - 1, L = devices per host).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rankjax.embedding import dynamic, dynamic_shards
from rankjax.embedding.tables import EmbeddingTableConfig

BYTES = {"float32": 4, "bfloat16": 2}
# Optimizer state per row, in float32 words: (per-row scalars, per-coordinate vectors).
STATE_WORDS = {"sgd": (0, 0), "adagrad": (0, 1), "row_wise_adagrad": (1, 0), "adam": (0, 2), "ftrl": (0, 2)}


class PlanError(ValueError):
  """A plan that cannot fit; names the table and the shortfall."""


@dataclasses.dataclass(frozen=True)
class TablePlan:
  table: str
  sharding: str
  bytes_total: int  # params + optimizer state, whole table.
  bytes_per_device: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
  tables: tuple[TablePlan, ...]
  num_devices: int

  @property
  def device_bytes(self) -> np.ndarray:
    return np.sum([t.bytes_per_device for t in self.tables], axis=0) if self.tables else np.zeros(self.num_devices)

  @property
  def imbalance(self) -> float:
    """max / mean bytes per device (1.0 = perfectly even)."""
    d = self.device_bytes
    return float(d.max() / d.mean()) if d.mean() else 1.0

  def sharding_of(self) -> dict[str, str]:
    return {t.table: t.sharding for t in self.tables}


def table_bytes(t: EmbeddingTableConfig, optimizer: str) -> int:
  per_row, per_coord = STATE_WORDS[t.optimizer or optimizer]
  return t.vocab_size * (t.dim * BYTES[t.dtype] + 4 * per_row + 4 * per_coord * t.dim)


def map_bytes(t: EmbeddingTableConfig, num_devices: int = 1) -> int:
  """A dynamic table's map on each device (rankjax/embedding/dynamic.py): 16 bytes a row (20 with
  64-bit ids), plus the admission sketch; a map in pieces whose count the devices divide is split
  over them (rankjax/embedding/dynamic_shards.py); 0 for a static table."""
  if t.kind != "dynamic":
    return 0
  spec = dynamic.DynamicSpec.of(t)
  sketch_width = spec.width if spec.shards == 1 else spec.shards * dynamic_shards.piece_spec(spec).width
  total = spec.bytes_per_row * t.capacity + (4 * dynamic.SKETCH_DEPTH * sketch_width if t.admit_after > 1 else 0)
  split = spec.shards > 1 and num_devices > 1 and spec.shards % num_devices == 0
  return total // num_devices if split else total


def plan(tables: Sequence[EmbeddingTableConfig], num_devices: int, *, optimizer: str,
         device_memory: int | None = None, replicate_bytes: int = 1 << 20, num_hosts: int = 1) -> Plan:
  """Chooses shardings for tables without one and places them; raises PlanError if it cannot fit."""
  if num_hosts < 1 or num_devices % num_hosts:
    raise PlanError(f"{num_devices} devices do not split evenly over {num_hosts} hosts")
  per_host = num_devices // num_hosts
  sizes = {t.name: table_bytes(t, optimizer) for t in tables}
  share = sum(sizes.values()) / max(num_devices, 1)
  choice = {}
  for t in tables:
    if t.sharding:
      choice[t.name] = t.sharding
    elif num_devices == 1 or sizes[t.name] <= replicate_bytes:
      choice[t.name] = "replicated"
    elif sizes[t.name] > share or t.vocab_size < num_devices:
      one_host_fits = device_memory is None or -(-sizes[t.name] // per_host) <= device_memory
      split = "table_row_wise" if num_hosts > 1 and one_host_fits else "row_wise"
      choice[t.name] = split if t.vocab_size >= num_devices else "replicated"
    else:
      choice[t.name] = "table_wise"
  load = np.zeros(num_devices, np.int64)
  per_device: dict[str, np.ndarray] = {}
  for t in sorted(tables, key=lambda t: (-sizes[t.name], t.name)):
    b, kind = sizes[t.name], choice[t.name]
    d = np.zeros(num_devices, np.int64)
    if kind == "replicated":
      d[:] = b
    elif kind == "table_wise":
      d[int(np.argmin(load))] = b
    elif kind == "table_row_wise":  # The least loaded host's devices (without a host axis: all devices).
      host = int(np.argmin(load.reshape(num_hosts, per_host).sum(axis=1)))
      d[host * per_host:(host + 1) * per_host] = -(-b // per_host)
    else:  # row_wise, column_wise, gspmd_row_wise split evenly (row padding ignored).
      d[:] = -(-b // num_devices)
    d += map_bytes(t, num_devices)  # A dynamic table's map: on every device, or split in its pieces.
    load += d
    per_device[t.name] = d
  result = Plan(tuple(TablePlan(t.name, choice[t.name], sizes[t.name], tuple(int(x) for x in per_device[t.name]))
                      for t in tables), num_devices)
  if device_memory is not None and result.device_bytes.max() > device_memory:
    worst = int(np.argmax(result.device_bytes))
    biggest = max(result.tables, key=lambda p: p.bytes_per_device[worst])
    raise PlanError(f"device {worst} needs {int(result.device_bytes[worst]):,} B for embeddings, "
                    f"{int(result.device_bytes[worst] - device_memory):,} B more than its {device_memory:,} B; "
                    f"largest there: table {biggest.table} ({biggest.sharding}, {biggest.bytes_per_device[worst]:,} B)")
  return result
