"""Parquet or CSV tables into the fixed-width layout, by a JSON feature spec, streamed in record
batches with pyarrow; malformed rows raised or skipped and counted like the Criteo ingester.

The spec (a JSON object):
  {"label": "click" | ["click", "purchase"],                  label column(s), numbers
   "dense": ["price", "age"],                                  numbers; null/NaN -> 0
   "categorical": [{"name": "user", "num_rows": 100000},       hashed ids
                   {"name": "city", "min_count": 5},             or an exact vocabulary
                   {"name": "age_band", "column": "age",         or a number's bucket
                    "boundaries": [18, 25, 35, 50, 65]}],
   "sequence": [{"name": "recent_items", "num_rows": 50000,     lists of ids (multi-hot)
                 "max_hotness": 20, "separator": "|"}],
   "qid": "query_id"}                                          optional int64 query id
A categorical or sequence feature with "raw": true keeps its 64-bit ids instead of rows (no
num_rows, min_count or boundaries): for dynamic tables (rankjax/embedding/dynamic.py), nothing
hashed away; `rankjax data table --vocab raw` makes every hashed feature (num_rows alone) raw.
With --lists the rows of each query id become one list record instead (rankjax/data/table_lists.py).
Records: label float32 (shape (k,) for k labels; training uses one, pipeline `label_index`,
the first by default), dense float32[d], cat int32[categoricals + sum of max_hotness], and with
a qid column, qid int64. Manifest: vocab_sizes = num_rows per feature, hotness = 1 per
categorical and max_hotness per sequence feature, dense_stats = the dense columns' count, mean,
std, min and max over the train split (training standardises with them, task.normalize).

Ids: a value that is an integer (an integer column, or text of an optional '-' and digits) is
that 64-bit integer; any other text is the first 8 bytes (little-endian) of its BLAKE2b digest.
row = 1 + rankjax.data.hashing.hash_to_rows(id, num_rows - 1); row 0 is a missing (null) value.
With "min_count": N (categorical or sequence) the feature has an exact vocabulary instead: the
ids seen at least N times in the rows written to the train split get rows 2, 3, ... by
decreasing count (ties by id; at most num_rows - 2 of them when num_rows is given), row 1 is
out-of-vocabulary (rare or unseen ids), row 0 missing. The ids are counted in a first pass over
the train input and stored as side files (vocab/<column>.u64, id of row r + 2), which `rankjax
predict` maps raw rows with; the manifest records each vocabulary's size and OOV counts.
A sequence is a list column, or (CSV) text split on `separator`; null and empty elements are
dropped, the first max_hotness ids kept (rows cut short are counted in the manifest), and the
rest padded with -1.
A bucketised feature ("boundaries": increasing finite numbers, b_0 < ... < b_k-1) reads the number
in `column` (by default its own name; a dense column may be bucketised too, as several features):
row 1 + #{b_i <= value}, so rows 1 .. k + 1 (num_rows = k + 2, row 0 for a null or NaN value).
Raw features: the records gain `cat_hi` (int32 [slots]): a raw feature's slots hold its ids' low
words in `cat` and high words in `cat_hi` (int32 bit patterns; other features' `cat_hi` is 0); a
null value is the id criteo.MISSING_RAW_ID (2**64 - 2), a sequence is padded with the id 2**64 - 1,
and a row holding either id (the integers -2 and -1) is bad ("id reserved by raw"). The manifest's
vocab_sizes count a raw feature's distinct ids in the train rows (one more when a null is among
them), and `raw_ids` marks which features are raw.
Rows: a CSV row's line is its row number + 1 (the header), exact when no quoted value spans
lines; a Parquet row's "line" is its 1-based row number in the file.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import pathlib
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from rankjax.data import criteo, layout, parallel, table_lists
from rankjax.data.feature_stats import FeatureStats
from rankjax.data.hashing import MAX_ROWS, hash_to_rows
from rankjax.data.writer import DEFAULT_RECORDS_PER_SHARD, DatasetWriter, IngestError, IngestStats, excerpt

BATCH_ROWS = 1 << 16
MISSING_LABEL, NON_NUMERIC_LABEL = "missing label", "non-numeric label"
NON_NUMERIC_DENSE, NON_FINITE_DENSE = "non-numeric dense value", "non-finite dense value"
MISSING_QID, BAD_QID = "missing qid", "non-integer qid"
WRONG_COLUMN_COUNT, EMPTY_FILE, UNREADABLE_FILE = "wrong column count", "empty file", "unreadable file"
RESERVED_ID = "id reserved by raw (-2 / 2**64 - 2: a null value, -1 / 2**64 - 1: padding)"
PAD_RAW_ID = (1 << 64) - 1  # A raw sequence's padding (both words -1, as the engine reads padding).


class ExactVocabulary:
  """Raw 64-bit ids -> rows: ids[r] is row r + 2; any other id row 1 (out of vocabulary)."""

  def __init__(self, ids: np.ndarray):
    self.ids = np.asarray(ids, np.uint64)
    self._order = np.argsort(self.ids, kind="stable")
    self._sorted = self.ids[self._order]

  def rows(self, raw: np.ndarray) -> np.ndarray:
    position = np.minimum(np.searchsorted(self._sorted, raw), max(len(self._sorted) - 1, 0))
    found = (self._sorted[position] == raw) if len(self._sorted) else np.zeros(len(raw), bool)
    return np.where(found, self._order[position] + 2, 1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class CategoricalFeature:
  name: str
  num_rows: int = 0  # Hashed: required; exact vocabulary (min_count): a cap, 0 = none; bucketised: k + 2.
  min_count: int = 0  # > 0: an exact vocabulary of the ids seen this often in the train split.
  column: str = ""  # The input column read; "" = `name`.
  boundaries: tuple[float, ...] = ()  # Non-empty: the bucket of a number, not an id.
  raw: bool = False  # Keep the 64-bit ids (num_rows: their distinct count in the train split, set by convert).
  vocabulary: ExactVocabulary | None = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def source(self) -> str:
    return self.column or self.name


@dataclasses.dataclass(frozen=True)
class SequenceFeature:
  name: str
  num_rows: int = 0
  max_hotness: int = 0
  separator: str = "|"
  min_count: int = 0
  raw: bool = False
  vocabulary: ExactVocabulary | None = dataclasses.field(default=None, compare=False, repr=False)


def _feature_dict(feature) -> dict[str, Any]:
  optional = ("min_count", "column", "boundaries", "raw")  # Written only when set.
  return {f.name: list(value) if isinstance(value, tuple) else value for f in dataclasses.fields(feature)
          if f.name != "vocabulary" and ((value := getattr(feature, f.name)) or f.name not in optional)}


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  labels: tuple[str, ...]
  dense: tuple[str, ...] = ()
  categorical: tuple[CategoricalFeature, ...] = ()
  sequence: tuple[SequenceFeature, ...] = ()
  qid: str | None = None

  @property
  def names(self) -> list[str]:
    """The labels' and features' names (each used once), in record order."""
    names = [*self.labels, *self.dense, *(f.name for f in self.categorical), *(f.name for f in self.sequence)]
    return names + ([self.qid] if self.qid else [])

  @property
  def columns(self) -> list[str]:
    """Every input column the spec reads, once each, in record order."""
    sources = [*self.labels, *self.dense, *(f.source for f in self.categorical), *(f.name for f in self.sequence)]
    return list(dict.fromkeys(sources + ([self.qid] if self.qid else [])))

  @property
  def hotness(self) -> list[int]:
    return [1] * len(self.categorical) + [f.max_hotness for f in self.sequence]

  @property
  def vocab_sizes(self) -> list[int]:
    return [f.num_rows for f in self.categorical] + [f.num_rows for f in self.sequence]

  @property
  def raw_ids(self) -> list[bool]:
    """Per feature (vocab_sizes order): whether it keeps raw 64-bit ids."""
    return [f.raw for f in (*self.categorical, *self.sequence)]

  def record_dtype(self) -> np.dtype:
    label_shape = () if len(self.labels) == 1 else (len(self.labels),)
    fields = [("label", "<f4", label_shape), ("dense", "<f4", (len(self.dense),)), ("cat", "<i4", (sum(self.hotness),))]
    fields += [("cat_hi", "<i4", (sum(self.hotness),))] if any(self.raw_ids) else []
    return np.dtype(fields + ([("qid", "<i8")] if self.qid else []))

  def as_dict(self) -> dict[str, Any]:
    spec = {"label": list(self.labels), "dense": list(self.dense),
            "categorical": [_feature_dict(f) for f in self.categorical],
            "sequence": [_feature_dict(f) for f in self.sequence]}
    return spec | ({"qid": self.qid} if self.qid else {})


def _spec_error(path: pathlib.Path, key: str, message: str) -> layout.DataError:
  return layout.DataError(f"{path}: spec key '{key}': {message}")


def _names(path: pathlib.Path, raw: dict, key: str) -> tuple[str, ...]:
  value = raw.get(key, [])
  value = [value] if isinstance(value, str) else value
  if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
    raise _spec_error(path, key, f"must be a column name or a list of them, got {value!r}")
  return tuple(value)


def _features(path: pathlib.Path, raw: dict, key: str, cls, required: tuple[str, ...]) -> tuple:
  entries = raw.get(key, [])
  if not isinstance(entries, list):
    raise _spec_error(path, key, f"must be a list of objects, got {entries!r}")
  allowed = {f.name for f in dataclasses.fields(cls)} - {"vocabulary"}
  out = []
  for i, entry in enumerate(entries):
    where = f"{key}[{i}]"
    optional_rows = isinstance(entry, dict) and (entry.get("min_count") or entry.get("boundaries") or entry.get("raw"))
    needed = tuple(k for k in required if not (k == "num_rows" and optional_rows))
    if not isinstance(entry, dict) or not set(needed) <= set(entry) or not set(entry) <= allowed:
      raise _spec_error(path, where, f"needs keys {list(required)} (num_rows optional with min_count, "
                        f"boundaries or raw; allowed {sorted(allowed)}), got {entry!r}")
    feature = cls(**entry)
    if not isinstance(feature.name, str) or not feature.name:
      raise _spec_error(path, f"{where}.name", "must be a column name")
    if not isinstance(feature.raw, bool):
      raise _spec_error(path, f"{where}.raw", f"must be true or false, got {feature.raw!r}")
    if feature.raw and (feature.min_count or getattr(feature, "boundaries", ())):
      raise _spec_error(path, f"{where}.raw", "raw ids have no min_count or boundaries (num_rows, too, is set by "
                        "the conversion: the distinct ids)")
    if cls is CategoricalFeature:
      feature = _bucketised(path, where, feature)
      if feature.boundaries:
        out.append(feature)
        continue
    if isinstance(feature.min_count, bool) or not isinstance(feature.min_count, int) or feature.min_count < 0:
      raise _spec_error(path, f"{where}.min_count", f"must be an int >= 1 (an exact vocabulary), got "
                        f"{feature.min_count!r}")
    if not feature.raw and (feature.num_rows or not feature.min_count) and (
        not isinstance(feature.num_rows, int) or not (3 if feature.min_count else 2) <= feature.num_rows <= MAX_ROWS):
      raise _spec_error(path, f"{where}.num_rows", f"must be an int in [{3 if feature.min_count else 2}, 2**31] "
                        f"(row 0 is 'missing'{', row 1 out-of-vocabulary' if feature.min_count else ''}), "
                        f"got {feature.num_rows!r}")
    if cls is SequenceFeature and (not isinstance(feature.max_hotness, int) or feature.max_hotness < 1):
      raise _spec_error(path, f"{where}.max_hotness", f"must be an int >= 1, got {feature.max_hotness!r}")
    if cls is SequenceFeature and (not isinstance(feature.separator, str) or not feature.separator):
      raise _spec_error(path, f"{where}.separator", "must be a non-empty string")
    out.append(feature)
  return tuple(out)


def _bucketised(path: pathlib.Path, where: str, feature: CategoricalFeature) -> CategoricalFeature:
  """The feature with its `column` and `boundaries` checked (boundaries as a tuple, num_rows k + 2)."""
  if not isinstance(feature.column, str):
    raise _spec_error(path, f"{where}.column", f"must be a column name, got {feature.column!r}")
  bounds = feature.boundaries
  if not bounds:
    return feature
  numbers = isinstance(bounds, list) and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                             and math.isfinite(b) for b in bounds)
  if not numbers or any(a >= b for a, b in zip(bounds[:-1], bounds[1:])):
    raise _spec_error(path, f"{where}.boundaries", f"must be a list of increasing finite numbers, got {bounds!r}")
  if feature.min_count:
    raise _spec_error(path, f"{where}.min_count", "a bucketised feature (boundaries) has no vocabulary")
  if feature.num_rows and feature.num_rows != len(bounds) + 2:
    raise _spec_error(path, f"{where}.num_rows", f"{len(bounds)} boundaries make {len(bounds) + 2} rows (row 0 "
                      f"missing, then {len(bounds) + 1} buckets), got {feature.num_rows!r}")
  return dataclasses.replace(feature, boundaries=tuple(float(b) for b in bounds), num_rows=len(bounds) + 2)


def with_raw_ids(spec: FeatureSpec, path: pathlib.Path | str) -> FeatureSpec:
  """`rankjax data table --vocab raw`: the spec with every hashed categorical and sequence feature
  (num_rows alone) raw, as `"raw": true` makes it; exact vocabularies (min_count) and buckets
  (boundaries) stay. A spec with no hashed feature is an error naming it."""
  def raw(feature):
    hashed = not (feature.raw or feature.min_count or getattr(feature, "boundaries", ()))
    return dataclasses.replace(feature, raw=True, num_rows=0) if hashed else feature

  out = dataclasses.replace(spec, categorical=tuple(map(raw, spec.categorical)), sequence=tuple(map(raw, spec.sequence)))
  if out.raw_ids == spec.raw_ids:
    raise layout.DataError(f"{path}: --vocab raw keeps hashed features' ids raw, and the spec hashes none (each has "
                           "min_count, boundaries or raw)")
  return out


def load_spec(path: pathlib.Path) -> FeatureSpec:
  """Reads and checks a JSON feature spec; DataError names the file and the key."""
  try:
    raw = json.loads(pathlib.Path(path).read_text())
  except OSError as e:
    raise layout.DataError(f"{path}: cannot read the spec: {e.strerror}") from None
  except json.JSONDecodeError as e:
    raise layout.DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
  return spec_from_dict(raw, path)


def spec_from_dict(raw: Any, path: pathlib.Path | str) -> FeatureSpec:
  """A spec from its JSON object (a spec file, or the one a manifest records); DataError names
  `path` and the key."""
  if not isinstance(raw, dict):
    raise layout.DataError(f"{path}: the spec must be a JSON object")
  unknown = set(raw) - {"label", "dense", "categorical", "sequence", "qid"}
  if unknown:
    raise _spec_error(path, sorted(unknown)[0], "unknown key (known: label, dense, categorical, sequence, qid)")
  qid = raw.get("qid")
  if qid is not None and (not isinstance(qid, str) or not qid):
    raise _spec_error(path, "qid", f"must be a column name, got {qid!r}")
  spec = FeatureSpec(labels=_names(path, raw, "label"), dense=_names(path, raw, "dense"),
                     categorical=_features(path, raw, "categorical", CategoricalFeature, ("name", "num_rows")),
                     sequence=_features(path, raw, "sequence", SequenceFeature, ("name", "num_rows", "max_hotness")),
                     qid=qid)
  if not spec.labels:
    raise _spec_error(path, "label", "at least one label column is required")
  if not spec.categorical and not spec.sequence:
    raise _spec_error(path, "categorical", "at least one categorical or sequence feature is required")
  duplicated = sorted({c for c in spec.names if spec.names.count(c) > 1})
  if duplicated:
    raise _spec_error(path, duplicated[0], "column used twice")
  for i, feature in enumerate(spec.categorical):
    if feature.column and feature.column in (*spec.labels, spec.qid):
      raise _spec_error(path, f"categorical[{i}].column", f"{feature.column!r} is a label or the qid column")
    if feature.column and not feature.boundaries and feature.column in spec.names:
      raise _spec_error(path, f"categorical[{i}].column", f"{feature.column!r} is read by another feature: only a "
                        "bucketised feature (boundaries) may share a column")
  return spec


# ---- Column conversions: pyarrow arrays -> NumPy, with per-row problems.

def _is_text(array: pa.Array) -> bool:
  return pa.types.is_string(array.type) or pa.types.is_large_string(array.type)


def _numbers(array: pa.Array, file: pathlib.Path, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(float64 values, nulls as NaN; null mask; mask of text that is not a number) of a column."""
  null = array.is_null().to_numpy(zero_copy_only=False)
  if _is_text(array):
    try:
      values = pc.cast(array, pa.float64())
      bad = np.zeros(len(array), bool)
    except pa.ArrowInvalid:  # Find the bad rows one by one (only in a batch that has one).
      texts = array.to_pylist()
      parsed = [_float_or_none(t) for t in texts]
      bad = np.array([t is not None and p is None for t, p in zip(texts, parsed)], bool)
      values = pa.array(parsed, pa.float64())
  elif pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type):
    values, bad = pc.cast(array, pa.float64()), np.zeros(len(array), bool)
  else:
    raise layout.DataError(f"{file}: column {column!r} has type {array.type}; expected numbers")
  return values.to_numpy(zero_copy_only=False).astype(np.float64), null, bad


def _integers(array: pa.Array, file: pathlib.Path, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(int64 values, nulls as 0; null mask; mask of text that is not an integer) of a column."""
  null = array.is_null().to_numpy(zero_copy_only=False)
  if pa.types.is_integer(array.type):
    return array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64), null, np.zeros(len(array), bool)
  if not _is_text(array):
    raise layout.DataError(f"{file}: column {column!r} has type {array.type}; expected integers")
  try:
    return pc.cast(array, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), null, np.zeros(len(array), bool)
  except pa.ArrowInvalid:  # Find the bad rows one by one (only in a batch that has one).
    parsed = [_int_or_none(t) for t in array.to_pylist()]
    bad = np.array([p is None for p in parsed]) & ~null
    return np.array([p or 0 for p in parsed], np.int64), null, bad


def _int_or_none(text: str | None) -> int | None:
  try:
    value = int(text)
  except (TypeError, ValueError):
    return None
  return value if -2 ** 63 <= value < 2 ** 63 else None


def _float_or_none(text: str | None) -> float | None:
  try:
    return float(text)
  except (TypeError, ValueError):
    return None


def _text_id(text: str) -> int:
  try:
    return int(text) & ((1 << 64) - 1)
  except ValueError:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _raw_ids(array: pa.Array, file: pathlib.Path, column: str) -> np.ndarray:
  """64-bit ids of a column without nulls (integers as themselves, other text hashed)."""
  if pa.types.is_integer(array.type):
    return array.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
  if not _is_text(array):
    raise layout.DataError(f"{file}: column {column!r} has type {array.type}; expected integer or string ids")
  try:
    return pc.cast(array, pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
  except pa.ArrowInvalid:  # Some text is not an integer: hash each distinct value once.
    encoded = array.dictionary_encode()
    distinct = np.array([_text_id(t) for t in encoded.dictionary.to_pylist()], np.uint64)
    return distinct[encoded.indices.to_numpy(zero_copy_only=False)]


def _rows(raw: np.ndarray, feature: CategoricalFeature | SequenceFeature) -> np.ndarray:
  if feature.min_count:
    if feature.vocabulary is None:  # The counting pass: rows are not used.
      return np.ones(len(raw), np.int32)
    return feature.vocabulary.rows(raw)
  return hash_to_rows(raw, feature.num_rows - 1) + 1


def _bucket_rows(array: pa.Array, feature: CategoricalFeature, file: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(rows of a bucketised feature: 0 for null or NaN, else 1 + the boundaries <= the value; bad)."""
  values, null, bad = _numbers(array, file, feature.source)
  buckets = 1 + np.searchsorted(np.asarray(feature.boundaries), values, side="right")
  return np.where(null | np.isnan(values), 0, buckets).astype(np.int32), bad


def _categorical_rows(array: pa.Array, feature: CategoricalFeature, file: pathlib.Path) -> np.ndarray:
  rows = np.zeros(len(array), np.int32)
  present = ~array.is_null().to_numpy(zero_copy_only=False)
  if present.any():
    rows[present] = _rows(_raw_ids(array.filter(pa.array(present)), file, feature.source), feature)
  return rows


def _column_ids(array: pa.Array, feature: CategoricalFeature | SequenceFeature, file: pathlib.Path) -> np.ndarray:
  """The raw ids of a column's present values (a sequence's elements, in order)."""
  if isinstance(feature, CategoricalFeature):
    return _raw_ids(array.filter(pc.invert(array.is_null())), file, feature.source)
  elements, _ = _sequence_elements(array, feature, file)
  return _raw_ids(elements, file, feature.name) if len(elements) else np.zeros(0, np.uint64)


def _sequence_elements(array: pa.Array, feature: SequenceFeature, file: pathlib.Path) -> tuple[pa.Array, np.ndarray]:
  """(a list column's non-empty elements, the row each belongs to)."""
  if _is_text(array):
    array = pc.split_pattern(array, feature.separator)
  if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
    raise layout.DataError(f"{file}: column {feature.name!r} has type {array.type}; expected a list or "
                           f"text separated by {feature.separator!r}")
  elements = array.flatten()
  parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
  keep = ~elements.is_null().to_numpy(zero_copy_only=False)
  if _is_text(elements):
    keep &= pc.fill_null(pc.binary_length(elements), 0).to_numpy(zero_copy_only=False) > 0
  return elements.filter(pa.array(keep)), parents[keep]


def _sequence_rows(array: pa.Array, feature: SequenceFeature, file: pathlib.Path
                   ) -> tuple[np.ndarray, int, int, np.ndarray]:
  """([n, max_hotness] rows padded with -1 (a raw feature: uint64 ids padded with PAD_RAW_ID), how
  many rows were cut to max_hotness, how many hold more than one id, which rows keep a reserved
  raw id)."""
  elements, parents = _sequence_elements(array, feature, file)
  lengths = np.bincount(parents, minlength=len(array))
  position = np.arange(len(parents)) - (np.cumsum(lengths) - lengths)[parents]
  kept = position < feature.max_hotness
  if feature.raw:
    out = np.full((len(array), feature.max_hotness), PAD_RAW_ID, np.uint64)
  else:
    out = np.full((len(array), feature.max_hotness), -1, np.int32)
  reserved = np.zeros(len(array), bool)
  if len(elements):
    ids = _raw_ids(elements, file, feature.name)
    out[parents[kept], position[kept]] = (ids if feature.raw else _rows(ids, feature))[kept]
    if feature.raw:
      reserved[parents[kept & (ids >= np.uint64(criteo.MISSING_RAW_ID))]] = True
  return out, int(np.count_nonzero(lengths > feature.max_hotness)), int(np.count_nonzero(lengths > 1)), reserved


def _raw_categorical_ids(array: pa.Array, feature: CategoricalFeature, file: pathlib.Path) -> np.ndarray:
  """A raw feature's uint64 ids, a null value criteo.MISSING_RAW_ID."""
  present = ~array.is_null().to_numpy(zero_copy_only=False)
  ids = np.full(len(array), criteo.MISSING_RAW_ID, np.uint64)
  if present.any():
    ids[present] = _raw_ids(array.filter(pa.array(present)), file, feature.source)
  reserved = present & (ids >= np.uint64(criteo.MISSING_RAW_ID))
  return ids, reserved



@dataclasses.dataclass
class _Converted:
  """One batch as records, with each row's first problem: `problem[row]` indexes `reasons`
  ((reason, excerpt); the excerpt shows the first row flagged with it), -1 for a good row."""
  records: np.ndarray
  problem: np.ndarray
  reasons: list[tuple[str, str]]
  truncated: dict[str, int]
  several: dict[str, int]  # Sequence feature -> rows holding more than one id.


def _decoded(batch: pa.RecordBatch) -> pa.RecordBatch:
  """Dictionary-encoded columns (pandas categoricals in Parquet) as plain arrays."""
  columns = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns]
  return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _convert_batch(batch: pa.RecordBatch, spec: FeatureSpec, file: pathlib.Path, dtype: np.dtype) -> _Converted:
  """The batch's rows as records, flagging each row's first problem in spec column order."""
  n = batch.num_rows
  records = np.zeros(n, dtype)
  problem = np.full(n, -1, np.int64)  # Index into `reasons` of each row's first problem.
  reasons: list[tuple[str, str]] = []

  def flag(mask: np.ndarray, reason: str, column: str) -> None:
    new = mask & (problem < 0)
    for row in np.flatnonzero(new)[:1]:  # The excerpt of the first is enough; the others share it.
      value = batch.column(column)[int(row)].as_py()
      reasons.append((reason, excerpt(f"{column}={value!r}")))
    problem[new] = len(reasons) - 1

  labels = np.zeros((n, len(spec.labels)))
  for k, name in enumerate(spec.labels):
    values, null, bad = _numbers(batch.column(name), file, name)
    flag(null | (np.isnan(values) & ~bad), MISSING_LABEL, name)
    flag(bad, NON_NUMERIC_LABEL, name)
    labels[:, k] = values
  records["label"] = labels[:, 0] if len(spec.labels) == 1 else labels
  dense = np.zeros((n, len(spec.dense)))
  for j, name in enumerate(spec.dense):
    values, null, bad = _numbers(batch.column(name), file, name)
    flag(bad, NON_NUMERIC_DENSE, name)
    flag(np.isinf(values), NON_FINITE_DENSE, name)
    dense[:, j] = np.where(np.isnan(values), 0.0, values)
  records["dense"] = dense
  slot, truncated, several = 0, {}, {}
  for feature in spec.categorical:
    if feature.boundaries:
      records["cat"][:, slot], bad = _bucket_rows(batch.column(feature.source), feature, file)
      flag(bad, NON_NUMERIC_DENSE, feature.source)
    elif feature.raw:
      ids, reserved = _raw_categorical_ids(batch.column(feature.source), feature, file)
      records["cat"][:, slot], records["cat_hi"][:, slot] = criteo.split_words(ids)
      flag(reserved, RESERVED_ID, feature.source)
    else:
      records["cat"][:, slot] = _categorical_rows(batch.column(feature.source), feature, file)
    slot += 1
  for feature in spec.sequence:
    values, truncated[feature.name], several[feature.name], reserved = _sequence_rows(
        batch.column(feature.name), feature, file)
    if feature.raw:
      records["cat"][:, slot:slot + feature.max_hotness], records["cat_hi"][:, slot:slot + feature.max_hotness] = \
          criteo.split_words(values)
      flag(reserved, RESERVED_ID, feature.name)
    else:
      records["cat"][:, slot:slot + feature.max_hotness] = values
    slot += feature.max_hotness
  if spec.qid:
    values, null, bad = _integers(batch.column(spec.qid), file, spec.qid)
    flag(null, MISSING_QID, spec.qid)
    flag(bad, BAD_QID, spec.qid)
    records["qid"] = values
  return _Converted(records, problem, reasons, truncated, several)


# ---- Reading files in batches, numbering every row.

def _header(path: pathlib.Path) -> list[str]:
  first = b""
  for chunk in criteo.read_chunks(path, 1 << 16):
    first += chunk
    if b"\n" in first:
      break
  return next(csv.reader(io.StringIO(first.split(b"\n")[0].decode("utf-8", "replace").rstrip("\r"))), [])


def _check_columns(path: pathlib.Path, present: Sequence[str], spec: FeatureSpec) -> None:
  missing = [c for c in spec.columns if c not in present]
  if missing:
    raise layout.DataError(f"{path}: no column {missing[0]!r} (the file has {list(present)})")


def _csv_batches(path: pathlib.Path, spec: FeatureSpec, rejected: list[tuple[int, str]]) -> Iterator[pa.RecordBatch]:
  """The CSV's batches; rows the reader rejects (a wrong column count) are appended to `rejected`
  as (line, text), no later than the batch that follows them (the reader may report rows of
  batches it has read ahead)."""
  header = _header(path)
  if not header:  # No data at all (a compressed empty file).
    return
  _check_columns(path, header, spec)

  def on_invalid_row(row) -> str:
    rejected.append((row.number, row.text))
    return "skip"

  yield from pa_csv.open_csv(
      path, read_options=pa_csv.ReadOptions(use_threads=False, block_size=1 << 22),
      parse_options=pa_csv.ParseOptions(invalid_row_handler=on_invalid_row, ignore_empty_lines=False),
      convert_options=pa_csv.ConvertOptions(include_columns=spec.columns, strings_can_be_null=True,
                                            column_types={c: pa.string() for c in spec.columns}))


def _parquet_batches(path: pathlib.Path, spec: FeatureSpec) -> Iterator[pa.RecordBatch]:
  parquet = pq.ParquetFile(path)
  _check_columns(path, parquet.schema_arrow.names, spec)
  yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=spec.columns)


def _is_parquet(path: pathlib.Path) -> bool:
  with open(path, "rb") as f:
    return f.read(4) == b"PAR1"


def count_rows(path: pathlib.Path) -> int:
  """Data rows in a file: Parquet metadata, or a CSV's lines after the header; 0 for a file
  that cannot be read (the write pass reports it)."""
  if path.stat().st_size == 0:
    return 0
  if _is_parquet(path):
    try:
      return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError):
      return 0
  return max(criteo.count_lines(path) - 1, 0)


def _file_rows(path: pathlib.Path, spec: FeatureSpec, stats: IngestStats,
               on_batch: Callable[[pa.RecordBatch, np.ndarray, np.ndarray], None] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[int, str, str]], dict[str, int], dict[str, int]]]:
  """Per batch: (records of its good rows, their ordinals, problems as (ordinal, reason, excerpt)
  sorted, truncated sequence counts, rows with several ids per sequence feature). `on_batch` gets
  each decoded batch with its rows' ordinals and which rows are good. Ordinals number every data row of the file from 0, good or
  not; a row's line is ordinal + 2 (CSV, after the header) or ordinal + 1 (Parquet)."""
  if path.stat().st_size == 0:
    stats.reject_file(str(path), 0, EMPTY_FILE, "no data")
    return
  parquet = _is_parquet(path)
  line_offset = 1 if parquet else 2
  dtype = spec.record_dtype()
  rejected: list[tuple[int, str]] = []
  next_ordinal = 0
  try:
    batches = _parquet_batches(path, spec) if parquet else _csv_batches(path, spec, rejected)
    for batch in batches:
      batch = _decoded(batch)
      converted = _convert_batch(batch, spec, path, dtype)
      # The batch's rows take the next ordinals that the reader did not reject.
      skipped = np.array(sorted(line - line_offset for line, _ in rejected), np.int64)
      free_before = skipped - next_ordinal - np.arange(len(skipped))
      index = np.arange(batch.num_rows)
      ordinals = next_ordinal + index + np.searchsorted(free_before, index, side="right")
      span_end = int(ordinals[-1]) + 1 if batch.num_rows else next_ordinal
      problems = [(line - line_offset, WRONG_COLUMN_COUNT, excerpt(text))
                  for line, text in rejected if line - line_offset < span_end]
      rejected[:] = [(line, text) for line, text in rejected if line - line_offset >= span_end]
      good = converted.problem < 0
      if on_batch is not None:
        on_batch(batch, ordinals, good)
      problems += [(int(ordinals[row]), *converted.reasons[converted.problem[row]]) for row in np.flatnonzero(~good)]
      yield converted.records[good], ordinals[good], sorted(problems), converted.truncated, converted.several
      next_ordinal = span_end
    if rejected:  # Rejected rows after the last good one.
      yield (np.zeros(0, dtype), np.zeros(0, np.int64),
             sorted((line - line_offset, WRONG_COLUMN_COUNT, excerpt(text)) for line, text in rejected), {}, {})
      next_ordinal = max(line - line_offset for line, _ in rejected) + 1
  except (pa.ArrowInvalid, OSError) as e:
    stats.reject_file(str(path), next_ordinal + line_offset, UNREADABLE_FILE, excerpt(str(e)))
  if next_ordinal == 0 and not rejected:
    stats.reject_file(str(path), 0, EMPTY_FILE, "no data rows")


@dataclasses.dataclass(frozen=True)
class TableOptions:
  strict: bool = True
  eval_fraction: float | None = None  # The last fraction of the rows (all files in order) is the eval split ...
  eval_inputs: tuple[pathlib.Path, ...] = ()  # ... or these files are.
  max_records_per_shard: int = DEFAULT_RECORDS_PER_SHARD
  workers: int = 1  # Processes converting files in parallel (one file each at a time); the output is the same.
  lists: bool = False  # One query list per qid (rankjax/data/table_lists.py) instead of one record per row.
  max_list_size: int | None = None  # lists: documents kept per list; None = the longest query.


@dataclasses.dataclass(frozen=True)
class _Job:
  """One input file: its index, the split it feeds (None: train and eval by row position, the
  file's first row being row `first_row` of all the train files) and the train rows."""
  path: pathlib.Path
  index: int
  split: str | None
  first_row: int
  train_rows: int | None


def _file_splits(job: _Job, spec: FeatureSpec, stats: IngestStats, truncated: dict[str, int],
                 several: dict[str, int]) -> Iterator[tuple[str, np.ndarray]]:
  """(split, records) of a file's good rows in order; malformed rows rejected into `stats`."""
  line_offset = 1 if job.path.stat().st_size and _is_parquet(job.path) else 2
  for records, ordinals, problems, cut, many in _file_rows(job.path, spec, stats):
    stats.rows_read += len(records) + len(problems)
    for ordinal, reason, text in problems:
      stats.reject_rows(str(job.path), ordinal + line_offset, reason, text)
    for name, count in cut.items():
      truncated[name] += count
    for name, count in many.items():
      several[name] += count
    if job.split is not None:
      yield job.split, records
    else:
      in_train = job.first_row + ordinals < job.train_rows
      yield "train", records[in_train]
      yield "eval", records[~in_train]


def _with_vocabularies(spec: FeatureSpec, jobs: Sequence[_Job], strict: bool) -> tuple[FeatureSpec, dict]:
  """The spec with an exact vocabulary for each feature with min_count, and its num_rows for each
  raw feature (distinct ids, a null value's id among them), counted over the rows the conversion
  writes to the train split (a first pass over the train input); and what each vocabulary holds."""
  exact = [f for f in (*spec.categorical, *spec.sequence) if f.min_count or f.raw]
  counts: dict[str, tuple[np.ndarray, np.ndarray]] = {f.name: (np.zeros(0, np.uint64), np.zeros(0, np.int64))
                                                        for f in exact}
  for job in jobs:
    if job.split == "eval":
      continue

    def count(batch: pa.RecordBatch, ordinals: np.ndarray, good: np.ndarray, job=job) -> None:
      in_train = good if job.split == "train" else good & (job.first_row + ordinals < job.train_rows)
      rows = batch.filter(pa.array(in_train))
      for feature in exact:
        ids, seen = counts[feature.name]
        column = rows.column(feature.source if isinstance(feature, CategoricalFeature) else feature.name)
        ids_here = _column_ids(column, feature, job.path)
        if feature.raw and isinstance(feature, CategoricalFeature) and column.null_count:
          ids_here = np.append(ids_here, np.uint64(criteo.MISSING_RAW_ID))
        new, new_counts = np.unique(ids_here, return_counts=True)
        merged, inverse = np.unique(np.concatenate([ids, new]), return_inverse=True)
        counts[feature.name] = merged, np.bincount(inverse, np.concatenate([seen, new_counts]),
                                                   len(merged)).astype(np.int64)

    for _ in _file_rows(job.path, spec, IngestStats(strict=strict), on_batch=count):
      pass
  resolved, report = {}, {}
  for feature in exact:
    ids, seen = counts[feature.name]
    if feature.raw:
      resolved[feature.name] = dataclasses.replace(feature, num_rows=max(1, len(ids)))
      continue
    kept = np.flatnonzero(seen >= feature.min_count)
    kept = kept[np.lexsort((ids[kept], -seen[kept]))]
    if feature.num_rows:
      kept = kept[:feature.num_rows - 2]
    resolved[feature.name] = dataclasses.replace(feature, num_rows=len(kept) + 2,
                                                 vocabulary=ExactVocabulary(ids[kept]))
    report[feature.name] = {"min_count": feature.min_count, "ids_kept": int(len(kept)), "ids_seen": int(len(ids)),
                            "oov_lookups_in_train": int(seen.sum() - seen[kept].sum())}
  spec = dataclasses.replace(spec, categorical=tuple(resolved.get(f.name, f) for f in spec.categorical),
                             sequence=tuple(resolved.get(f.name, f) for f in spec.sequence))
  return spec, report


def with_stored_vocabularies(spec: FeatureSpec, load: Callable[[str], np.ndarray]) -> FeatureSpec:
  """A spec a manifest recorded, its exact vocabularies read by `load(file key)` (side files)."""
  attach = lambda f: dataclasses.replace(f, vocabulary=ExactVocabulary(load(f"vocab_{f.name}"))) \
      if f.min_count else f  # noqa: E731
  return dataclasses.replace(spec, categorical=tuple(map(attach, spec.categorical)),
                             sequence=tuple(map(attach, spec.sequence)))


_WORKER: dict = {}  # Set by the parent before forking: spec, strict, scratch directory.


def _convert_job(job: _Job) -> dict:
  """One file's records into scratch files per split, and its row accounting."""
  spec, scratch = _WORKER["spec"], _WORKER["scratch"]
  stats, truncated = IngestStats(strict=_WORKER["strict"]), {f.name: 0 for f in spec.sequence}
  several = dict(truncated)
  paths = {split: scratch / f"{job.index}-{split}.bin" for split in ("train", "eval")}
  try:
    with open(paths["train"], "wb") as train, open(paths["eval"], "wb") as evaluation:
      files = {"train": train, "eval": evaluation}
      for split, records in _file_splits(job, spec, stats, truncated, several):
        files[split].write(records.tobytes())
  except IngestError as e:  # Strict mode: the parent raises the first in input order.
    return {"error": [e.file, e.line, e.reason, e.excerpt]}
  return {"paths": {k: str(v) for k, v in paths.items()}, **stats.as_worker_result(), "truncated": truncated,
          "several": several}


def _list_size(spec: FeatureSpec, files: Sequence[pathlib.Path], options: TableOptions) -> tuple[int, int]:
  """(documents per list record, the longest query) with --lists; (0, 0) without."""
  if not options.lists:
    if options.max_list_size is not None:
      raise ValueError("--max-list-size needs --lists")
    return 0, 0
  if not spec.qid:
    raise ValueError("--lists groups rows into query lists by the spec's \"qid\" column, which the spec lacks")
  if len(spec.labels) != 1:
    raise ValueError(f"--lists takes one label column (the relevance), the spec has {list(spec.labels)}")
  if options.max_list_size is not None and options.max_list_size < 1:
    raise ValueError(f"--max-list-size must be >= 1, got {options.max_list_size}")
  longest = table_lists.longest_query(files, spec.qid, _is_parquet)
  return max(1, min(longest, options.max_list_size or longest)), longest


def convert(train_files: Sequence[pathlib.Path], output: str | pathlib.Path, spec: FeatureSpec,
            options: TableOptions) -> dict:
  """Converts tables into a dataset directory; returns its manifest (see the module docstring).
  With options.workers > 1 and several files, files are converted by worker processes and
  written in input order: the same dataset, byte for byte."""
  if bool(options.eval_inputs) == (options.eval_fraction is not None):
    raise ValueError("give exactly one of --eval-fraction and --eval-input")
  if options.eval_fraction is not None and not 0 < options.eval_fraction < 1:
    raise ValueError(f"--eval-fraction must be in (0, 1), got {options.eval_fraction}")
  if options.workers < 1:
    raise ValueError(f"--workers must be >= 1, got {options.workers}")
  train_files = [pathlib.Path(p) for p in train_files]
  eval_files = [pathlib.Path(p) for p in options.eval_inputs]
  train_rows, rows_before = None, {}
  if options.eval_fraction is not None:  # Rows are split by their position in all the train files.
    counts = [count_rows(p) for p in train_files]
    rows_before = dict(zip(train_files, np.cumsum([0] + counts[:-1]).tolist()))
    train_rows = sum(counts) - math.floor(options.eval_fraction * sum(counts))
  jobs = [_Job(p, i, "train" if train_rows is None else None, rows_before.get(p, 0), train_rows)
          for i, p in enumerate(train_files)]
  jobs += [_Job(p, len(jobs) + i, "eval", 0, None) for i, p in enumerate(eval_files)]
  dtype = spec.record_dtype()
  list_size, longest = _list_size(spec, [*train_files, *eval_files], options)
  vocabularies = {}
  if any(f.min_count or f.raw for f in (*spec.categorical, *spec.sequence)):
    spec, vocabularies = _with_vocabularies(spec, jobs, options.strict)
  stats = IngestStats(strict=options.strict)
  truncated = {f.name: 0 for f in spec.sequence}
  several = dict(truncated)  # Rows with more than one id: none at all hints at a wrong separator.
  dense_stats = FeatureStats(len(spec.dense))  # Over the train split: what training standardises with.
  out_dtype = table_lists.list_dtype(len(spec.dense), sum(spec.hotness), list_size,
                                     any(spec.raw_ids)) if options.lists else dtype
  with DatasetWriter(output, out_dtype, options.max_records_per_shard) as writer:
    train, evaluation = writer.split("train"), writer.split("eval")
    closed = set() if options.eval_fraction is not None else None  # One input: a qid is in one split.
    groupers = {"train": table_lists.ListGrouper(train, out_dtype, pathlib.Path(output), dense_stats, closed),
                "eval": table_lists.ListGrouper(evaluation, out_dtype, pathlib.Path(output), None, closed)
                } if options.lists else {}

    def write(split: str, records: np.ndarray) -> None:
      if groupers:
        if split == "eval" and options.eval_fraction is not None and not evaluation.num_records \
            and groupers["eval"].qid is None:  # A query straddling the boundary stays whole in train.
          head = groupers["train"].leading_rows_of_current_query(records)
          groupers["train"].add(records[:head])
          records = records[head:]
        groupers[split].add(records)
        return
      (train if split == "train" else evaluation).write(records)
      if split == "train":
        dense_stats.add(records["dense"])

    if options.workers > 1 and len(jobs) > 1:
      scratch = writer.directory / ".ingest-workers"
      scratch.mkdir(exist_ok=True)
      _WORKER.update(spec=spec, strict=options.strict, scratch=scratch)
      try:
        for result in parallel.map_in_order(_convert_job, jobs, options.workers):
          stats.merge_worker_result(result)
          for name, count in result["truncated"].items():
            truncated[name] += count
          for name, count in result["several"].items():
            several[name] += count
          for split, path in result["paths"].items():
            parallel.copy_records(pathlib.Path(path), dtype, lambda records, split=split: write(split, records))
      finally:
        _WORKER.clear()
        shutil.rmtree(scratch, ignore_errors=True)
    else:
      for job in jobs:
        for split, records in _file_splits(job, spec, stats, truncated, several):
          write(split, records)
    for grouper in groupers.values():
      grouper.finish()
    for name, split in (("train", train), ("eval", evaluation)):
      if split.num_records == 0:
        raise layout.DataError(f"{output}: the {name} split would be empty ({stats.summary()})")
    for i, feature in enumerate(f for f in (*spec.categorical, *spec.sequence) if f.min_count):
      writer.write_array(f"vocab_{feature.name}", f"vocab/feature_{i}.u64", feature.vocabulary.ids.astype("<u8"))
    source = {"kind": "table", "files": [str(p) for p in train_files], "eval_files": [str(p) for p in eval_files],
              "on_error": "strict" if options.strict else "skip", "eval_fraction": options.eval_fraction,
              "train_rows": train_rows}
    if options.lists:
      truncated_lists = {k: sum(getattr(g, k) for g in groupers.values())
                         for k in ("documents_truncated", "queries_truncated")}
      return writer.finish(
          stats, rows_written=sum(g.rows for g in groupers.values()), num_features=len(spec.dense), max_list_size=list_size, feature_stats=dense_stats.as_dict(),
          vocab_sizes=spec.vocab_sizes, hotness=spec.hotness, labels=list(spec.labels), feature_spec=spec.as_dict(),
          **({"raw_ids": spec.raw_ids} if any(spec.raw_ids) else {}),
          sequences_truncated=truncated, sequence_rows_with_several_ids=several,
          **({"vocabularies": vocabularies} if vocabularies else {}),
          lists={"longest_query": longest, **truncated_lists}, source={**source, "lists": True})
    return writer.finish(
        stats, num_dense=len(spec.dense), vocab_sizes=spec.vocab_sizes, hotness=spec.hotness,
        **({"raw_ids": spec.raw_ids} if any(spec.raw_ids) else {}),
        labels=list(spec.labels), feature_spec=spec.as_dict(), sequences_truncated=truncated,
        sequence_rows_with_several_ids=several, **({"vocabularies": vocabularies} if vocabularies else {}),
        dense_stats=dense_stats.as_dict(), source=source)
