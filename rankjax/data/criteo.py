"""Criteo TSV (label, 13 integer columns I1..I13, 26 hex categorical columns C1..C26) into the
fixed-width layout, streamed in bounded memory; plain or gzip input, bad lines raised or counted.

Parsing is vectorised over 256 KB blocks of whole lines: separators are found with one NumPy scan,
and each field is read as one unaligned 64-bit word ending at the field's last byte, decoded
with SWAR (SIMD-within-a-register) arithmetic, 8 characters per operation. Fields longer than 8
characters (up to 16) take a second word.

Features: dense x -> log(1 + max(x, 0)) in float64, stored float32; an empty dense field is 0.
Categorical hex -> its 64-bit value -> a row; row 0 is reserved for a missing (empty) field in
both vocabularies:
  hash       row = 1 + rankjax.data.hashing.hash_to_rows(id, N - 1, salt=0), N = rows per table
             (MLPerf style: a fixed cap, one pass, unseen ids still get rows);
  frequency  a count pass over the train lines, then a map: ids seen >= min_count times get
             rows 1.. in order of decreasing count (ties by id), at most N - 1 of them when a
             cap is given; rarer and unseen ids share row 0 with missing fields. The counts hold
             16 bytes per distinct id, so this mode's memory grows with the vocabulary.
Or no vocabulary (`raw`): each id's 64 bits are kept (RawVocabulary: low words in `cat`, high
words in `cat_hi`; an empty field is the id MISSING_RAW_ID, and ids 2**64 - 2 and 2**64 - 1 in
the data are bad lines), so nothing is hashed away before training: dynamic tables map them to
rows (rankjax/embedding/dynamic.py). The manifest's vocab_sizes are then the distinct ids per
field in the train lines (a count pass, as for frequency), what a collision-free table needs.
The eval split is either the last `eval_fraction` of the input lines (all files in order; the
line count takes one extra read of the input) or separate eval files.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import shutil
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from rankjax.data import layout, parallel
from rankjax.data.writer import (DEFAULT_RECORDS_PER_SHARD, DatasetWriter, IngestError, IngestStats, excerpt,
                                 write_records_at)
from rankjax.data.hashing import MAX_ROWS, hash_to_rows, splitmix64

NUM_DENSE, NUM_CATEGORICAL = 13, 26
NUM_COLUMNS = 1 + NUM_DENSE + NUM_CATEGORICAL
COLUMN_NAMES = ("label", *(f"I{i}" for i in range(1, NUM_DENSE + 1)),
                *(f"C{i}" for i in range(1, NUM_CATEGORICAL + 1)))
DEFAULT_HASH_ROWS = 1_000_000
BLOCK_BYTES = 1 << 18  # Small enough that a block's temporaries stay in cache.
GZIP_MAGIC = b"\x1f\x8b"
_PAD = 16  # Zero bytes before each block, so a field's 16-byte window never starts before the buffer.

# Why a line is rejected; `_REASONS[code]`.
OK, WRONG_COLUMN_COUNT, MISSING_LABEL, BAD_LABEL, BAD_DENSE, LONG_DENSE, BAD_HEX, LONG_HEX, RESERVED_HEX = range(9)
_REASONS = ("ok", "wrong column count", "missing label", "bad label (not 0 or 1)", "non-integer dense value",
            "dense value over 16 characters", "non-hex categorical", "categorical id over 64 bits",
            "categorical id reserved by --vocab raw (fffffffffffffffe: missing, ffffffffffffffff: padding)")
# --vocab raw keeps each categorical value's 64 bits; an empty field is this id (padding is all ones).
MISSING_RAW_ID = (1 << 64) - 2
TRUNCATED_GZIP, CORRUPT_GZIP, EMPTY_FILE = "truncated gzip", "corrupt gzip", "empty file"
LONG_LINE = "line over 1 MiB"
MAX_LINE_BYTES = 1 << 20

# ---- SWAR constants: a uint64 holds 8 characters, the first in the lowest byte.
_U = np.uint64
_ONES, _HIGH, _ZEROS = _U(0x0101010101010101), _U(0x8080808080808080), _U(0x3030303030303030)
# _KEEP[k]: the last k characters of a word (its high-order bytes).
_KEEP = np.array([0] + [((1 << 64) - 1) ^ ((1 << (8 * (8 - k))) - 1) for k in range(1, 9)], np.uint64)
_FIRST_SHIFT = np.array([0] + [8 * (8 - k) for k in range(1, 9)], np.uint64)  # Bit offset of the first of k.


def _bytes_in(x: np.ndarray, low: int, high: int) -> np.ndarray:
  """Per byte of x (all bytes < 0x80): its high bit set iff low <= byte <= high."""
  return (x + _ONES * _U(0x80 - low)) & ~(x + _ONES * _U(0x7F - high)) & _HIGH


def _right_aligned(words: np.ndarray, width: np.ndarray) -> np.ndarray:
  """Words holding the last min(width, 8) characters, the characters before them set to '0'.

  Empty fields are left as they are: their decoded value is never used.
  """
  partial = (width > 0) & (width < 8)
  if not partial.any():  # Criteo's ids are all 8 hex digits: nothing to mask.
    return words
  keep = _KEEP[np.minimum(width, 8)]
  return (words & keep) | (_ZEROS & ~keep)


def _hex_words(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(valid, value): 8 hex characters per word -> a 32-bit value."""
  y = x | (_ONES * _U(0x20))
  valid = ((_bytes_in(x, 0x30, 0x39) | _bytes_in(y, 0x61, 0x66)) == _HIGH) & ((x & _HIGH) == 0)
  nib = (x & _U(0x0F0F0F0F0F0F0F0F)) + _U(9) * ((x >> _U(6)) & _ONES)
  pairs = ((nib & _U(0x000F000F000F000F)) << _U(4)) | ((nib >> _U(8)) & _U(0x000F000F000F000F))
  quads = ((pairs & _U(0x000000FF000000FF)) << _U(8)) | ((pairs >> _U(16)) & _U(0x000000FF000000FF))
  return valid, ((quads & _U(0xFFFF)) << _U(16)) | ((quads >> _U(32)) & _U(0xFFFF))


def _decimal_words(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(valid, value): 8 decimal digits per word -> their value (simdjson's 3-multiply method)."""
  valid = (_bytes_in(x, 0x30, 0x39) == _HIGH) & ((x & _HIGH) == 0)
  v = x - _ZEROS
  v = ((v & _U(0x0F0F0F0F0F0F0F0F)) * _U(2561)) >> _U(8)
  v = ((v & _U(0x00FF00FF00FF00FF)) * _U(6553601)) >> _U(16)
  v = ((v & _U(0x0000FFFF0000FFFF)) * _U(42949672960001)) >> _U(32)
  return valid, v


class _Words:
  """Unaligned 64-bit words of a padded block: `at(end)` = the 8 bytes ending at body offset `end`."""

  def __init__(self, padded: np.ndarray):
    self.view = np.ndarray((len(padded) - 7,), "<u8", buffer=padded, strides=(1,))

  def at(self, end: np.ndarray) -> np.ndarray:
    return self.view[end + (_PAD - 8)]


def _parse_dense(words: _Words, ends: np.ndarray, width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(bad, log1p(max(x, 0)) as float32) for integer fields; empty fields are 0, fields over 16
  characters bad."""
  x = _right_aligned(words.at(ends), width)
  first = (x >> _FIRST_SHIFT[np.minimum(width, 8)]) & _U(0xFF)
  negative = (first == _U(0x2D)) & (width >= 2) & (width <= 8)
  x = x + np.where(negative, _U(3) << _FIRST_SHIFT[np.minimum(width, 8)], _U(0))  # '-' -> '0'.
  ok, value = _decimal_words(x)
  value = value.astype(np.float64)
  long = (width > 8) & (width <= 16)
  if long.any():
    hi_word = _right_aligned(words.at(ends[long] - 8), width[long] - 8)
    hi_first = (hi_word >> _FIRST_SHIFT[width[long] - 8]) & _U(0xFF)
    hi_negative = hi_first == _U(0x2D)  # '-' and 8 or more digits.
    hi_word = hi_word + np.where(hi_negative, _U(3) << _FIRST_SHIFT[width[long] - 8], _U(0))
    hi_ok, hi = _decimal_words(hi_word)
    ok[long] &= hi_ok
    value[long] += hi.astype(np.float64) * 1e8
    negative[long] = hi_negative
  bad = (~ok & (width > 0)) | (width > 16)
  value = np.where(negative | (width == 0), 0.0, value)
  return bad, np.log1p(value).astype(np.float32)


def _parse_hex(words: _Words, ends: np.ndarray, width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(bad, 64-bit ids) for hex fields; empty fields give id 0, fields over 16 characters are bad."""
  ok, ids = _hex_words(_right_aligned(words.at(ends), width))
  long = (width > 8) & (width <= 16)
  if long.any():
    hi_ok, hi = _hex_words(_right_aligned(words.at(ends[long] - 8), width[long] - 8))
    ok[long] &= hi_ok
    ids[long] |= hi << _U(32)
  present = width > 0
  return (~ok & present) | (width > 16), np.where(present, ids, _U(0))


@dataclasses.dataclass
class ParsedBlock:
  """The lines of one block: the good ones parsed, the bad ones with why.

  line_starts[i] is line i's first byte (line_starts[num_lines] is one past the last newline).
  """
  num_lines: int
  good_lines: np.ndarray  # (g,) line ordinals within the block.
  label: np.ndarray  # (g,) float32
  dense: np.ndarray  # (g, 13) float32
  ids: np.ndarray  # (g, 26) uint64 raw categorical values
  missing: np.ndarray  # (g, 26) bool: empty categorical fields
  bad_lines: np.ndarray  # (b,) line ordinals
  bad_reasons: np.ndarray  # (b,) codes into _REASONS
  bad_columns: np.ndarray  # (b,) the first offending column (-1: the column count)
  line_starts: np.ndarray
  body: np.ndarray

  def line_text(self, line: int) -> bytes:
    return self.body[self.line_starts[line]:self.line_starts[line + 1] - 1].tobytes()

  def bad_excerpt(self, i: int) -> str:
    """What is wrong with bad line i: the offending field, or the line and its column count."""
    text = self.line_text(int(self.bad_lines[i]))
    fields = text.rstrip(b"\r").split(b"\t")
    column = int(self.bad_columns[i])
    if column < 0:
      return excerpt(f"{len(fields)} columns (expected {NUM_COLUMNS}): " + text.decode("utf-8", "replace"))
    return excerpt(f"{COLUMN_NAMES[column]}=" + fields[column].decode("utf-8", "replace"))


def parse_block(padded: np.ndarray, reserve_top_ids: bool = False) -> ParsedBlock:
  """Parses `padded` = _PAD zero bytes + whole lines, each ending in '\\n'. With
  `reserve_top_ids` (--vocab raw), ids 2**64 - 2 and 2**64 - 1 are bad (RESERVED_HEX)."""
  body = padded[_PAD:]
  sep = np.flatnonzero(body <= 10)
  kinds = body[sep]
  if (kinds < 9).any():  # Other control bytes are field content (and fail its validation).
    keep = kinds >= 9
    sep, kinds = sep[keep], kinds[keep]
  newline_at = np.flatnonzero(kinds == 10)  # Index into sep of each line's newline.
  num_lines = len(newline_at)
  line_ends = sep[newline_at]
  line_starts = np.concatenate([[0], line_ends + 1])
  columns_ok = np.diff(newline_at, prepend=-1) == NUM_COLUMNS
  rows = np.flatnonzero(columns_ok)
  ends = sep[newline_at[rows][:, None] + np.arange(1 - NUM_COLUMNS, 1)]
  starts = np.empty_like(ends)
  starts[:, 0] = line_starts[rows]
  starts[:, 1:] = ends[:, :-1] + 1
  last = ends[:, -1]
  ends[:, -1] -= (body[np.maximum(last - 1, 0)] == 13) & (last > starts[:, -1])  # CRLF line ends.
  width = ends - starts

  first = body[starts[:, 0]]
  label_missing = width[:, 0] == 0
  label_bad = ~label_missing & ((width[:, 0] != 1) | ((first != 48) & (first != 49)))
  words = _Words(padded)
  dense_cols, hex_cols = slice(1, 1 + NUM_DENSE), slice(1 + NUM_DENSE, NUM_COLUMNS)
  dense_bad, dense = (a.reshape(len(rows), NUM_DENSE) for a in
                      _parse_dense(words, ends[:, dense_cols].ravel(), width[:, dense_cols].ravel()))
  hex_bad, ids = (a.reshape(len(rows), NUM_CATEGORICAL) for a in
                  _parse_hex(words, ends[:, hex_cols].ravel(), width[:, hex_cols].ravel()))
  missing = width[:, hex_cols] == 0
  reserved = np.zeros_like(hex_bad)
  if reserve_top_ids:
    reserved = ~hex_bad & ~missing & (ids >= _U(MISSING_RAW_ID))
    hex_bad = hex_bad | reserved
  row_bad = label_missing | label_bad | dense_bad.any(axis=1) | hex_bad.any(axis=1)
  label = (first == 49).astype(np.float32)
  if not row_bad.any() and len(rows) == num_lines:  # The common case: every line is good.
    no_lines = np.zeros(0, np.int64)
    return ParsedBlock(num_lines=num_lines, good_lines=rows, label=label, dense=dense, ids=ids, missing=missing,
                       bad_lines=no_lines, bad_reasons=no_lines.astype(np.uint8), bad_columns=no_lines,
                       line_starts=line_starts, body=body)

  bad = np.flatnonzero(row_bad)
  codes = np.zeros((len(bad), NUM_COLUMNS), np.uint8)
  codes[:, 0] = np.where(label_missing[bad], MISSING_LABEL, np.where(label_bad[bad], BAD_LABEL, OK))
  codes[:, dense_cols] = np.where(dense_bad[bad], np.where(width[bad, dense_cols] > 16, LONG_DENSE, BAD_DENSE), OK)
  codes[:, hex_cols] = np.where(hex_bad[bad], np.where(width[bad, hex_cols] > 16, LONG_HEX,
                                                        np.where(reserved[bad], RESERVED_HEX, BAD_HEX)), OK)
  first_column = np.argmax(codes > 0, axis=1)
  bad_lines = np.concatenate([np.flatnonzero(~columns_ok), rows[bad]])
  bad_reasons = np.concatenate([np.full(num_lines - len(rows), WRONG_COLUMN_COUNT, np.uint8),
                                codes[np.arange(len(bad)), first_column]])
  bad_columns = np.concatenate([np.full(num_lines - len(rows), -1), first_column])
  order = np.argsort(bad_lines, kind="stable")
  good = ~row_bad
  return ParsedBlock(
      num_lines=num_lines, good_lines=rows[good], label=label[good], dense=dense[good], ids=ids[good],
      missing=missing[good], bad_lines=bad_lines[order], bad_reasons=bad_reasons[order],
      bad_columns=bad_columns[order], line_starts=line_starts, body=body)


# ---- Reading files: plain or gzip, in blocks of whole lines.

class _DamagedStream(Exception):
  """A gzip stream that ends early or does not decompress; `reason` says which."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def _decompressed_chunks(f, chunk_bytes: int) -> Iterator[bytes]:
  """Decompressed bytes of a (multi-member) gzip stream, at most chunk_bytes at a time."""
  decompressor, fed = zlib.decompressobj(wbits=31), False
  for compressed in iter(lambda: f.read(1 << 20), b""):
    data = compressed
    while data:
      fed = True
      try:
        out = decompressor.decompress(data, chunk_bytes)
      except zlib.error:
        raise _DamagedStream(CORRUPT_GZIP) from None
      if out:
        yield out
      if decompressor.eof:  # A member ended; another may follow.
        data, decompressor, fed = decompressor.unused_data, zlib.decompressobj(wbits=31), False
      else:
        data = decompressor.unconsumed_tail
  if fed and not decompressor.eof:
    raise _DamagedStream(TRUNCATED_GZIP)


def is_gzip(path: pathlib.Path) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == GZIP_MAGIC


def read_chunks(path: pathlib.Path, chunk_bytes: int = BLOCK_BYTES, byte_range: tuple[int, int] | None = None
                ) -> Iterator[bytes]:
  """The file's bytes (decompressed when it starts with the gzip magic) in chunks; a damaged gzip
  raises _DamagedStream after every decodable byte has been yielded. `byte_range` (start, end)
  reads part of a plain file (rankjax.data.parallel cuts files at line starts)."""
  with open(path, "rb") as f:
    if byte_range is not None:
      start, end = byte_range
      f.seek(start)
      remaining = end - start
      while remaining > 0:
        chunk = f.read(min(chunk_bytes, remaining))
        if not chunk:
          return
        remaining -= len(chunk)
        yield chunk
      return
    gzipped = f.read(2) == GZIP_MAGIC
    f.seek(0)
    if gzipped:
      yield from _decompressed_chunks(f, chunk_bytes)
    else:
      yield from iter(lambda: f.read(chunk_bytes), b"")


def count_lines(path: pathlib.Path, byte_range: tuple[int, int] | None = None) -> int:
  """Lines in a file or byte range (a last line without '\\n' counts); a damaged gzip counts what decodes."""
  lines, last = 0, b"\n"
  try:
    for chunk in read_chunks(path, 1 << 22, byte_range):
      lines += chunk.count(b"\n")
      last = chunk[-1:]
  except _DamagedStream:
    pass
  return lines + (last != b"\n")


def _padded(parts: Sequence[bytes]) -> np.ndarray:
  buffer = bytearray(_PAD)
  for part in parts:
    buffer += part
  return np.frombuffer(buffer, np.uint8)


def iter_blocks(path: pathlib.Path, stats: IngestStats, block_bytes: int = BLOCK_BYTES,
                byte_range: tuple[int, int] | None = None, first_line: int = 1,
                reserve_top_ids: bool = False) -> Iterator[tuple[int, ParsedBlock]]:
  """(line number of the block's first line, parsed block) over the file; returns the number of
  lines (as `count_lines` counts them). File problems go to `stats`.

  A damaged gzip's decodable lines are parsed; its cut-off last line, if any, is a row read and
  skipped for that reason, and the file is recorded (or raised, when strict) as damaged. A line
  over MAX_LINE_BYTES is a skipped row too, so memory stays bounded on any input. With
  `byte_range` (whole lines of a plain file), the first line is numbered `first_line`.
  `reserve_top_ids`: see parse_block.
  """
  line, pending, seen_bytes, damage, discarding = first_line, b"", 0, None, False
  try:
    for chunk in read_chunks(path, block_bytes, byte_range):
      seen_bytes += len(chunk)
      if discarding:  # The rest of an over-long line.
        newline = chunk.find(b"\n")
        if newline < 0:
          continue
        chunk, discarding, line = chunk[newline + 1:], False, line + 1
      cut = chunk.rfind(b"\n") + 1
      if cut == 0:
        pending += chunk
        if len(pending) > MAX_LINE_BYTES:
          stats.rows_read += 1
          stats.reject_rows(str(path), line, LONG_LINE, excerpt(pending))
          pending, discarding = b"", True
        continue
      block = parse_block(_padded([pending, chunk[:cut]]), reserve_top_ids)
      yield line, block
      line += block.num_lines
      pending = chunk[cut:]
  except _DamagedStream as e:
    damage = e.reason
  if seen_bytes == 0 and damage is None:
    stats.reject_file(str(path), 0, EMPTY_FILE, "no data")
    return 0
  if discarding:
    line += 1
  elif pending and damage is None:
    yield line, parse_block(_padded([pending, b"\n"]), reserve_top_ids)
    line += 1
  elif pending:
    stats.rows_read += 1
    stats.reject_rows(str(path), line, damage, excerpt(pending))
    line += 1
  if damage is not None:
    stats.reject_file(str(path), line, damage, excerpt(pending))
  return line - first_line


# ---- Vocabularies: raw 64-bit ids -> table rows.

class HashVocabulary:
  """Row 0 for missing fields; ids hash into rows 1..rows_per_table-1."""

  def __init__(self, rows_per_table: int):
    if not 2 <= rows_per_table <= MAX_ROWS:
      raise ValueError(f"--max-rows-per-table must be in [2, 2**31] for the hash vocabulary, got {rows_per_table}")
    self.rows_per_table = rows_per_table
    self.vocab_sizes = [rows_per_table] * NUM_CATEGORICAL

  def rows(self, ids: np.ndarray, missing: np.ndarray) -> np.ndarray:
    return np.where(missing, 0, hash_to_rows(ids, self.rows_per_table - 1) + 1).astype(np.int32)


class IdCounter:
  """Occurrences of each distinct id per table: raw ids are buffered, then merged into sorted
  (ids, counts) arrays when the buffer outgrows them (amortised O(n log n))."""

  def __init__(self, num_tables: int):
    self.ids = [np.empty(0, np.uint64) for _ in range(num_tables)]
    self.counts = [np.empty(0, np.int64) for _ in range(num_tables)]
    self._buffered: list[list[np.ndarray]] = [[] for _ in range(num_tables)]
    self._buffered_size = [0] * num_tables

  def add(self, ids: np.ndarray, missing: np.ndarray) -> None:
    for t in range(ids.shape[1]):
      present = ids[~missing[:, t], t]
      self._buffered[t].append(present)
      self._buffered_size[t] += len(present)
      if self._buffered_size[t] > max(len(self.ids[t]), 1 << 20):
        self._merge(t)

  def _merge(self, t: int) -> None:
    new_ids, new_counts = np.unique(np.concatenate([np.empty(0, np.uint64)] + self._buffered[t]), return_counts=True)
    ids = np.concatenate([self.ids[t], new_ids])
    counts = np.concatenate([self.counts[t], new_counts])
    order = np.argsort(ids, kind="stable")  # Two sorted runs: a merge.
    ids, counts = ids[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]])) if len(ids) else np.empty(0, np.int64)
    self.ids[t] = ids[starts]
    self.counts[t] = np.add.reduceat(counts, starts) if len(ids) else counts
    self._buffered[t], self._buffered_size[t] = [], 0

  def table(self, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, their counts) of table t."""
    self._merge(t)
    return self.ids[t], self.counts[t]

  @classmethod
  def merged(cls, parts: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]) -> "IdCounter":
    """The counter of several counters' tables ([part][table] -> (ids, counts)), counts summed."""
    counter = cls(len(parts[0]) if parts else NUM_CATEGORICAL)
    for t in range(len(counter.ids)):
      ids = np.concatenate([np.empty(0, np.uint64)] + [part[t][0] for part in parts])
      counts = np.concatenate([np.empty(0, np.int64)] + [part[t][1] for part in parts])
      unique, inverse = np.unique(ids, return_inverse=True)
      counter.ids[t] = unique
      counter.counts[t] = np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)
    return counter


class _IdTable:
  """(table, 64-bit id) -> row: one open-addressing hash table (linear probing, load <= 1/2),
  built and probed with vectorised NumPy; absent keys give row 0. A slot is one 16-byte record,
  so a probe costs one cache miss."""

  _SLOT = np.dtype([("id", "<u8"), ("row", "<i4"), ("table", "<i4")])

  def __init__(self, tables: np.ndarray, ids: np.ndarray, rows: np.ndarray):
    bits = max(4, (2 * len(ids)).bit_length())
    self.shift, self.mask = _U(64 - bits), (1 << bits) - 1
    self.slots = np.zeros(1 << bits, self._SLOT)
    self.slots["row"] = -1  # An empty slot.
    claim = np.full(1 << bits, -1, np.int64)
    tables = tables.astype(np.int32)
    slot = self._home(tables, ids)
    while len(ids):
      free = np.flatnonzero(self.slots["row"][slot] < 0)
      claim[slot[free]] = free  # Of the keys landing on one free slot, one claim survives: it wins.
      won = free[claim[slot[free]] == free]
      self.slots["id"][slot[won]], self.slots["row"][slot[won]] = ids[won], rows[won]
      self.slots["table"][slot[won]] = tables[won]
      lost = np.ones(len(ids), bool)
      lost[won] = False
      tables, ids, rows, slot = tables[lost], ids[lost], rows[lost], (slot[lost] + 1) & self.mask

  def _home(self, tables: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return (splitmix64(ids ^ (tables.astype(np.uint64) * _U(0x9E3779B97F4A7C15))) >> self.shift).astype(np.int64)

  def lookup(self, tables: np.ndarray, ids: np.ndarray) -> np.ndarray:
    out = np.zeros(len(ids), np.int32)
    tables = tables.astype(np.int32)
    index, slot = np.arange(len(ids)), self._home(tables, ids)
    while len(index):
      probed = self.slots[slot]
      occupied = probed["row"] >= 0
      found = occupied & (probed["id"] == ids) & (probed["table"] == tables)
      out[index[found]] = probed["row"][found]
      probe = occupied & ~found
      index, tables, ids, slot = index[probe], tables[probe], ids[probe], (slot[probe] + 1) & self.mask
    return out


class FrequencyVocabulary:
  """Ids seen >= min_count times get rows 1.. by decreasing count (ties by id); the rest row 0."""

  def __init__(self, counter: IdCounter, min_count: int, max_rows_per_table: int | None):
    if min_count < 1:
      raise ValueError(f"--min-count must be >= 1, got {min_count}")
    if max_rows_per_table is not None and not 1 <= max_rows_per_table <= MAX_ROWS:
      raise ValueError(f"--max-rows-per-table must be in [1, 2**31], got {max_rows_per_table}")
    self.ids_by_row: list[np.ndarray] = []  # Table t's id of row r + 1.
    for t in range(NUM_CATEGORICAL):
      ids, counts = counter.table(t)
      kept = counts >= min_count
      by_frequency = np.lexsort((ids[kept], -counts[kept]))
      if max_rows_per_table is not None:
        by_frequency = by_frequency[:max_rows_per_table - 1]
      self.ids_by_row.append(ids[kept][by_frequency])
    self._index()

  @classmethod
  def from_rows(cls, ids_by_row: Sequence[np.ndarray]) -> "FrequencyVocabulary":
    """The vocabulary a conversion wrote (vocab/C*.u64: table t's id of row r + 1)."""
    vocabulary = cls.__new__(cls)
    vocabulary.ids_by_row = [np.asarray(ids, np.uint64) for ids in ids_by_row]
    vocabulary._index()
    return vocabulary

  def _index(self) -> None:
    self.vocab_sizes = [1 + len(ids) for ids in self.ids_by_row]
    self._table = _IdTable(np.repeat(np.arange(NUM_CATEGORICAL, dtype=np.uint8), [len(i) for i in self.ids_by_row]),
                           np.concatenate(self.ids_by_row),
                           np.concatenate([np.arange(1, len(i) + 1, dtype=np.int32) for i in self.ids_by_row]))
    self._feature_of_column = np.arange(NUM_CATEGORICAL, dtype=np.uint8)

  def rows(self, ids: np.ndarray, missing: np.ndarray) -> np.ndarray:
    tables = np.broadcast_to(self._feature_of_column, ids.shape).ravel()
    rows = self._table.lookup(tables, ids.ravel()).reshape(ids.shape)
    return np.where(missing, 0, rows).astype(np.int32)


# ---- The conversion.

@dataclasses.dataclass(frozen=True)
class CriteoOptions:
  vocab: str = "hash"  # hash | frequency | raw (64-bit ids kept, for dynamic tables)
  min_count: int = 1  # frequency: ids seen fewer times share the OOV row 0.
  max_rows_per_table: int | None = None  # hash: rows per table (default DEFAULT_HASH_ROWS); frequency: a cap.
  strict: bool = True  # The first malformed line stops the conversion; otherwise skipped and counted.
  eval_fraction: float | None = None  # The last fraction of the input lines is the eval split ...
  eval_inputs: tuple[pathlib.Path, ...] = ()  # ... or these files are.
  max_records_per_shard: int = DEFAULT_RECORDS_PER_SHARD
  workers: int = 1  # Processes converting in parallel (rankjax.data.parallel); the output is the same.


class RawVocabulary:
  """--vocab raw: no vocabulary. Each categorical value's 64 bits are kept (an empty field is
  MISSING_RAW_ID), split into the low words (`cat`) and high words (`cat_hi`) as int32 bit
  patterns, for dynamic tables (rankjax/embedding/dynamic.py) to give rows without collisions.
  vocab_sizes: the distinct ids of each field in the train split, the missing id included."""

  def __init__(self, vocab_sizes: Sequence[int]):
    self.vocab_sizes = list(vocab_sizes)

  @classmethod
  def counted(cls, counter: IdCounter) -> "RawVocabulary":
    """From the count pass's distinct ids (the missing id among them: _countable)."""
    return cls([max(1, len(counter.table(t)[0])) for t in range(NUM_CATEGORICAL)])

  @staticmethod
  def words(ids: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """split_words of the raw ids, missing fields MISSING_RAW_ID."""
    return split_words(np.where(missing, _U(MISSING_RAW_ID), ids))


def split_words(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """uint64 ids -> (low words, high words) as int32 bit patterns (how records keep raw ids)."""
  return (ids & _U(0xFFFFFFFF)).astype(np.uint32).view(np.int32), (ids >> _U(32)).astype(np.uint32).view(np.int32)


def record_dtype(raw: bool = False) -> np.dtype:
  """The records: label, dense, and the rows of the categorical fields (int32), or with --vocab
  raw their raw ids' low (`cat`) and high (`cat_hi`) words."""
  dtype = layout.ctr_record_dtype(NUM_DENSE, NUM_CATEGORICAL)
  return np.dtype(dtype.descr + [("cat_hi", "<i4", (NUM_CATEGORICAL,))]) if raw else dtype


def _check_options(options: CriteoOptions) -> None:
  if options.vocab not in ("hash", "frequency", "raw"):
    raise ValueError(f"--vocab must be hash, frequency or raw, got {options.vocab!r}")
  if options.vocab == "raw" and options.max_rows_per_table is not None:
    raise ValueError("--max-rows-per-table does not go with --vocab raw (no rows: dynamic tables size themselves)")
  if bool(options.eval_inputs) == (options.eval_fraction is not None):
    raise ValueError("give exactly one of --eval-fraction and --eval-input")
  if options.eval_fraction is not None and not 0 < options.eval_fraction < 1:
    raise ValueError(f"--eval-fraction must be in (0, 1), got {options.eval_fraction}")
  if options.workers < 1:
    raise ValueError(f"--workers must be >= 1, got {options.workers}")


def _lines(files: Sequence[pathlib.Path], stats: IngestStats, raw: bool = False
           ) -> Iterator[tuple[pathlib.Path, int, int, ParsedBlock]]:
  """(file, line number in the file, global line index, block) over the files in order; the
  global index counts every line of every earlier file. `raw`: --vocab raw's reserved ids are bad."""
  lines_before = 0
  for path in files:
    blocks = iter_blocks(path, stats, reserve_top_ids=raw)
    while True:
      try:
        file_line, block = next(blocks)
      except StopIteration as done:
        lines_before += done.value
        break
      yield path, file_line, lines_before + file_line - 1, block


def _reject_bad_lines(path: pathlib.Path, file_line: int, block: ParsedBlock, stats: IngestStats) -> None:
  """The block's bad lines: strict raises the first, otherwise they are counted by reason."""
  if not len(block.bad_lines):
    return
  if stats.strict:
    stats.reject_rows(str(path), file_line + int(block.bad_lines[0]), _REASONS[block.bad_reasons[0]],
                      block.bad_excerpt(0))
  for code, n in zip(*np.unique(block.bad_reasons, return_counts=True)):
    stats.reject_rows(str(path), file_line, _REASONS[code], "", int(n))


def _count_ids(train_files: Sequence[pathlib.Path], train_lines: int | None, strict: bool, raw: bool = False
               ) -> IdCounter:
  """The frequency (or raw) vocabulary's count pass over the train lines (the first `train_lines`
  lines of the files, or all). Strict mode raises on a bad line here; the write pass counts skips."""
  counter = IdCounter(NUM_CATEGORICAL)
  stats = IngestStats(strict=strict)
  for path, file_line, global_line, block in _lines(train_files, stats, raw):
    if train_lines is not None and global_line >= train_lines:
      break
    _reject_bad_lines(path, file_line, block, stats)
    in_train = (global_line + block.good_lines < train_lines) if train_lines is not None else slice(None)
    counter.add(*_countable(block, in_train, raw))
  return counter


def _countable(block: ParsedBlock, lines, raw: bool) -> tuple[np.ndarray, np.ndarray]:
  """(ids, missing) of the block's `lines` for the count pass: with --vocab raw, an empty field
  counts as the id MISSING_RAW_ID (it owns a row like any id)."""
  ids, missing = block.ids[lines], block.missing[lines]
  if raw:
    return np.where(missing, _U(MISSING_RAW_ID), ids), np.zeros_like(missing)
  return ids, missing


def feature_spec(raw: bool = False) -> dict:
  """How the Criteo columns became record fields (recorded in the manifest)."""
  return {"label": COLUMN_NAMES[0], "dense": list(COLUMN_NAMES[1:1 + NUM_DENSE]),
          "categorical": list(COLUMN_NAMES[1 + NUM_DENSE:]),
          "dense_transform": "log(1 + max(x, 0)) in float64, stored float32; empty -> 0",
          "categorical_transform": ("hex -> 64-bit id, kept: cat = low 32 bits, cat_hi = high 32 bits (int32 bit "
                                    f"patterns); empty -> id {MISSING_RAW_ID:#x}") if raw
                                   else "hex -> 64-bit id -> row; empty -> row 0"}


def _records(block: ParsedBlock, vocabulary, dtype: np.dtype) -> np.ndarray:
  records = np.empty(len(block.good_lines), dtype)
  records["label"], records["dense"] = block.label, block.dense
  if isinstance(vocabulary, RawVocabulary):
    records["cat"], records["cat_hi"] = vocabulary.words(block.ids, block.missing)
  else:
    records["cat"] = vocabulary.rows(block.ids, block.missing)
  return records


# ---- The same conversion by several worker processes (rankjax.data.parallel).

@dataclasses.dataclass(frozen=True)
class _Job:
  """A unit of input and where its lines sit: file line of its first line, global line index of
  its first line among the train lines, and whether it belongs to the train files."""
  unit: parallel.Unit
  index: int
  first_line: int
  first_global_line: int
  is_train: bool
  lines: int  # Lines in the unit (as count_lines counts them).


# Set by the parent before forking: vocabulary, options, train_lines, and the scratch dir (skip
# mode) or the record placements and output directory (strict mode: records written in place).
_WORKER: dict = {}


def _count_unit(unit: parallel.Unit) -> int:
  return count_lines(unit.path, unit.byte_range)


def _jobs(units: list[parallel.Unit], num_train_units: int, workers: int) -> list[_Job]:
  """Units with their line counts and positions (a parallel line count); [] when not worth parallelising."""
  if len(units) < 2:
    return []
  counts = list(parallel.map_in_order(_count_unit, units, workers))
  jobs, file_line, global_line = [], 1, 0
  for index, (unit, lines) in enumerate(zip(units, counts)):
    file_line = 1 if unit.first_in_file else file_line
    is_train = index < num_train_units
    jobs.append(_Job(unit, index, file_line, global_line if is_train else 0, is_train, lines))
    file_line += lines
    global_line += lines if is_train else 0
  return jobs


def _unit_blocks(job: _Job, stats: IngestStats):
  """(global line index of each block's first line, file line, block) of the unit's lines."""
  for file_line, block in iter_blocks(job.unit.path, stats, byte_range=job.unit.byte_range,
                                      first_line=job.first_line, reserve_top_ids=_WORKER["raw"]):
    yield job.first_global_line + file_line - job.first_line, file_line, block


def _strict_error(job_fn: Callable[[_Job], dict], job: _Job) -> dict:
  """job_fn(job), with a strict-mode IngestError returned as data (the parent raises the first
  in input order, as one worker would have)."""
  try:
    return job_fn(job)
  except IngestError as e:
    return {"error": [e.file, e.line, e.reason, e.excerpt]}


def _count_ids_job(job: _Job) -> dict:
  """One unit's id counts over its train lines, saved as .npy files (loaded without pickle)."""
  train_lines, strict, scratch = _WORKER["train_lines"], _WORKER["strict"], _WORKER["scratch"]
  counter, stats = IdCounter(NUM_CATEGORICAL), IngestStats(strict=strict)
  if job.is_train:
    for global_line, file_line, block in _unit_blocks(job, stats):
      if train_lines is not None and global_line >= train_lines:
        break
      _reject_bad_lines(job.unit.path, file_line, block, stats)
      in_train = (global_line + block.good_lines < train_lines) if train_lines is not None else slice(None)
      counter.add(*_countable(block, in_train, _WORKER["raw"]))
  path = scratch / f"counts-{job.index}.npz"
  tables = [counter.table(t) for t in range(NUM_CATEGORICAL)]
  np.savez(path, **{f"ids{t}": i for t, (i, _) in enumerate(tables)}, **{f"counts{t}": c for t, (_, c) in enumerate(tables)})
  return {"path": str(path)}


def _count_ids_worker(job: _Job) -> dict:  # Module level: the pool sends it by name.
  return _strict_error(_count_ids_job, job)


def _count_ids_parallel(jobs: list[_Job], train_lines: int | None, options: CriteoOptions,
                        scratch: pathlib.Path) -> IdCounter:
  scratch.mkdir(exist_ok=True)
  _WORKER.update(train_lines=train_lines, strict=options.strict, scratch=scratch, raw=options.vocab == "raw")
  parts = []
  for result in parallel.map_in_order(_count_ids_worker, [j for j in jobs if j.is_train], options.workers):
    if "error" in result:
      raise IngestError(*result["error"])
    with np.load(result["path"], allow_pickle=False) as saved:
      parts.append([(saved[f"ids{t}"], saved[f"counts{t}"]) for t in range(NUM_CATEGORICAL)])
    pathlib.Path(result["path"]).unlink()
  return IdCounter.merged(parts)


def _unit_records(job: _Job, stats: IngestStats) -> Iterator[tuple[str, np.ndarray]]:
  """(split, records) of the unit's good lines, in line order: train lines come before eval ones."""
  vocabulary, train_lines, dtype = (_WORKER[k] for k in ("vocabulary", "train_lines", "dtype"))
  for global_line, file_line, block in _unit_blocks(job, stats):
    stats.rows_read += block.num_lines
    _reject_bad_lines(job.unit.path, file_line, block, stats)
    yield from _by_split(_records(block, vocabulary, dtype), block, global_line, job.is_train, train_lines)


def _by_split(records: np.ndarray, block, global_line, is_train: bool,
              train_lines: int | None) -> Iterator[tuple[str, np.ndarray]]:
  """(split, records) of one block: an eval file's records go to eval; a train file's to train,
  or with an eval fraction, those of lines at or past `train_lines` (input order) to eval."""
  if not is_train:
    yield "eval", records
  elif train_lines is None:
    yield "train", records
  else:
    in_train = global_line + block.good_lines < train_lines
    yield "train", records[in_train]
    yield "eval", records[~in_train]


def _convert_job(job: _Job) -> dict:
  """One unit's records into scratch files per split (copied in order by the parent), and its
  row accounting."""
  stats, scratch = IngestStats(strict=_WORKER["strict"]), _WORKER["scratch"]
  paths = {split: scratch / f"{job.index}-{split}.bin" for split in ("train", "eval")}
  with open(paths["train"], "wb") as train, open(paths["eval"], "wb") as evaluation:
    files = {"train": train, "eval": evaluation}
    for split, records in _unit_records(job, stats):
      files[split].write(records.tobytes())
  return {"paths": {k: str(v) for k, v in paths.items()}, **stats.as_worker_result()}


def _convert_worker(job: _Job) -> dict:  # Module level: the pool sends it by name.
  return _strict_error(_convert_job, job)


def _placements(jobs: list[_Job], train_lines: int | None) -> list[dict[str, tuple[int, int]]]:
  """Strict mode: every line becomes a record (or the conversion stops), so each unit's records
  have known places: per job, split -> (index of its first record in the split, record count)."""
  placements, eval_records = [], 0
  for job in jobs:
    train = (0 if not job.is_train else job.lines if train_lines is None
             else min(max(train_lines - job.first_global_line, 0), job.lines))
    placements.append({"train": (job.first_global_line, train), "eval": (eval_records, job.lines - train)})
    eval_records += job.lines - train
  return placements


def _convert_placed_job(job: _Job) -> dict:
  """One unit's records written in place into the preallocated shards (strict mode)."""
  stats, placement = IngestStats(strict=True), _WORKER["placements"][job.index]
  cursor = {split: first for split, (first, _) in placement.items()}
  for split, records in _unit_records(job, stats):
    write_records_at(_WORKER["directory"], split, _WORKER["max_records_per_shard"], cursor[split], records)
    cursor[split] += len(records)
  for split, (first, count) in placement.items():
    if cursor[split] - first != count:  # Every line a record, or IngestError before this.
      raise RuntimeError(f"{job.unit.path}: unit {job.index} gave {cursor[split] - first} {split} records, "
                         f"{count} placed")
  return stats.as_worker_result()


def _convert_placed_worker(job: _Job) -> dict:  # Module level: the pool sends it by name.
  return _strict_error(_convert_placed_job, job)


def _convert_parallel(jobs: list[_Job], vocabulary, train_lines: int | None, options: CriteoOptions,
                      scratch: pathlib.Path, stats: IngestStats, writer: DatasetWriter) -> None:
  """Converts the units in worker processes and writes their records in input order: in strict
  mode in place (the parent only hashes them), otherwise through scratch files the parent copies."""
  _WORKER.update(vocabulary=vocabulary, train_lines=train_lines, strict=options.strict, scratch=scratch,
                 raw=options.vocab == "raw", dtype=record_dtype(options.vocab == "raw"))
  try:
    if options.strict:
      placements = _placements(jobs, train_lines)
      for split in ("train", "eval"):
        writer.split(split).preallocate(sum(p[split][1] for p in placements))
      _WORKER.update(placements=placements, directory=writer.directory,
                     max_records_per_shard=options.max_records_per_shard)
      for job, result in zip(jobs, parallel.map_in_order(_convert_placed_worker, jobs, options.workers)):
        stats.merge_worker_result(result)
        for split, (first, count) in placements[job.index].items():
          if count:
            writer.split(split).hash_placed(first + count)
      return
    scratch.mkdir(exist_ok=True)
    for result in parallel.map_in_order(_convert_worker, jobs, options.workers):
      stats.merge_worker_result(result)
      for split, path in result["paths"].items():
        parallel.copy_records(pathlib.Path(path), _WORKER["dtype"], writer.split(split).write)
  finally:
    _WORKER.clear()
    shutil.rmtree(scratch, ignore_errors=True)


def convert(train_files: Sequence[pathlib.Path], output: str | pathlib.Path, options: CriteoOptions) -> dict:
  """Converts Criteo TSV files into a dataset directory; returns its manifest.

  Raises IngestError (strict) for the first malformed line or file, DataError for unusable input.
  """
  _check_options(options)
  train_files = [pathlib.Path(p) for p in train_files]
  eval_files = [pathlib.Path(p) for p in options.eval_inputs]
  units = parallel.cut_units([*train_files, *eval_files], is_gzip) if options.workers > 1 else []
  jobs = _jobs(units, len(parallel.cut_units(train_files, is_gzip)) if units else 0, options.workers)
  train_lines = None
  if options.eval_fraction is not None:  # The workers' line count gives it; one process counts alone.
    total_lines = (sum(j.lines for j in jobs if j.is_train) if jobs
                   else sum(count_lines(p) for p in train_files))
    train_lines = total_lines - math.floor(options.eval_fraction * total_lines)
  raw = options.vocab == "raw"
  dtype = record_dtype(raw)
  stats = IngestStats(strict=options.strict)
  with DatasetWriter(output, dtype, options.max_records_per_shard) as writer:
    train, evaluation = writer.split("train"), writer.split("eval")
    scratch = writer.directory / ".ingest-workers"
    if options.vocab == "hash":
      vocabulary = HashVocabulary(options.max_rows_per_table or DEFAULT_HASH_ROWS)
    else:
      counter = (_count_ids_parallel(jobs, train_lines, options, scratch) if len(jobs) > 1
                 else _count_ids(train_files, train_lines, options.strict, raw))
      vocabulary = (RawVocabulary.counted(counter) if raw
                    else FrequencyVocabulary(counter, options.min_count, options.max_rows_per_table))
    if len(jobs) > 1:
      _convert_parallel(jobs, vocabulary, train_lines, options, scratch, stats, writer)
    else:
      for files, is_train in ((train_files, True), (eval_files, False)):
        for path, file_line, global_line, block in _lines(files, stats, raw):
          stats.rows_read += block.num_lines
          _reject_bad_lines(path, file_line, block, stats)
          for split, records in _by_split(_records(block, vocabulary, dtype), block, global_line, is_train,
                                          train_lines):
            writer.split(split).write(records)
    for name, split in (("train", train), ("eval", evaluation)):
      if split.num_records == 0:
        raise layout.DataError(f"{output}: the {name} split would be empty ({stats.summary()})")
    if isinstance(vocabulary, FrequencyVocabulary):  # Row r of table C is vocab/C.u64[r - 1].
      for name, ids in zip(COLUMN_NAMES[1 + NUM_DENSE:], vocabulary.ids_by_row):
        writer.write_array(f"vocab_{name}", f"vocab/{name}.u64", ids.astype("<u8"))
    hashed = isinstance(vocabulary, HashVocabulary)
    source = {"kind": "criteo", "files": [str(p) for p in train_files], "eval_files": [str(p) for p in eval_files],
              "vocab": options.vocab, "min_count": options.min_count if options.vocab == "frequency" else None,
              "max_rows_per_table": vocabulary.rows_per_table if hashed else options.max_rows_per_table,
              "on_error": "strict" if options.strict else "skip", "eval_fraction": options.eval_fraction,
              "train_lines": train_lines}
    manifest = writer.finish(stats, num_dense=NUM_DENSE, vocab_sizes=list(vocabulary.vocab_sizes),
                             hotness=[1] * NUM_CATEGORICAL, feature_spec=feature_spec(raw), source=source,
                             **({"raw_ids": [True] * NUM_CATEGORICAL} if raw else {}))
  return manifest
