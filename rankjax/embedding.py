"""Embedding tables as one stacked array with per-feature row offsets, outside optax.

Tables of equal dim live in one [rows, dim] array (one gather and one scatter per step instead of
one per table); a feature's ids are shifted by its table's row offset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class EmbeddingTableConfig:
  """One table; several features may share it (TorchRec's EmbeddingBagConfig vocabulary)."""
  name: str
  vocab_size: int
  dim: int
  feature_names: tuple[str, ...]
  combiner: str = "sum"


class StackedTables:
  """Row layout of several equal-dim tables stacked into one array."""

  def __init__(self, tables: Sequence[EmbeddingTableConfig], feature_order: Sequence[str],
               row_multiple: int = 1):
    dims = {t.dim for t in tables}
    if len(dims) != 1:
      raise ValueError(f"stacked tables need one dim, got {sorted(dims)}")
    self.tables = tuple(tables)
    self.dim = dims.pop()
    table_offset, start = {}, 0
    for t in self.tables:
      table_offset[t.name] = start
      start += t.vocab_size
    self.num_rows = start
    # Padded so the rows split evenly over the shards; padding rows are never looked up.
    self.padded_rows = -(-start // row_multiple) * row_multiple
    by_feature = {f: t for t in self.tables for f in t.feature_names}
    missing = [f for f in feature_order if f not in by_feature]
    if missing:
      raise ValueError(f"features without a table: {missing}")
    self.feature_offsets = np.array([table_offset[by_feature[f].name] for f in feature_order], np.int32)
    self.feature_vocab = np.array([by_feature[f].vocab_size for f in feature_order], np.int32)
    self._row_scale = np.concatenate(
        [np.full(t.vocab_size, 1.0 / np.sqrt(t.vocab_size), np.float32) for t in self.tables]
        + [np.zeros(self.padded_rows - self.num_rows, np.float32)])

  def global_ids(self, ids_bf: jax.Array) -> jax.Array:
    """Per-feature ids [batch, feature] -> rows of the stacked array."""
    return ids_bf + jnp.asarray(self.feature_offsets)

  def init(self, key: jax.Array) -> jax.Array:
    """Uniform(-1/sqrt(vocab), 1/sqrt(vocab)) per table (the DLRM reference's init).

    With jax_threefry_partitionable (the default) a row's values depend only on its index, so
    the padding (set by the shard count) does not change the real rows: any mesh inits alike.
    """
    u = jax.random.uniform(key, (self.padded_rows, self.dim), jnp.float32, -1.0, 1.0)
    return u * jnp.asarray(self._row_scale)[:, None]


def lookup(table_rd: jax.Array, rows_bf: jax.Array) -> jax.Array:
  """Gathers rows: [batch, feature] row ids -> [batch, feature, dim]."""
  with jax.named_scope("embedding_lookup"):
    return table_rd.at[rows_bf].get(mode="promise_in_bounds")
