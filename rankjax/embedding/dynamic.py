"""Dynamic (collision-free) embedding tables: raw ids -> rows through an on-device map.

A dynamic table (`kind="dynamic"`) has `capacity` rows for ids plus one shared default row (row
`capacity`). A key is one uint32 word (31-bit ids: int32 >= 0, any negative is padding) or, for
data with 64-bit ids (`spec.wide`; kept raw by `rankjax data criteo --vocab raw`), two words
(hi, lo) ordered as the unsigned 64-bit number, where the all-ones id (int64 -1) is padding and
any other id can own a row. PAD (all ones in every word) marks padding and empty entries. Its map
holds the ids that own a row: `keys` (and `keys_hi` when wide) sorted ascending (PAD past the live
ones), the `rows` they own (PAD entries carry the free rows), a `score` (decayed count of
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

The map is replicated on every device (16 bytes a row: key, row, score, last seen; 20 when wide; plus
SKETCH_DEPTH x sketch_width x 4 bytes with admission), or split by id into `shards` pieces that the
table-row mesh axes divide among the devices (rankjax/embedding/dynamic_shards.py); the rows
themselves live in the table's group under any sharding type (row_wise, table_wise, ...).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

PAD = np.uint32(0xFFFFFFFF)  # Both words of the padding id (int64 -1); a map entry without an id holds it too.
MAP_FORMAT = 2  # The map's arrays as checkpointed: 2 = uint32 key words, PAD empty (1: int32 keys).
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
  wide: bool = False  # 64-bit ids (two words a key); else 31-bit ids (one word a key, cheaper sorts).
  shards: int = 1  # Pieces of the map, split by id (rankjax/embedding/dynamic_shards.py); 1 = one map.

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
    if self.shards < 1 or self.capacity % self.shards:
      raise ValueError(f"map_shards must be >= 1 and divide capacity {self.capacity}, got {self.shards}")

  @classmethod
  def of(cls, table) -> "DynamicSpec":
    """The map of a dynamic EmbeddingTableConfig (wide when its ids are 64-bit)."""
    return cls(capacity=table.capacity, admit_after=table.admit_after, eviction=table.eviction,
               decay=table.decay, ttl=table.ttl, wide=table.id_bits == 64, shards=table.map_shards)

  @property
  def bytes_per_row(self) -> int:
    """A map entry: its key words, row, score and last seen step."""
    return 4 * len(self.key_names) + 12

  @property
  def key_names(self) -> tuple[str, ...]:
    """The map's key words, high first."""
    return ("keys_hi", "keys") if self.wide else ("keys",)

  @property
  def width(self) -> int:
    return self.sketch_width or max(1024, 4 * self.capacity)


def key_words(ids, ids_hi=None, xp=jnp) -> tuple:
  """The uint32 key words of raw ids, high first: (lo,) for int32 31-bit ids (any negative is
  padding: PAD); with `ids_hi` (hi, lo), the high and low words of 64-bit ids (bit patterns)."""
  ids = xp.asarray(ids)
  if ids_hi is None:
    return (xp.where(ids < 0, PAD, ids.astype(xp.uint32)),)
  return xp.asarray(ids_hi).astype(xp.uint32), ids.astype(xp.uint32)


def hash_words(hi, lo, xp=jnp):
  """A 64-bit id's two words -> int32 in [0, 2**31): a hashed table's id for it (murmur3's 32-bit
  finalizer over the low word mixed with the finalized high word; NumPy with xp=np)."""
  def fmix(h):
    h = h ^ (h >> xp.uint32(16))
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> xp.uint32(13))
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> xp.uint32(16))
  lo, hi = xp.asarray(lo).astype(xp.uint32), xp.asarray(hi).astype(xp.uint32)
  return (fmix(lo ^ fmix(hi + xp.uint32(0x9E3779B9))) >> xp.uint32(1)).astype(xp.int32)


def sketch_slots(words: tuple, width: int, xp=jnp):
  """[SKETCH_DEPTH, N] counter of each id (its key words) in each sketch row: a multiply-xorshift
  hash of the low word, mixed with the high word when wide (the same arithmetic in NumPy with
  xp=np, for references)."""
  out = []
  for mul, add in _SKETCH_MIX:
    x = xp.asarray(words[-1]).astype(xp.uint32)
    if len(words) == 2:
      x = x ^ (xp.asarray(words[0]).astype(xp.uint32) * xp.uint32(mul))
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
  state = {k: jnp.full((c,), PAD, jnp.uint32) for k in spec.key_names}
  state.update(rows=jnp.asarray(free_rows), score=jnp.zeros((c,), jnp.float32), last=jnp.zeros((c,), jnp.int32),
               key=jnp.asarray(key_data, jnp.uint32))
  if spec.admit_after > 1:
    state["sketch"] = jnp.zeros((SKETCH_DEPTH, spec.width), jnp.float32)
  return state


def is_pad(words: tuple) -> jax.Array:
  out = words[0] == PAD
  for w in words[1:]:
    out = out & (w == PAD)
  return out


def _rank(keys: tuple, queries: tuple) -> jax.Array:
  """Entries of the ascending keys below each query (searchsorted, side left): one word by
  jnp.searchsorted; two words over the 64-bit order, by a binary search of halving steps."""
  if len(keys) == 1:
    return jnp.searchsorted(keys[0], queries[0]).astype(jnp.int32)
  (keys_hi, keys_lo), (q_hi, q_lo) = keys, queries
  c = keys_hi.shape[0]
  pos = jnp.zeros(q_hi.shape, jnp.int32)
  step = 1 << (c.bit_length() - 1) if c else 0
  while step:
    i = jnp.minimum(pos + step, c) - 1
    kh, kl = keys_hi[i], keys_lo[i]
    below = (kh < q_hi) | ((kh == q_hi) & (kl < q_lo))
    pos = jnp.where((pos + step <= c) & below, pos + step, pos)
    step >>= 1
  return pos


def _keys(state: dict[str, jax.Array]) -> tuple:
  return (state["keys_hi"], state["keys"]) if "keys_hi" in state else (state["keys"],)


def _find(state: dict[str, jax.Array], words: tuple) -> tuple[jax.Array, jax.Array]:
  """(position in the map, whether the id is there) of each id (its key words)."""
  keys, c = _keys(state), state["keys"].shape[0]
  pos = jnp.clip(_rank(keys, words), 0, c - 1)
  found = ~is_pad(words)
  for k, w in zip(keys, words):
    found = found & (k[pos] == w)
  return pos, found


def _words_of(state, ids, ids_hi) -> tuple:
  if ("keys_hi" in state) != (ids_hi is not None):
    raise ValueError("a wide map (64-bit ids) takes ids_hi, a narrow one does not")
  return key_words(ids, ids_hi)


def lookup(state: dict[str, jax.Array], ids: jax.Array, ids_hi: jax.Array | None = None) -> jax.Array:
  """Raw ids (`key_words`; padding -> -1) -> rows: an id in the map its row, any other the default row."""
  words = _words_of(state, ids, ids_hi)
  pos, found = _find(state, words)
  return jnp.where(is_pad(words), -1, jnp.where(found, state["rows"][pos], state["keys"].shape[0]))


def admit(spec: DynamicSpec, state: dict[str, jax.Array], ids: jax.Array, step: jax.Array,
          ids_hi: jax.Array | None = None
          ) -> tuple[dict[str, jax.Array], jax.Array, jax.Array, tuple, dict[str, jax.Array]]:
  """One train step's map update for raw ids (`ids`, any shape; `ids_hi` their high words when the
  map is wide); see the module doc.

  Returns (new state, rows of the ids in the new map (-1 for padding), fresh rows [N] (-1 = none)
  and the key words of the ids that took them, stats): admitted, evicted, pending (distinct ids
  waiting for admission), overflow (eligible ids that found no row) and occupancy (live ids /
  capacity)."""
  words = _words_of(state, ids, ids_hi)
  out, fresh_rows, fresh_ids, stats = admit_distinct(spec, state, *distinct(tuple(w.reshape(-1) for w in words)),
                                                     step)
  return out, lookup(out, *words[::-1]), fresh_rows, fresh_ids, stats


def admit_distinct(spec: DynamicSpec, state: dict[str, jax.Array], u: tuple, counts: jax.Array, step: jax.Array
                   ) -> tuple[dict[str, jax.Array], jax.Array, tuple, dict[str, jax.Array]]:
  """`admit` for a batch's distinct ids as `distinct` gives them (key words [n] ascending, PAD
  past the real ones; their occurrences): (new state, fresh rows [n] (-1 = none), the key words of
  the ids that took them, stats)."""
  c, n = spec.capacity, u[0].shape[0]
  u_valid = ~is_pad(u)
  keys, rows, score, last = _keys(state), state["rows"], state["score"], state["last"]
  if spec.eviction == "lfu":
    score = score * spec.decay
  pos, found = _find(state, u)
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

  live = ~is_pad(keys)
  expired = jnp.zeros((c,), bool)
  if spec.eviction == "ttl":
    expired = live & ~protected & (step - last > spec.ttl)
    live = live & ~expired
  evictable = live & ~protected
  need = jnp.sum(eligible)
  free = c - jnp.sum(live)
  n_evict = jnp.clip(need - free, 0, jnp.sum(evictable))
  # Sorts only on steps that need them: the eviction order when evicting, the admission order
  # when more ids are eligible than there are rows.
  order_keys = ((~evictable).astype(jnp.int32), score, last, *keys) if spec.eviction == "lfu" else (
      (~evictable).astype(jnp.int32), last, *keys)
  evict = jax.lax.cond(
      n_evict > 0,
      lambda: jnp.zeros((c,), bool).at[jax.lax.sort((*order_keys, jnp.arange(c, dtype=jnp.int32)),
                                                    num_keys=len(order_keys))[-1]].set(jnp.arange(c) < n_evict),
      lambda: jnp.zeros((c,), bool))
  gone = evict | expired
  keys = tuple(jnp.where(gone, PAD, k) for k in keys)
  room = free + n_evict

  def by_occurrences():  # Most occurrences first, then id (u is ascending; the sort is stable).
    order = jax.lax.sort((jnp.where(eligible, -counts, 1), jnp.arange(n, dtype=jnp.int32)),
                         num_keys=1, is_stable=True)[-1]
    return eligible & (jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32)) < room)

  admitted = jax.lax.cond(need > room, by_occurrences, lambda: eligible)
  changed = jnp.any(admitted) | jnp.any(gone)  # Else the map stays sorted as it is.
  keys, rows, score, last = jax.lax.cond(changed, _merge, lambda keys, rows, score, last, *_: (keys, rows, score, last),
                                         keys, rows, score, last, u, counts, admitted, step)
  out.update(zip(spec.key_names, keys), rows=rows, score=score, last=last)
  fresh_pos, _ = _find(out, u)
  fresh_rows = jnp.where(admitted, rows[fresh_pos], -1)

  stats = {"admitted": jnp.sum(admitted), "evicted": n_evict + jnp.sum(expired),
           "pending": jnp.sum(new & ~eligible), "overflow": jnp.sum(eligible & ~admitted),
           "occupancy": jnp.sum(~is_pad(keys)) / c}
  fresh_ids = tuple(jnp.where(admitted, w, PAD) for w in u)
  return out, fresh_rows, fresh_ids, stats


def _merge(keys, rows, score, last, u, counts, admitted, step):
  """The map with evicted entries (PAD keys among the live ones) gone and the admitted ids in,
  sorted by key again, without a sort: live entries keep their order (stable partition by a
  cumulative sum), the free entries' rows go to the admitted ids in ascending id order (u is
  ascending), and the two ascending runs are merged by binary search. `keys` and `u` are tuples
  of key words."""
  c, n = keys[0].shape[0], u[0].shape[0]
  idx = jnp.arange(c, dtype=jnp.int32)
  live = ~is_pad(keys)
  num_live = jnp.sum(live, dtype=jnp.int32)
  compact = jnp.where(live, jnp.cumsum(live) - 1, num_live + jnp.cumsum(~live) - 1)
  keys, (rows, score, last) = ((tuple(jnp.zeros_like(a).at[compact].set(a, unique_indices=True) for a in arrays))
                               for arrays in (keys, (rows, score, last)))
  k = jnp.cumsum(admitted) - 1  # The k-th admitted id takes the row of free entry num_live + k.
  taken = jnp.sum(admitted, dtype=jnp.int32)
  slot = jnp.where(admitted, k, n)
  new_keys = tuple(jnp.full((n,), PAD, jnp.uint32).at[slot].set(w, mode="drop") for w in u)
  new_score = jnp.zeros((n,), jnp.float32).at[slot].set(counts.astype(jnp.float32), mode="drop")
  new_rows = rows[jnp.clip(num_live + jnp.arange(n, dtype=jnp.int32), 0, c - 1)]
  is_live, consumed = idx < num_live, (idx >= num_live) & (idx < num_live + taken)
  old_at = jnp.where(is_live, idx + _rank(new_keys, keys), jnp.where(consumed, c, idx))
  new_at = jnp.where(jnp.arange(n) < taken, jnp.arange(n) + _rank(keys, new_keys), c)

  def place(old, new, fill):
    return jnp.full((c,), fill, old.dtype).at[old_at].set(old, mode="drop").at[new_at].set(new, mode="drop")

  return (tuple(place(k, w, PAD) for k, w in zip(keys, new_keys)), place(rows, new_rows, 0),
          place(score, new_score, 0), place(last, jnp.full((n,), step, jnp.int32), 0))


def distinct(words: tuple) -> tuple[tuple, jax.Array]:
  """(distinct ids ascending as key words, padded with PAD to the input's size; their counts,
  padding counting 0): one keys-only sort (two-key when wide), a cumulative sum and scatters
  (jnp.unique with a size takes 6x as long on XLA:CPU, a sort with a payload about as much)."""
  s = (jnp.sort(words[0]),) if len(words) == 1 else jax.lax.sort(words, num_keys=len(words))
  differs = s[0][1:] != s[0][:-1]
  for w in s[1:]:
    differs = differs | (w[1:] != w[:-1])
  segment = jnp.cumsum(jnp.concatenate([jnp.ones((1,), bool), differs])) - 1
  u = tuple(jnp.full(w.shape, PAD, jnp.uint32).at[segment].set(w) for w in s)
  counts = jnp.zeros(s[0].shape, jnp.int32).at[segment].add(1)
  return u, jnp.where(is_pad(u), 0, counts)


def at_ids(u: tuple, values: jax.Array, words: tuple) -> jax.Array:
  """`values` of `distinct`'s ids `u`, read at each id (its key words; a binary search in u),
  -1 for padding."""
  return jnp.where(is_pad(words), -1, values[jnp.clip(_rank(u, words), 0, u[0].shape[0] - 1)])


def fresh_values(key_data: jax.Array, words: tuple, dim: int, scale: float) -> jax.Array:
  """[N, dim] initial rows of new ids (their key words): U(-scale, scale) drawn from (the table's
  key, id), so an id's first row is the same in every run and on every mesh (the key folded with
  the low word, then with the high word when it is not 0)."""
  key = jax.random.wrap_key_data(key_data)

  def draw(*w):
    k = jax.random.fold_in(key, w[-1])
    if len(w) == 2:
      k = jax.random.wrap_key_data(jnp.where(w[0] != 0, jax.random.key_data(jax.random.fold_in(k, w[0])),
                                             jax.random.key_data(k)))
    return jax.random.uniform(k, (dim,), jnp.float32, -scale, scale)

  return jax.vmap(draw)(*words)
