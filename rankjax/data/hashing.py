"""A fixed, documented hash from raw 64-bit ids to table rows, applied when data is converted.

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
`hash_to_rows` runs it in NumPy uint64 on the host.
"""

from __future__ import annotations

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
