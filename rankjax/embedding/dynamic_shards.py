"""A dynamic table's map in `shards` pieces, split by id, so a device keeps only its pieces.

Id x belongs to piece p(x) = hash_words(x) mod L, L = DynamicSpec.shards (set by config, not by
the mesh: every mesh gives the same rows). Piece s is a map of its own (rankjax/embedding/dynamic.py)
with capacity / L entries, owning the table's rows [s * c/L, (s + 1) * c/L) (its `rows` are local,
0 .. c/L - 1); its ids are admitted and evicted among themselves: LFU / TTL order, admission
counts (its own sketch) and overflow are per piece, and an id reads the table's one default row
(row c) while it has none. The pieces are stacked on a leading axis [L, ...] ("key", the table's
init key, is shared). Each piece updates from the batch's ids it owns (the others are padding to
it); an id's row comes from its one owner and every other piece gives -1, so the rows of the
pieces combine by a max (and across devices by a pmax, when the engine splits the pieces over the
table-row mesh axes: rankjax/embedding/engine.py).
"""

from __future__ import annotations

import dataclasses

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


def admit(spec: dynamic.DynamicSpec, pieces: dict[str, jax.Array], first: jax.Array, words: tuple, step: jax.Array
          ) -> tuple[dict[str, jax.Array], jax.Array, jax.Array, dict[str, jax.Array]]:
  """A train step over the pieces given (`first`: the index of the first; the leading axis of
  `pieces`), for the batch's ids as key words [N]. Returns (new pieces, the table's row of each id
  or -1 where no piece given owns it (padding: -1), the row of each id newly admitted this step or
  -1, stats summed over the pieces (occupancy: the sum of live / capacity, for the caller to
  average))."""
  piece = piece_spec(spec)

  def one(state_s, s):
    mine, args = _mine(words, s, spec.shards)
    before = dynamic.lookup(state_s, *args)
    state_s, rows, _, _, stats = dynamic.admit(piece, state_s, args[0], step, args[1])
    rows = jnp.where(mine, rows, -1)
    fresh = jnp.where(mine & (before == piece.capacity) & (rows != piece.capacity), rows, -1)
    return state_s, (_global_rows(rows, s, piece, spec.capacity), _global_rows(fresh, s, piece, spec.capacity),
                     stats)

  shared = {k: pieces[k] for k in SHARED}
  stacked = {k: v for k, v in pieces.items() if k not in SHARED}
  count = next(iter(stacked.values())).shape[0]
  new, (rows, fresh, stats) = jax.lax.map(lambda xs: one({**xs[0], **shared}, xs[1]),
                                          (stacked, first + jnp.arange(count, dtype=jnp.int32)))
  new = {**{k: v for k, v in new.items() if k not in SHARED}, **shared}
  return new, jnp.max(rows, axis=0), jnp.max(fresh, axis=0), {k: jnp.sum(v, axis=0) for k, v in stats.items()}


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
