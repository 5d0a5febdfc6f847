"""The interface every sharding type implements, and the stacked table group it works on.

A sharding type decides where a group's rows live (`layout`, `table_spec`) and how looked-up rows
and row gradients travel between the devices that hold ids and those that hold rows (`lookup`,
`update`, run inside `shard_map` over the engine's mesh). Adding a type is one module plus an
entry in `ShardingType` and the registry (rankjax/embedding/sharding/__init__.py).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rankjax.embedding.optimizers import SparseOptimizer
from rankjax.embedding.tables import EmbeddingTableConfig

ROW_PAD_MULTIPLE = 1024


class ShardingType(enum.StrEnum):
  REPLICATED = "replicated"
  TABLE_WISE = "table_wise"
  ROW_WISE = "row_wise"
  COLUMN_WISE = "column_wise"
  GSPMD_ROW_WISE = "gspmd_row_wise"
  TABLE_ROW_WISE = "table_row_wise"


@dataclasses.dataclass(frozen=True)
class GroupLayout:
  """Where a group's tables sit in its stacked array."""
  table_offsets: np.ndarray  # [tables] first row of each table in the global array.
  num_rows: int  # Rows of the global array, padding included.
  rows_per_shard: int
  owned_slots: np.ndarray | None = None  # table_wise: [S, K] group slot positions, -1 = padding.
  slot_position: np.ndarray | None = None  # table_wise: [T_g] owner * K + position.


@dataclasses.dataclass
class TableGroup:
  """Tables stacked into one array, with the static maps from batch slots to its rows."""
  name: str
  sharding: ShardingType
  optimizer: SparseOptimizer
  dim: int
  dtype: Any
  tables: tuple[EmbeddingTableConfig, ...]
  table_ids: np.ndarray  # [tables] index in the engine's table list (the init key).
  layout: GroupLayout
  slots: np.ndarray  # [T_g] engine slots served by this group.
  slot_offset: np.ndarray  # [T_g] row offset of each slot's table.
  slot_vocab: np.ndarray  # [T_g]
  # row_wise: all-to-all room per owner shard, as a multiple of an even share of a device's ids.
  exchange_capacity: float = 1.25
  # table_row_wise across hosts: stage 2's room per owner host, as a multiple of an even share of
  # the host's ids per owner (rankjax/embedding/sharding/table_row_wise.py).
  host_exchange_capacity: float = 1.25

  @property
  def table_offsets(self) -> np.ndarray:
    return self.layout.table_offsets

  @property
  def num_rows(self) -> int:
    return self.layout.num_rows

  @property
  def rows_per_shard(self) -> int:
    return self.layout.rows_per_shard


@dataclasses.dataclass(frozen=True)
class MeshAxes:
  """The mesh axes a group's collectives run over: tables split over `shard` (S) and replicated over
  `replica` (R); the batch split over `batch` (B, which holds S)."""
  mesh: jax.sharding.Mesh
  batch: tuple[str, ...]
  shard: tuple[str, ...]
  replica: tuple[str, ...]
  num_shards: int

  def shard_map(self, fn: Callable, in_specs, out_specs) -> Callable:
    return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

  @property
  def batch_spec(self) -> P:
    return P(self.batch or None)


def local_gather(table_local: jax.Array, rows: jax.Array) -> jax.Array:
  """Rows of a local table as float32 (local row or -1 = padding, which gives zeros)."""
  ok = rows >= 0
  got = table_local.at[jnp.where(ok, rows, 0)].get(mode="promise_in_bounds").astype(jnp.float32)
  return got * ok[..., None]


def apply_optimizer(group: TableGroup, gstate: dict, rows: jax.Array, grads: jax.Array, step: jax.Array,
                    **kwargs) -> dict:
  """The group's sparse optimizer on local rows (an out-of-range row is dropped) and their grads."""
  table, rest = gstate["table"], {k: v for k, v in gstate.items() if k != "table"}
  optimizer = group.optimizer
  if getattr(optimizer, "schedule", None) is not None:  # `step` counts updates from 1.
    optimizer = dataclasses.replace(optimizer, schedule=None,
                                    learning_rate=optimizer.learning_rate * optimizer.schedule(step - 1))
  table, rest = optimizer.update(table, rest, rows.reshape(-1), grads.reshape(-1, grads.shape[-1]), step, **kwargs)
  return {"table": table, **rest}


def place_greedily(sizes: Sequence[int], num_bins: int) -> tuple[np.ndarray, np.ndarray]:
  """(bin of each item, its offset in the bin's stack, in the units of `sizes`, and each bin's
  load): largest first onto the least loaded bin (ties: the lower index)."""
  sizes = np.asarray(sizes, np.int64)
  load, where, offset = np.zeros(num_bins, np.int64), np.zeros(len(sizes), np.int64), np.zeros(len(sizes), np.int64)
  for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
    b = int(np.argmin(load))
    where[i], offset[i] = b, load[b]
    load[b] += sizes[i]
  return where, offset, load


def all_gather(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  return jax.lax.all_gather(x, axes, tiled=True) if axes else x


class Sharding(abc.ABC):
  """One sharding type: the row layout of a group and its lookup and update collectives."""

  type: ShardingType

  def layout(self, tables: Sequence[EmbeddingTableConfig], num_shards: int, slot_table: np.ndarray,
             num_hosts: int = 1) -> GroupLayout:
    """Tables stacked one after another, rows padded to a multiple of lcm(shards, 1024): the same
    global shape on 1, 2, 4, ... 1024 shards, so checkpoints restore across such meshes without a
    re-layout. `num_hosts`: the size of the mesh's host axis (used by table_row_wise)."""
    del num_hosts
    vocab = np.array([t.vocab_size for t in tables], np.int64)
    shards = num_shards if self.splits_rows else 1
    multiple = np.lcm(shards, ROW_PAD_MULTIPLE) if shards > 1 else 1
    rows = -(-int(vocab.sum()) // multiple) * multiple
    return GroupLayout(np.concatenate([[0], np.cumsum(vocab)[:-1]]), rows, rows // shards)

  splits_rows: bool = False  # Whether `layout` divides the rows among the shards.
  # Whether, on a mesh without table shard axes, the type runs as replicated (local lookups).
  local_without_shards: bool = True

  def exchange_fallback(self, group: TableGroup, axes: MeshAxes, rows_bt: jax.Array) -> jax.Array | None:
    """For a type with a fixed-capacity exchange and an exact fallback: whether this step takes the
    fallback (a replicated bool, passed back to `lookup` and `update` as `fallback=`); None otherwise."""
    del group, axes, rows_bt
    return None

  def check_table(self, table: EmbeddingTableConfig, num_shards: int) -> None:
    """Raises ValueError naming the table when this type cannot hold it on `num_shards` shards."""

  def table_spec(self, axes: MeshAxes) -> P:
    """The PartitionSpec of the stacked [rows, dim] table."""
    return P(axes.shard or None, None) if axes.shard else P()

  def state_specs(self, group: TableGroup, axes: MeshAxes) -> dict[str, P]:
    """The table's spec and its optimizer state's: per-element state like the table, per-row
    state split like the table's rows."""
    table_spec = self.table_spec(axes)
    specs = {"table": table_spec}
    for key, per_row in group.optimizer.state_is_per_row().items():
      specs[key] = table_spec if not per_row else (P() if table_spec == P() else P(table_spec[0]))
    return specs

  @abc.abstractmethod
  def lookup(self, group: TableGroup, axes: MeshAxes, table: jax.Array, rows_bt: jax.Array) -> jax.Array:
    """Global rows [B, T_g] (-1 = padding), batch-sharded -> float32 rows [B, T_g, D], batch-sharded."""

  @abc.abstractmethod
  def update(self, group: TableGroup, axes: MeshAxes, gstate: dict, rows_bt: jax.Array, grads_btd: jax.Array,
             step: jax.Array) -> dict:
    """Routes row gradients to the shards that own the rows and updates those rows only."""
