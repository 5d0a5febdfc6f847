"""Quotient-remainder compositional embeddings (Shi et al. 2020): a huge vocabulary as two small
tables, row i -> (i // q, i % q)."""

from __future__ import annotations

import jax
import numpy as np
from numpy.typing import ArrayLike


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
