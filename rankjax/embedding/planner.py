"""The embedding sharding planner: picks a sharding type per table and accounts bytes per device.

Rules (after TorchRec's planner, simplified): a table whose params + optimizer state fit in
`replicate_bytes` is replicated (no collectives, cheap to all-gather updates for); a table
bigger than an even share of all tables is row-wise sharded (no single shard could hold it
evenly), or, when the job spans hosts (`num_hosts` > 1, a mesh with a host axis),
table-row-wise (whole tables placed on hosts, largest first, their rows split over the host's
devices) where the hosts balance and one host's devices can hold the table in `device_memory`;
the rest are table-wise, placed largest-first on the least-loaded shard. A table's own
`sharding` (from config overrides) always wins. Devices are numbered host-major (host h holds
devices h*L .. h*L + L - 1, L = devices per host).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rankjax.embedding import dynamic, dynamic_shards
from rankjax.embedding.sharding.base import place_greedily
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


def row_bytes(t: EmbeddingTableConfig, optimizer: str) -> int:
  """A row's params + optimizer state."""
  per_row, per_coord = STATE_WORDS[t.optimizer or optimizer]
  return t.dim * BYTES[t.dtype] + 4 * per_row + 4 * per_coord * t.dim


def table_bytes(t: EmbeddingTableConfig, optimizer: str) -> int:
  return t.vocab_size * row_bytes(t, optimizer)


def table_row_wise_bytes(tables: Sequence[EmbeddingTableConfig], num_hosts: int, num_devices: int,
                         optimizer: str) -> dict[str, np.ndarray]:
  """Per table, the bytes on each device of the table_row_wise layout the engine builds: per group
  (optimizer, dim, dtype; tables in order) tables go to hosts largest first onto the least loaded
  (TableRowWise.layout), and every host's block is as large as the most loaded one's, split over its
  devices. A table's rows count on its host's devices; each host's padding counts on the group's
  largest table (so one dominant table costs every host its size)."""
  per_host, out = num_devices // num_hosts, {}
  groups: dict[tuple, list[EmbeddingTableConfig]] = {}
  for t in tables:
    groups.setdefault((t.optimizer or optimizer, t.dim, t.dtype), []).append(t)
  for group in groups.values():
    host, _, loads = place_greedily([t.vocab_size for t in group], num_hosts)
    block = -(-max(int(loads.max()), 1) // per_host) * per_host  # Rows of each host's block.
    for t, h in zip(group, host):
      d = np.zeros(num_devices, np.int64)
      d[h * per_host:(h + 1) * per_host] = -(-t.vocab_size // per_host) * row_bytes(t, optimizer)
      out[t.name] = d
    largest = max(group, key=lambda t: t.vocab_size)
    for h in range(num_hosts):
      padding = (block - int(loads[h])) // per_host * row_bytes(largest, optimizer)
      out[largest.name][h * per_host:(h + 1) * per_host] += padding
  return out


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


def _table_row_wise(tables: Sequence[EmbeddingTableConfig], choice: dict[str, str], num_hosts: int,
                    num_devices: int, optimizer: str) -> dict[str, np.ndarray]:
  """table_row_wise_bytes of the tables chosen table_row_wise. In a group whose hosts do not
  balance (its fullest device holding over 10% more than row_wise would put there) the planner's
  own choices go back to row_wise (at the default host_exchange_capacity table_row_wise moves
  about row_wise's bytes across hosts, so memory decides)."""
  key = lambda t: (t.optimizer or optimizer, t.dim, t.dtype)
  groups: dict[tuple, list[EmbeddingTableConfig]] = {}
  for t in tables:
    if choice[t.name] == "table_row_wise":
      groups.setdefault(key(t), []).append(t)
  for group in groups.values():
    placed = table_row_wise_bytes(group, num_hosts, num_devices, optimizer)
    even = sum(table_bytes(t, optimizer) for t in group) / num_devices
    if np.sum(list(placed.values()), axis=0).max() > 1.1 * even:
      for t in group:
        choice[t.name] = t.sharding or "row_wise"
  return table_row_wise_bytes([t for t in tables if choice[t.name] == "table_row_wise"], num_hosts, num_devices,
                              optimizer)


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
  by_host = _table_row_wise(tables, choice, num_hosts, num_devices, optimizer)
  load = np.zeros(num_devices, np.int64)
  per_device: dict[str, np.ndarray] = {}
  for t in sorted(tables, key=lambda t: (-sizes[t.name], t.name)):
    b, kind = sizes[t.name], choice[t.name]
    d = np.zeros(num_devices, np.int64)
    if kind == "replicated":
      d[:] = b
    elif kind == "table_wise":
      d[int(np.argmin(load))] = b
    elif kind == "table_row_wise":
      d += by_host[t.name]
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
