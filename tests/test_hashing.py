"""rankjax/data/hashing.py, the fixed id -> row hash of ingestion, and
rankjax/embedding/quotient_remainder.py, quotient-remainder splitting."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.stats

from rankjax.data import hashing
from rankjax.embedding import quotient_remainder

M64 = (1 << 64) - 1


def reference_row(raw_id: int, num_rows: int, salt: int = 0) -> int:
  """The documented algorithm written a second way: Python ints masked to 64 bits."""
  def splitmix64(v):
    z = (v + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)
  h = splitmix64((raw_id & M64) ^ splitmix64(salt & M64))
  return (h * num_rows) >> 64


EDGE_IDS = [0, 1, 2, 12345, -1, -2, 2**31 - 1, -2**31, 2**32, 2**63 - 1, -2**63, 0x0123456789ABCDEF]


def test_splitmix64_matches_the_published_sequence_for_seed_1234567():
  # splitmix64 seeded with 1234567 (Rosetta Code "Pseudo-random numbers/Splitmix64"): the n-th
  # output is mix64(seed + n * GAMMA), i.e. splitmix64(seed + (n - 1) * GAMMA).
  seeds = np.array([(1234567 + n * hashing.GAMMA) & M64 for n in range(5)], np.uint64)
  assert hashing.splitmix64(seeds).tolist() == [
      6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
      16408922859458223821]


@pytest.mark.parametrize("num_rows", [1, 7, 1000, 40_000_000, 2**31 - 1, 2**31])
@pytest.mark.parametrize("salt", [0, 1, -1, 2**64 + 5])
def test_hash_to_rows_equals_the_python_int_reference(num_rows, salt):
  rows = hashing.hash_to_rows(np.array(EDGE_IDS, np.int64), num_rows, salt)
  assert rows.dtype == np.int32
  assert rows.tolist() == [reference_row(i, num_rows, salt) for i in EDGE_IDS]


def test_int64_and_uint64_views_of_an_id_hash_alike():
  ids = np.array(EDGE_IDS, np.int64)
  np.testing.assert_array_equal(hashing.hash_to_rows(ids, 999),
                                hashing.hash_to_rows(ids.view(np.uint64), 999))
  np.testing.assert_array_equal(hashing.hash_to_rows(np.arange(100, dtype=np.int32), 999),
                                hashing.hash_to_rows(np.arange(100, dtype=np.int64), 999))


def test_hash_to_rows_rejects_non_integer_ids_and_bad_row_counts():
  with pytest.raises(TypeError):
    hashing.hash_to_rows(np.array([1.5]), 10)
  for num_rows in (0, 2**31 + 1):
    with pytest.raises(ValueError):
      hashing.hash_to_rows(np.array([1]), num_rows)


def test_hash_is_the_same_in_another_process_with_another_pythonhashseed():
  ids = np.arange(-50, 50, dtype=np.int64) * 7919
  here = hashing.hash_to_rows(ids, 10_007, salt=3).tolist()
  code = ("import numpy as np; from rankjax.data import hashing; "
          "ids = np.arange(-50, 50, dtype=np.int64) * 7919; "
          "print(hashing.hash_to_rows(ids, 10_007, salt=3).tolist())")
  for seed in ("1", "4242"):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": seed, "JAX_PLATFORMS": "cpu"})
    assert out.stdout.strip() == str(here)


def test_rows_are_in_range_and_roughly_uniform_for_sequential_ids():
  # Sequential ids are the structured worst case for a weak mixer.
  num_rows, n = 1000, 500_000
  rows = hashing.hash_to_rows(np.arange(n, dtype=np.int64), num_rows)
  assert rows.min() >= 0 and rows.max() < num_rows
  counts = np.bincount(rows, minlength=num_rows)
  # Two-sided: too even a spread (ids mod num_rows would give p = 1) is not random either.
  assert 1e-3 < scipy.stats.chisquare(counts).pvalue < 1 - 1e-3


def test_flipping_any_input_bit_flips_about_half_the_hash_bits():
  ids = np.random.default_rng(0).integers(0, 2**64 - 1, 2000, dtype=np.uint64)
  base = hashing.splitmix64(ids)
  for bit in range(64):
    flipped = hashing.splitmix64(ids ^ np.uint64(1 << bit)) ^ base
    changed = np.unpackbits(flipped.view(np.uint8)).mean()
    assert 0.47 < changed < 0.53, bit


def test_salt_changes_the_mapping():
  ids = np.arange(10_000, dtype=np.int64)
  a, b = hashing.hash_to_rows(ids, 1_000_000, salt=0), hashing.hash_to_rows(ids, 1_000_000, salt=1)
  assert (a != b).mean() > 0.99


def test_qr_table_sizes_cover_the_vocab():
  assert quotient_remainder.qr_table_sizes(10, 3) == (4, 3)
  assert quotient_remainder.qr_table_sizes(12, 3) == (4, 3)
  assert quotient_remainder.qr_table_sizes(2, 5) == (1, 2)
  with pytest.raises(ValueError):
    quotient_remainder.qr_table_sizes(10, 0)


@pytest.mark.parametrize("vocab, buckets", [(1000, 7), (40_000, 200), (5, 8)])
def test_qr_split_gives_distinct_in_range_pairs_for_distinct_rows(vocab, buckets):
  q_rows, r_rows = quotient_remainder.qr_table_sizes(vocab, buckets)
  rows = np.arange(vocab, dtype=np.int32)
  q, r = quotient_remainder.qr_split(rows, buckets)
  assert q.dtype == np.int32 and r.dtype == np.int32
  assert q.min() >= 0 and q.max() < q_rows and r.min() >= 0 and r.max() < r_rows
  assert len(set(zip(q.tolist(), r.tolist()))) == vocab
  np.testing.assert_array_equal(q * buckets + r, rows)


def test_qr_split_works_on_jax_arrays_inside_jit():
  rows = np.arange(50, dtype=np.int32)
  q, r = jax.jit(lambda x: quotient_remainder.qr_split(x, 6))(rows)
  np.testing.assert_array_equal(np.asarray(q), rows // 6)
  np.testing.assert_array_equal(np.asarray(r), rows % 6)
