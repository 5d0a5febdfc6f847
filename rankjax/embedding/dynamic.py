"""Dynamic (collision-free) embedding tables: raw ids -> rows through an on-device map.

A dynamic table (`kind="dynamic"`) has `capacity` rows for ids plus one shared default row (row
`capacity`). Its map holds the ids that own a row: `keys` sorted ascending (EMPTY past the live
ones), the `rows` they own (EMPTY entries carry the free rows), a `score` (decayed count of
sightings) and the step each was `last` seen. Looking an id up is a binary search; a step sorts
the batch's ids once and rebuilds the map by a stable partition and a merge (sorting the map only
on steps that evict), so it is deterministic (no hashing races, no atomics) and two runs give the
same rows for the same ids. Below capacity no two ids share a row.

A train step (`admit`), for the distinct ids of the batch:
  1. ids in the map count a sighting (score += occurrences, last = step); lfu scores decay by
     `decay` a step first;
  2. with `admit_after` > 1, an id not in the map is counted in a count-min sketch
     (SKETCH_DEPTH rows of `sketch_width` counters, `sketch_slots`) and becomes eligible once its
     estimate reaches admit_after (count-min never underestimates: an id may be admitted early
     when it shares counters with frequent ones, never late); until then it reads the default row.
     The counters decay by `decay` a step too (whatever the eviction), so admission counts recent
     sightings: at 0.99 a sighting counts half after 69 steps, and on a long run the sketch does
     not fill up into admitting every id at first sight (decay=1 counts since the start);
  3. eviction: "ttl" frees the rows of ids unseen for more than `ttl` steps; then, if the eligible
     new ids outnumber the free rows, ids not in this batch are evicted in order of (score, last
     seen, id) for "lfu" or (last seen, id) for "ttl", lowest first;
  4. eligible ids take the free rows, most occurrences in the batch first (then by id); any that
     find none (more distinct new ids in one batch than rows) read the default row this step
     (`overflow`);
  5. each new id's row is initialised from (the table's key, the id), its optimizer state reset:
     `fresh_values`.
A step whose update is skipped (non-finite loss) still admits: sightings are data, not gradients.
Eval and serving (`lookup`) only read the map: an unknown id reads the default row.

The map is replicated on every device (16 bytes a row: key, row, score, last seen; plus
SKETCH_DEPTH x sketch_width x 4 bytes with admission); the rows themselves live in the table's group under
any sharding type (row_wise, table_wise, ...).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

EMPTY = np.iinfo(np.int32).max  # A map entry without an id; raw ids are 0 <= id < EMPTY.
EVICTIONS = ("lfu", "ttl")
SKETCH_DEPTH = 2
_SKETCH_MIX = ((0x9E3779B1, 0x7F4A7C15), (0x85EBCA77, 0xC2B2AE3D))  # Per sketch row: multiplier, offset.


@dataclasses.dataclass(frozen=True)
class DynamicSpec:
  """A dynamic table's map: see the module doc."""
  capacity: int
  admit_after: int = 1
  eviction: str = "lfu"
  decay: float = 0.99
  ttl: int = 0
  sketch_width: int = 0  # 0 = 4 x capacity (at least 1024).

  def __post_init__(self):
    if self.capacity <= 0:
      raise ValueError(f"capacity must be > 0, got {self.capacity}")
    if self.admit_after < 1:
      raise ValueError(f"admit_after must be >= 1, got {self.admit_after}")
    if self.eviction not in EVICTIONS:
      raise ValueError(f"eviction {self.eviction!r} not in {EVICTIONS}")
    if not 0.0 < self.decay <= 1.0:
      raise ValueError(f"decay must be in (0, 1], got {self.decay}")
    if self.eviction == "ttl" and self.ttl < 1:
      raise ValueError(f"eviction 'ttl' needs ttl >= 1 (steps), got {self.ttl}")

  @classmethod
  def of(cls, table) -> "DynamicSpec":
    """The map of a dynamic EmbeddingTableConfig."""
    return cls(capacity=table.capacity, admit_after=table.admit_after, eviction=table.eviction,
               decay=table.decay, ttl=table.ttl)

  @property
  def width(self) -> int:
    return self.sketch_width or max(1024, 4 * self.capacity)


def sketch_slots(ids, width: int, xp=jnp):
  """[SKETCH_DEPTH, N] counter of each id in each sketch row: a multiply-xorshift hash of the id's
  32 bits (the same arithmetic in NumPy with xp=np, for references)."""
  x = xp.asarray(ids).astype(xp.uint32)
  out = []
  for mul, add in _SKETCH_MIX:
    h = x * xp.uint32(mul) + xp.uint32(add)
    h = h ^ (h >> xp.uint32(15))
    h = h * xp.uint32(0x2C1B3C6D)
    h = h ^ (h >> xp.uint32(12))
    out.append((h % xp.uint32(width)).astype(xp.int32))
  return xp.stack(out)


def init_map(spec: DynamicSpec, key_data: jax.Array) -> dict[str, jax.Array]:
  """An empty map; `key_data` (uint32 key data) seeds the rows of new ids."""
  c = spec.capacity
  # Free rows are handed out in a scattered order (i x stride mod c, a stride near c / golden ratio
  # and prime to c: the same on every mesh), so the first ids, the most frequent, spread over a
  # row-sharded table's shards.
  stride = max(1, int(c * 0.6180339887))
  while math.gcd(stride, c) != 1:
    stride += 1
  free_rows = (np.arange(c, dtype=np.int64) * stride % c).astype(np.int32)
  state = {"keys": jnp.full((c,), EMPTY, jnp.int32), "rows": jnp.asarray(free_rows),
           "score": jnp.zeros((c,), jnp.float32), "last": jnp.zeros((c,), jnp.int32),
           "key": jnp.asarray(key_data, jnp.uint32)}
  if spec.admit_after > 1:
    state["sketch"] = jnp.zeros((SKETCH_DEPTH, spec.width), jnp.float32)
  return state


def lookup(state: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
  """Raw ids (-1 = padding) -> rows: an id in the map its row, any other the default row."""
  keys, c = state["keys"], state["keys"].shape[0]
  valid = (ids >= 0) & (ids < EMPTY)
  pos = jnp.clip(jnp.searchsorted(keys, ids), 0, c - 1)
  return jnp.where(valid, jnp.where(keys[pos] == ids, state["rows"][pos], c), -1)


def admit(spec: DynamicSpec, state: dict[str, jax.Array], ids: jax.Array, step: jax.Array
          ) -> tuple[dict[str, jax.Array], jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
  """One train step's map update for raw `ids` (any shape, -1 = padding); see the module doc.

  Returns (new state, rows of `ids` in the new map, fresh rows [N] (-1 = none) and the ids that
  took them [N], stats): admitted, evicted, pending (distinct ids waiting for admission),
  overflow (eligible ids that found no row) and occupancy (live ids / capacity)."""
  c = spec.capacity
  flat = ids.reshape(-1)
  n = flat.shape[0]
  valid = (flat >= 0) & (flat < EMPTY)
  u, counts = _distinct(jnp.where(valid, flat, EMPTY))
  u_valid = u != EMPTY
  keys, rows, score, last = state["keys"], state["rows"], state["score"], state["last"]
  if spec.eviction == "lfu":
    score = score * spec.decay
  pos = jnp.clip(jnp.searchsorted(keys, u), 0, c - 1)
  found = u_valid & (keys[pos] == u)
  at = jnp.where(found, pos, c)  # Out of range: dropped.
  score = score.at[at].add(counts.astype(jnp.float32), mode="drop")
  last = last.at[at].set(step, mode="drop")
  protected = jnp.zeros((c,), bool).at[at].set(True, mode="drop")

  new = u_valid & ~found
  out = dict(state)
  if spec.admit_after > 1:
    slots = sketch_slots(u, spec.width)  # [D, N]
    depth = jnp.arange(slots.shape[0])[:, None]
    sketch = (state["sketch"] * spec.decay).at[depth, jnp.where(new, slots, spec.width)].add(
        jnp.where(new, counts, 0).astype(jnp.float32), mode="drop")
    estimate = jnp.min(sketch[depth, slots], axis=0)
    eligible = new & (estimate >= spec.admit_after)
    out["sketch"] = sketch
  else:
    eligible = new

  live = keys != EMPTY
  expired = jnp.zeros((c,), bool)
  if spec.eviction == "ttl":
    expired = live & ~protected & (step - last > spec.ttl)
    keys, live = jnp.where(expired, EMPTY, keys), live & ~expired
  evictable = live & ~protected
  need = jnp.sum(eligible)
  free = c - jnp.sum(live)
  n_evict = jnp.clip(need - free, 0, jnp.sum(evictable))
  # Sorts only on steps that need them: the eviction order when evicting, the admission order
  # when more ids are eligible than there are rows.
  order_keys = ((~evictable).astype(jnp.int32), score, last, keys) if spec.eviction == "lfu" else (
      (~evictable).astype(jnp.int32), last, keys)
  evict = jax.lax.cond(
      n_evict > 0,
      lambda: jnp.zeros((c,), bool).at[jax.lax.sort((*order_keys, jnp.arange(c, dtype=jnp.int32)),
                                                    num_keys=len(order_keys))[-1]].set(jnp.arange(c) < n_evict),
      lambda: jnp.zeros((c,), bool))
  keys = jnp.where(evict, EMPTY, keys)
  room = free + n_evict

  def by_occurrences():  # Most occurrences first, then id (u is ascending; the sort is stable).
    order = jax.lax.sort((jnp.where(eligible, -counts, 1), jnp.arange(n, dtype=jnp.int32)),
                         num_keys=1, is_stable=True)[-1]
    return eligible & (jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32)) < room)

  admitted = jax.lax.cond(need > room, by_occurrences, lambda: eligible)
  changed = jnp.any(admitted) | jnp.any(evict) | jnp.any(expired)  # Else the map stays sorted as it is.
  keys, rows, score, last = jax.lax.cond(changed, _merge, lambda keys, rows, score, last, *_: (keys, rows, score, last),
                                         keys, rows, score, last, u, counts, admitted, step)
  fresh_rows = jnp.where(admitted, rows[jnp.clip(jnp.searchsorted(keys, u), 0, c - 1)], -1)
  out.update(keys=keys, rows=rows, score=score, last=last)

  stats = {"admitted": jnp.sum(admitted), "evicted": n_evict + jnp.sum(expired),
           "pending": jnp.sum(new & ~eligible), "overflow": jnp.sum(eligible & ~admitted),
           "occupancy": jnp.sum(keys != EMPTY) / c}
  return out, lookup(out, ids), fresh_rows, jnp.where(admitted, u, -1), stats


def _merge(keys, rows, score, last, u, counts, admitted, step):
  """The map with evicted entries (EMPTY keys among the live ones) gone and the admitted ids in,
  sorted by key again, without a sort: live entries keep their order (stable partition by a
  cumulative sum), the free entries' rows go to the admitted ids in ascending id order (u is
  ascending), and the two ascending runs are merged by binary search."""
  c, n = keys.shape[0], u.shape[0]
  idx = jnp.arange(c, dtype=jnp.int32)
  live = keys != EMPTY
  num_live = jnp.sum(live, dtype=jnp.int32)
  compact = jnp.where(live, jnp.cumsum(live) - 1, num_live + jnp.cumsum(~live) - 1)
  keys, rows, score, last = (jnp.zeros_like(a).at[compact].set(a, unique_indices=True)
                             for a in (keys, rows, score, last))
  k = jnp.cumsum(admitted) - 1  # The k-th admitted id takes the row of free entry num_live + k.
  taken = jnp.sum(admitted, dtype=jnp.int32)
  slot = jnp.where(admitted, k, n)
  new_keys = jnp.full((n,), EMPTY, jnp.int32).at[slot].set(u, mode="drop")
  new_score = jnp.zeros((n,), jnp.float32).at[slot].set(counts.astype(jnp.float32), mode="drop")
  new_rows = rows[jnp.clip(num_live + jnp.arange(n, dtype=jnp.int32), 0, c - 1)]
  is_live, consumed = idx < num_live, (idx >= num_live) & (idx < num_live + taken)
  old_at = jnp.where(is_live, idx + jnp.searchsorted(new_keys, keys), jnp.where(consumed, c, idx))
  new_at = jnp.where(jnp.arange(n) < taken, jnp.arange(n) + jnp.searchsorted(keys, new_keys), c)

  def place(old, new, fill):
    return jnp.full((c,), fill, old.dtype).at[old_at].set(old, mode="drop").at[new_at].set(new, mode="drop")

  return (place(keys, new_keys, EMPTY), place(rows, new_rows, 0), place(score, new_score, 0),
          place(last, jnp.full((n,), step, jnp.int32), 0))


def _distinct(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(distinct values ascending, padded with EMPTY to x's size; their counts): one sort, a
  cumulative sum and two scatters (jnp.unique with a size takes 6x as long on XLA:CPU)."""
  s = jnp.sort(x)
  first = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
  segment = jnp.cumsum(first) - 1
  u = jnp.full(x.shape, EMPTY, jnp.int32).at[segment].set(s)
  counts = jnp.zeros(x.shape, jnp.int32).at[segment].add(1)
  return u, jnp.where(u == EMPTY, 0, counts)


def fresh_values(key_data: jax.Array, ids: jax.Array, dim: int, scale: float) -> jax.Array:
  """[N, dim] initial rows of new ids: U(-scale, scale) drawn from (the table's key, id), so an
  id's first row is the same in every run and on every mesh."""
  key = jax.random.wrap_key_data(key_data)
  draw = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (dim,), jnp.float32, -scale, scale))
  return draw(jnp.maximum(ids, 0))
