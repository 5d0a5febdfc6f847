"""A dynamic table's map in `shards` pieces, split by id, so a device keeps only its pieces.

Id x belongs to piece p(x) = hash_words(x) mod L, L = DynamicSpec.shards (set by config, not by
the mesh: every mesh gives the same rows). Piece s is a map of its own (rankjax/embedding/dynamic.py)
with capacity / L entries, owning the table's rows [s * c/L, (s + 1) * c/L) (its `rows` are local,
0 .. c/L - 1); its ids are admitted and evicted among themselves: LFU / TTL order, admission
counts (its own sketch) and overflow are per piece, and an id reads the table's one default row
(row c) while it has none. The pieces are stacked on a leading axis [L, ...] ("key", the table's
init key, is shared). A train step deduplicates the batch's ids once (one sort) and gives each
piece its own distinct ids, a fixed share of the batch (`piece_capacity`, with an exact path for
a step where a piece has more), so a piece's work does not grow with the whole batch. An id's row comes from its one owner and
every other piece gives -1, so the rows of the pieces combine by a max (and across devices by a
pmax, when the engine splits the pieces over the table-row mesh axes: rankjax/embedding/engine.py).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from rankjax.embedding import dynamic

SHARED = ("key",)  # Map entries not split into pieces.


def piece_spec(spec: dynamic.DynamicSpec) -> dynamic.DynamicSpec:
  """One piece's map: capacity / shards entries (its sketch 1 / shards of the table's)."""
  return dataclasses.replace(spec, capacity=spec.capacity // spec.shards, shards=1,
                             sketch_width=max(1, spec.sketch_width // spec.shards) if spec.sketch_width else 0)


def owner(words: tuple, shards: int, xp=jnp):
  """The piece of each id (its key words; PAD words give a piece too, masked by the caller)."""
  hi = words[0] if len(words) == 2 else xp.zeros_like(words[-1])
  return dynamic.hash_words(hi, words[-1], xp) % shards


def init(spec: dynamic.DynamicSpec, key_data: jax.Array) -> dict[str, jax.Array]:
  """L empty pieces, stacked (each hands out its rows in the scattered order of dynamic.init_map)."""
  piece = dynamic.init_map(piece_spec(spec), key_data)
  return {k: v if k in SHARED else jnp.broadcast_to(v, (spec.shards, *v.shape)) for k, v in piece.items()}


def _global_rows(rows: jax.Array, s: jax.Array, piece: dynamic.DynamicSpec, capacity: int) -> jax.Array:
  """A piece's lookup (local row, its default row piece.capacity, or -1) -> the table's rows."""
  return jnp.where(rows < 0, -1, jnp.where(rows == piece.capacity, capacity, rows + s * piece.capacity))


def _mine(words: tuple, s: jax.Array, shards: int) -> tuple[jax.Array, tuple]:
  """(which ids piece s owns, the ids with the others as padding) as (ids, ids_hi) arguments."""
  mine = (owner(words, shards) == s) & ~dynamic.is_pad(words)
  masked = tuple(jnp.where(mine, w, dynamic.PAD) for w in words)
  return mine, (masked[-1], masked[0] if len(words) == 2 else None)


def piece_capacity(n: int, shards: int) -> int:
  """Distinct ids one piece takes in a step on the compact path, for a batch of n ids: an even
  share of n (as if every id were distinct, the most there can be), plus 4 standard deviations of
  a binomial share and 8, rounded up to 8 (the hash spreads distinct ids over the pieces alike; a
  step that has more for some piece takes the exact path, so this is a speed setting, never a
  limit)."""
  share = n / shards
  return min(n, -(-int(share + 4 * math.sqrt(share) + 8) // 8) * 8)


def admit(spec: dynamic.DynamicSpec, pieces: dict[str, jax.Array], first: jax.Array, u: tuple, counts: jax.Array,
          step: jax.Array) -> tuple[dict[str, jax.Array], jax.Array, jax.Array, dict[str, jax.Array]]:
  """A train step over the pieces given (`first`: the index of the first; the leading axis of
  `pieces`), for the batch's distinct ids as dynamic.distinct gives them (key words [n] ascending,
  counts [n]). Each piece updates from its own ids only, piece_capacity of them (in ascending
  order: an id's place among its piece's is a cumulative count), or all n in a step where some
  piece given has more (the same result; a lax.cond). Returns (new pieces, the table's row of each
  distinct id in the new map, or -1 where no piece given owns it (padding: -1), the row it took
  this step or -1, stats summed over the pieces (occupancy: the sum of live / capacity, for the
  caller to average))."""
  piece, n, shared = piece_spec(spec), u[0].shape[0], {k: pieces[k] for k in SHARED}
  stacked = {k: v for k, v in pieces.items() if k not in SHARED}
  count = next(iter(stacked.values())).shape[0]
  local = jnp.where(dynamic.is_pad(u), -1, owner(u, spec.shards).astype(jnp.int32) - first)  # Its piece among these.
  onehot = (local[:, None] == jnp.arange(count, dtype=jnp.int32)[None, :]).astype(jnp.int32)  # [n, count]
  place_in_piece = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=1)
  largest = jnp.max(jnp.sum(onehot, axis=0))

  def update(k):
    mine = (local >= 0) & (local < count)
    index = jnp.full((count, k), n, jnp.int32).at[jnp.where(mine, local, count), place_in_piece].set(
        jnp.arange(n, dtype=jnp.int32), mode="drop")  # [count, k] each piece's ids (their index in u; n: none)

    def one(xs):
      state_s, s, at = xs
      valid, at = at < n, jnp.minimum(at, n - 1)
      u_s = tuple(jnp.where(valid, w[at], dynamic.PAD) for w in u)
      state_s, fresh, _, stats = dynamic.admit_distinct(piece, {**state_s, **shared}, u_s,
                                                        jnp.where(valid, counts[at], 0), step)
      rows = dynamic.lookup(state_s, *u_s[::-1])
      return ({key: v for key, v in state_s.items() if key not in SHARED},
              (_global_rows(rows, s, piece, spec.capacity), _global_rows(fresh, s, piece, spec.capacity), stats))

    new, (rows, fresh, stats) = jax.lax.map(one, (stacked, first + jnp.arange(count, dtype=jnp.int32), index))
    place = lambda x: jnp.full((n,), -1, jnp.int32).at[index.reshape(-1)].set(x.reshape(-1), mode="drop")
    return new, place(rows), place(fresh), {key: jnp.sum(v, axis=0) for key, v in stats.items()}

  k = piece_capacity(n, spec.shards)
  if k >= n:
    new, rows, fresh, stats = update(n)
  else:
    new, rows, fresh, stats = jax.lax.cond(largest > k, lambda: update(n), lambda: update(k))
  return {**new, **shared}, rows, fresh, stats


def lookup(spec: dynamic.DynamicSpec, pieces: dict[str, jax.Array], first: jax.Array, words: tuple) -> jax.Array:
  """Eval and serving: the table's row of each id (the default row c when its piece does not hold
  it, -1 for padding) where a piece given owns it, else -1."""
  piece = piece_spec(spec)
  shared = {k: pieces[k] for k in SHARED if k in pieces}  # A served map holds only keys and rows.
  stacked = {k: v for k, v in pieces.items() if k not in SHARED}
  count = next(iter(stacked.values())).shape[0]

  def one(state_s, s):
    mine, args = _mine(words, s, spec.shards)
    rows = jnp.where(mine, dynamic.lookup({**state_s, **shared}, *args), -1)
    return _global_rows(rows, s, piece, spec.capacity)

  return jnp.max(jax.lax.map(lambda xs: one(*xs), (stacked, first + jnp.arange(count, dtype=jnp.int32))), axis=0)
