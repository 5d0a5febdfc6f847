"""A fixed, documented hash from raw 64-bit ids to table rows, and quotient-remainder splitting.

Unlike Python's `hash()` (randomised per process for str, the identity for small ints) the mapping
never changes between processes, machines or versions, so preprocessed data and tables agree.

The algorithm (all arithmetic modulo 2**64 on the id's two's-complement bits):

  GAMMA = 0x9E3779B97F4A7C15
  mix64(z)      = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
                  return z ^ (z >> 31)                       (the splitmix64 finalizer)
  splitmix64(v) = mix64(v + GAMMA)                           (splitmix64's first output for seed v)
  hash64(x, salt) = splitmix64(x XOR splitmix64(salt))
  row(x)        = floor(hash64(x, salt) * num_rows / 2**64)  (multiply-shift range reduction)

`salt` is any int, taken modulo 2**64; each salt gives an independent-looking mapping. The
multiply-shift reduction uses all 64 hash bits (no modulo): every row receives floor or ceil of
2**64 / num_rows hash values, a relative bias below num_rows / 2**64.
`hash_to_rows` runs it in NumPy uint64 on the host; `hash_to_rows_jax` runs the same algorithm on
(hi, lo) uint32 halves, because jax is 32-bit unless x64 is enabled; both give identical rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

GAMMA = 0x9E3779B97F4A7C15
MIX_C1 = 0xBF58476D1CE4E5B9
MIX_C2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1
MAX_ROWS = 1 << 31  # Rows are int32.


def _salt_key(salt: int) -> int:
  """splitmix64(salt) as a Python int (a constant per salt)."""
  z = (salt + GAMMA) & MASK64
  z = ((z ^ (z >> 30)) * MIX_C1) & MASK64
  z = ((z ^ (z >> 27)) * MIX_C2) & MASK64
  return z ^ (z >> 31)


def _check_num_rows(num_rows: int) -> None:
  if not 1 <= num_rows <= MAX_ROWS:
    raise ValueError(f"num_rows must be in [1, 2**31], got {num_rows}")


def splitmix64(v: np.ndarray) -> np.ndarray:
  """splitmix64's first output for each uint64 seed in `v`: mix64(v + GAMMA), elementwise."""
  z = np.asarray(v, np.uint64)
  with np.errstate(over="ignore"):  # Wrapping uint64 arithmetic is the algorithm.
    z = z + np.uint64(GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX_C1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX_C2)
    return z ^ (z >> np.uint64(31))


def _as_uint64(raw_ids: ArrayLike) -> np.ndarray:
  """Integer ids as uint64 two's-complement bits (int64 -1 -> 2**64 - 1)."""
  ids = np.asarray(raw_ids)
  if ids.dtype == np.uint64:
    return ids
  if not np.issubdtype(ids.dtype, np.integer):
    raise TypeError(f"raw ids must be integers, got dtype {ids.dtype}")
  return ids.astype(np.int64).view(np.uint64) if np.issubdtype(ids.dtype, np.signedinteger) \
      else ids.astype(np.uint64)


def hash_to_rows(raw_ids: ArrayLike, num_rows: int, salt: int = 0) -> np.ndarray:
  """Rows in [0, num_rows) for raw integer ids (int64/uint64 or narrower, any shape), as int32.

  Signed ids are taken as their 64-bit two's complement (-1 hashes like 2**64 - 1).
  """
  _check_num_rows(num_rows)
  ids = _as_uint64(raw_ids)
  h = splitmix64(ids ^ np.uint64(_salt_key(salt)))
  # floor(h * n / 2**64) without 128-bit integers: with h = hi * 2**32 + lo and n < 2**32,
  # it equals (hi * n + (lo * n >> 32)) >> 32, and that sum stays below 2**64.
  n = np.uint64(num_rows)
  hi, lo = h >> np.uint64(32), h & np.uint64(0xFFFFFFFF)
  with np.errstate(over="ignore"):
    rows = (hi * n + ((lo * n) >> np.uint64(32))) >> np.uint64(32)
  return rows.astype(np.int32)


def split_uint64(raw_ids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """Raw 64-bit ids -> (hi, lo) uint32 halves, the input of `hash_to_rows_jax`."""
  ids = _as_uint64(raw_ids)
  return (ids >> np.uint64(32)).astype(np.uint32), (ids & np.uint64(0xFFFFFFFF)).astype(np.uint32)


# ---- The same algorithm in jax on (hi, lo) uint32 pairs.

def _mul32_wide(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Full 64-bit product of uint32 arrays as (hi, lo), from 16-bit limbs (Hacker's Delight mulhu)."""
  a0, a1 = a & 0xFFFF, a >> 16
  b0, b1 = b & 0xFFFF, b >> 16
  t = a1 * b0 + ((a0 * b0) >> 16)
  w1 = (t & 0xFFFF) + a0 * b1
  return a1 * b1 + (t >> 16) + (w1 >> 16), a * b


def _mul64_const(hi: jax.Array, lo: jax.Array, c: int) -> tuple[jax.Array, jax.Array]:
  """(hi, lo) * c modulo 2**64."""
  c_hi, c_lo = jnp.uint32(c >> 32), jnp.uint32(c & 0xFFFFFFFF)
  p_hi, p_lo = _mul32_wide(lo, jnp.broadcast_to(c_lo, lo.shape))
  return p_hi + lo * c_hi + hi * c_lo, p_lo


def _xor_shift_right(hi: jax.Array, lo: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """z ^ (z >> k) for 0 < k < 32."""
  return hi ^ (hi >> k), lo ^ ((lo >> k) | (hi << (32 - k)))


def _add64_const(hi: jax.Array, lo: jax.Array, c: int) -> tuple[jax.Array, jax.Array]:
  new_lo = lo + jnp.uint32(c & 0xFFFFFFFF)
  carry = (new_lo < lo).astype(jnp.uint32)
  return hi + jnp.uint32(c >> 32) + carry, new_lo


def _splitmix64_u32(hi: jax.Array, lo: jax.Array) -> tuple[jax.Array, jax.Array]:
  hi, lo = _add64_const(hi, lo, GAMMA)
  hi, lo = _mul64_const(*_xor_shift_right(hi, lo, 30), MIX_C1)
  hi, lo = _mul64_const(*_xor_shift_right(hi, lo, 27), MIX_C2)
  return _xor_shift_right(hi, lo, 31)


def hash_to_rows_jax(ids_hi: jax.Array, ids_lo: jax.Array, num_rows: int, salt: int = 0) -> jax.Array:
  """`hash_to_rows` in jax for ids given as uint32 halves (see `split_uint64`); jit-able, int32.

  An int32 id x is the 64-bit id with lo = x's bits and hi = 0xFFFFFFFF if x < 0 else 0.
  """
  _check_num_rows(num_rows)
  key = _salt_key(salt)
  hi = jnp.asarray(ids_hi, jnp.uint32) ^ jnp.uint32(key >> 32)
  lo = jnp.asarray(ids_lo, jnp.uint32) ^ jnp.uint32(key & 0xFFFFFFFF)
  h_hi, h_lo = _splitmix64_u32(hi, lo)
  n = jnp.broadcast_to(jnp.uint32(num_rows), h_hi.shape)
  # floor(h * n / 2**64) = high word of (h_hi * n + mulhi(h_lo, n)).
  a_hi, a_lo = _mul32_wide(h_hi, n)
  b_hi, _ = _mul32_wide(h_lo, n)
  carry = ((a_lo + b_hi) < a_lo).astype(jnp.uint32)
  return (a_hi + carry).astype(jnp.int32)


# ---- Quotient-remainder compositional embeddings (Shi et al. 2020).

def qr_table_sizes(vocab_size: int, num_buckets: int) -> tuple[int, int]:
  """(quotient rows, remainder rows) so that every row < vocab_size has its own (q, r) pair."""
  if vocab_size < 1 or num_buckets < 1:
    raise ValueError(f"vocab_size and num_buckets must be >= 1, got {vocab_size}, {num_buckets}")
  return -(-vocab_size // num_buckets), min(num_buckets, vocab_size)


def qr_split(rows: ArrayLike, num_buckets: int | np.ndarray):
  """row -> (row // num_buckets, row % num_buckets); NumPy or jax arrays, dtype kept;
  `num_buckets` may be an array broadcasting against `rows` (one bucket count per column).

  The two parts index the quotient and remainder tables of `qr_table_sizes`; their embeddings are
  combined (Shi et al. use the elementwise product) into the row's embedding.
  """
  if np.any(np.asarray(num_buckets) < 1):
    raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
  if not isinstance(rows, jax.Array):
    rows = np.asarray(rows)
  return rows // num_buckets, rows % num_buckets
