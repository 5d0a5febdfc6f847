"""Embedding vocabulary: table configs, feature slots (multi-hot), pooling and the table init.

Vocabulary after TorchRec: a table (`EmbeddingTableConfig`) serves one or more features; a
feature has a fixed max hotness, so a batch's ids are a static [batch, slots] array with -1 as
padding. Pooling (the table's combiner) turns slots into one vector per feature.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

COMBINERS = ("sum", "mean", "none")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
INITIALIZERS = ("uniform", "zeros")
KINDS = ("static", "dynamic")
# What `embedding.overrides` cannot change (id_bits is the data's).
IDENTITY_FIELDS = ("name", "vocab_size", "dim", "feature_names", "id_bits")


def scale_rows(vocab_sizes: Sequence[int], row_scale: float) -> tuple[int, ...]:
  """ceil(rows * row_scale), at least 1, computed exactly (40M at 0.0001 is 4000, not 4001)."""
  scale = fractions.Fraction(str(row_scale))
  return tuple(max(1, math.ceil(int(v) * scale)) for v in vocab_sizes)


@dataclasses.dataclass(frozen=True)
class EmbeddingTableConfig:
  """One table; several features may share it.

  combiner: how a multi-hot feature's rows pool: "sum" | "mean" into one vector, or "none": a
    sequence feature keeps its positions (hotness vectors, padding zeroed) for the model.
  dtype: storage dtype ("float32" | "bfloat16"); updates are computed in float32.
  initializer: "uniform" = U(-1/sqrt(vocab), 1/sqrt(vocab)) (the DLRM reference), or "zeros".
  optimizer / sharding: None = the engine's default / the planner's choice.
  qr_buckets: > 0 makes it a quotient-remainder table (Shi et al. 2020) for huge vocabularies:
    two tables of ceil(vocab / q) and q rows; id i's vector is quotient[i // q] + remainder[i % q].
  rows: > 0 hashes a static table's ids into that many rows (id mod rows, the hashing trick).
  kind: "static" (id i is row i) or "dynamic": raw ids get rows through an on-device map of
    `capacity` rows, without collisions while it has room (rankjax/embedding/dynamic.py, with
    admit_after, eviction "lfu" (decay) or "ttl" (ttl steps); map_shards > 1 splits the map by id
    into that many pieces, spread over the table-row mesh axes: rankjax/embedding/dynamic_shards.py).
  id_bits: 31 (ids are int32 >= 0) or 64 (the data keeps raw 64-bit ids, `rankjax data criteo
    --vocab raw`: the batch carries their high words too). A 64-bit table is dynamic or hashed
    (rows > 0, ids hashed into rows); `raw_id_defaults` makes any other one dynamic.
  """
  name: str
  vocab_size: int
  dim: int
  feature_names: tuple[str, ...]
  combiner: str = "sum"
  dtype: str = "float32"
  initializer: str = "uniform"
  optimizer: str | None = None
  sharding: str | None = None
  qr_buckets: int = 0
  rows: int = 0
  kind: str = "static"
  capacity: int = 0
  admit_after: int = 1
  eviction: str = "lfu"
  decay: float = 0.99
  ttl: int = 0
  map_shards: int = 1
  id_bits: int = 31

  def __post_init__(self):
    if self.vocab_size <= 0 or self.dim <= 0:
      raise ValueError(f"table {self.name}: vocab_size and dim must be > 0")
    if self.combiner not in COMBINERS:
      raise ValueError(f"table {self.name}: combiner {self.combiner!r} not in {COMBINERS}")
    if self.dtype not in DTYPES:
      raise ValueError(f"table {self.name}: dtype {self.dtype!r} not in {tuple(DTYPES)}")
    if self.qr_buckets < 0:
      raise ValueError(f"table {self.name}: qr_buckets must be >= 0")
    if self.initializer not in INITIALIZERS:
      raise ValueError(f"table {self.name}: initializer {self.initializer!r} not in {INITIALIZERS}")
    if self.kind not in KINDS:
      raise ValueError(f"table {self.name}: kind {self.kind!r} not in {KINDS}")
    if self.rows and (self.kind == "dynamic" or self.qr_buckets):
      raise ValueError(f"table {self.name}: rows (a hashed table) goes with neither a dynamic nor a QR table")
    if self.kind == "dynamic" and self.qr_buckets:
      raise ValueError(f"table {self.name}: a dynamic table cannot be a quotient-remainder table too")
    if self.kind == "static" and (self.capacity or self.admit_after != 1 or self.eviction != "lfu"
                                  or self.decay != 0.99 or self.ttl or self.map_shards != 1):
      raise ValueError(f"table {self.name}: capacity, admit_after, eviction, decay, ttl and map_shards are settings "
                       "of a dynamic table: add kind=dynamic")
    if self.kind == "dynamic" and (self.map_shards < 1 or self.capacity % self.map_shards):
      raise ValueError(f"table {self.name}: map_shards must be >= 1 and divide capacity {self.capacity}, "
                       f"got {self.map_shards}")
    if self.kind == "dynamic" and self.capacity <= 0:
      raise ValueError(f"table {self.name}: a dynamic table needs capacity > 0 (its rows)")
    if self.id_bits not in (31, 64):
      raise ValueError(f"table {self.name}: id_bits must be 31 or 64, got {self.id_bits}")
    if self.id_bits == 64 and self.qr_buckets:
      raise ValueError(f"table {self.name}: a quotient-remainder table needs row ids; this data keeps raw 64-bit ids "
                       "(make it dynamic, or hashed with rows=N)")


def raw_id_defaults(t: EmbeddingTableConfig, overrides: dict | None = None) -> EmbeddingTableConfig:
  """A table over raw 64-bit ids that its overrides (setting -> value) do not make static,
  hashed (rows) or quotient-remainder becomes dynamic, with room for its vocabulary (the distinct
  ids the data's train split holds): no collisions and no eviction on those ids. With
  map_shards = L the ids spread over L pieces by a hash, so each piece gets room for its share
  plus 4 standard deviations of the spread (V/L + 4 sqrt(V/L)); a piece that still overflows
  evicts, counted in embedding_dynamic_evicted."""
  overrides = overrides or {}
  if (t.id_bits != 64 or t.kind != "static" or overrides.get("kind") == "static"
      or {"rows", "qr_buckets"} & set(overrides)):
    return t
  pieces = max(1, int(overrides.get("map_shards", 1)))
  share = t.vocab_size / pieces
  per_piece = math.ceil(share + (4 * math.sqrt(share) if pieces > 1 else 0))
  return dataclasses.replace(t, kind="dynamic", capacity=per_piece * pieces)


def check_raw_id_table(t: EmbeddingTableConfig) -> None:
  """Raises ValueError for a 64-bit table that can hold its ids neither by a map nor by hashing."""
  if t.id_bits == 64 and t.kind == "static" and not t.rows:
    raise ValueError(f"table {t.name}: this data keeps raw 64-bit ids (--vocab raw): the table must be dynamic "
                     "(kind=dynamic, capacity=N) or hashed (rows=N)")


def with_rows(t: EmbeddingTableConfig) -> EmbeddingTableConfig:
  """The table with vocab_size = the rows it has: a dynamic table's capacity + its default row, a
  hashed table's `rows`, else its vocabulary."""
  if t.kind == "dynamic":
    return dataclasses.replace(t, vocab_size=t.capacity + 1)
  return dataclasses.replace(t, vocab_size=t.rows) if t.rows else t


@dataclasses.dataclass(frozen=True)
class FeatureSlots:
  """Features in batch order, each with a max hotness: feature f owns slots [start[f], start[f]+hotness[f])."""
  names: tuple[str, ...]
  hotness: tuple[int, ...]

  @property
  def num_slots(self) -> int:
    return int(sum(self.hotness))

  @property
  def start(self) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(self.hotness)[:-1]]).astype(np.int32)

  @property
  def slot_feature(self) -> np.ndarray:
    return np.repeat(np.arange(len(self.names), dtype=np.int32), self.hotness)


def num_output_vectors(slots: FeatureSlots, combiners: Sequence[str]) -> int:
  """Vectors per example after pooling: one per pooled feature, hotness per "none" feature."""
  return int(sum(h if c == "none" else 1 for h, c in zip(slots.hotness, combiners)))


def pool(rows_btd: jax.Array, valid_bt: jax.Array, slots: FeatureSlots, combiners: Sequence[str]) -> jax.Array:
  """Pools slot rows per feature: [B, T, D] -> [B, num_output_vectors, D]; padding never counts.

  Features keep their order; a "none" feature contributes its positions in order. Static slices
  per feature (no scatter), so XLA fuses the sums.
  """
  with jax.named_scope("embedding_pool"):
    if all(h == 1 for h in slots.hotness):
      return rows_btd * valid_bt[..., None].astype(rows_btd.dtype)
    out = []
    for start, h, combiner in zip(slots.start, slots.hotness, combiners):
      valid = valid_bt[:, start:start + h, None].astype(rows_btd.dtype)
      rows = rows_btd[:, start:start + h] * valid
      if combiner == "none":
        out.append(rows)
        continue
      pooled = jnp.sum(rows, axis=1)
      if combiner == "mean":
        pooled = pooled / jnp.maximum(jnp.sum(valid, axis=1), 1.0)
      out.append(pooled[:, None])
    return jnp.concatenate(out, axis=1)


def _uniform_from_counters(key_data: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
  """U[0, 1) from a counter-based hash of (key, row, col): elementwise, no temporaries.

  key_data: [rows, 2] uint32 per row; row, col: [rows, dim] uint32.
  """
  k0 = jnp.broadcast_to(key_data[:, :1], row.shape)
  k1 = jnp.broadcast_to(key_data[:, 1:], row.shape)
  bits, _ = threefry2x32_p.bind(k0, k1, row, col)
  return jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0


def init_stacked(key: jax.Array, *, num_rows: int, dim: int, row_offset: jax.Array | int = 0,
                 col_offset: jax.Array | int = 0, table_offsets: np.ndarray, table_ids: np.ndarray,
                 vocab_sizes: np.ndarray, scales: np.ndarray, dtype, block_rows: int = 1 << 16) -> jax.Array:
  """Initial values of (a shard of) a stacked array: global row g holds row (g - offset[t]) of
  table t, or zeros (padding). This shard starts at global (row_offset, col_offset).

  A value depends only on (key, table id, row within the table, column), never on where the
  layout puts the row: every sharding type and mesh starts from the same tables. Values are
  written block by block, so the temporaries are a block's size, not the table's.
  """
  order = np.argsort(table_offsets, kind="stable")
  offsets = jnp.asarray(table_offsets[order], jnp.int32)
  vocab = jnp.asarray(vocab_sizes[order], jnp.int32)
  scale = jnp.asarray(scales[order], jnp.float32)
  keys = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(key, i)))(jnp.asarray(table_ids[order]))
  block = min(block_rows, num_rows)

  def values(start):
    g = jax.lax.broadcasted_iota(jnp.int32, (block, dim), 0) + start + row_offset
    c = jax.lax.broadcasted_iota(jnp.int32, (block, dim), 1) + col_offset
    t = jnp.clip(jnp.searchsorted(offsets, g[:, 0], side="right") - 1, 0, len(order) - 1)
    r = g - offsets[t][:, None]
    valid = (r >= 0) & (r < vocab[t][:, None])
    u = _uniform_from_counters(keys[t], r.astype(jnp.uint32), c.astype(jnp.uint32))
    return jnp.where(valid, (2.0 * u - 1.0) * scale[t][:, None], 0.0).astype(dtype)

  def write_block(i, out):  # The last block overlaps its neighbour: it rewrites equal values.
    start = jnp.minimum(i * block, num_rows - block)
    return jax.lax.dynamic_update_slice(out, values(start), (start, 0))

  return jax.lax.fori_loop(0, -(-num_rows // block), write_block, jnp.zeros((num_rows, dim), dtype))
