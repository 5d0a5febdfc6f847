"""Checks a split's records against what its batch fields allow, once, when the split is opened:
labels 0/1 for binary heads, finite features, non-negative relevance, ids inside the vocabulary.

Policy (config `data.invalid_records`): "error" stops with one line naming the shard file, the
record, the field and the value, and how many records are bad; "skip" leaves the bad records out
of the split (the others keep their order) and reports the count by reason. Nothing is dropped
silently: the report is returned for the run to log and record.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rankjax.data.batch import BatchSpec, Field
from rankjax.data.layout import DataError, ShardedRecords

POLICIES = ("error", "skip")
CHUNK_RECORDS = 1 << 18  # Records checked at a time: bounded memory on any split size.


@dataclasses.dataclass(frozen=True)
class ValidationReport:
  """What a split's check found: records read and kept, and bad records by reason."""
  split: str
  records: int
  kept: int
  bad_by_reason: dict[str, int]

  def line(self) -> str:
    reasons = "; ".join(f"{n:,} {reason}" for reason, n in self.bad_by_reason.items())
    return (f"{self.split} split: skipped {self.records - self.kept:,} of {self.records:,} records with invalid "
            f"values ({reasons})")


class SelectedRecords:
  """The records of a split at `indices` (sorted), indexed 0..len-1 like ShardedRecords."""

  def __init__(self, records: ShardedRecords, indices: np.ndarray):
    self.records, self.indices, self.dtype = records, indices, records.dtype

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, key):
    return self.records[self.indices[np.asarray(key)]]

  def gather_field(self, name: str, indices: np.ndarray, width: int | None = None) -> np.ndarray:
    return self.records.gather_field(name, self.indices[np.asarray(indices)], width)


def _bad_values(field: Field, x: np.ndarray) -> tuple[np.ndarray, str]:
  """(bad [n] bool, reason) of one field's values [n, ...]."""
  flat = x.reshape(len(x), -1)
  if field.id_bounds is not None:
    bounds = np.asarray(field.id_bounds)
    bad = ((bounds > 0) & ((flat < -1) | (flat >= bounds))).any(axis=1)  # 0: a raw id's word
    return bad, f"{field.record_field}: ids outside [0, vocab) and not -1"
  if field.values == "binary":
    return ((flat != 0) & (flat != 1)).any(axis=1), f"{field.record_field}: not 0 or 1"
  if field.values == "finite":
    return (~np.isfinite(flat)).any(axis=1), f"{field.record_field}: not finite"
  if field.values == "nonnegative":
    return (~np.isfinite(flat) | (flat < 0)).any(axis=1), f"{field.record_field}: negative or not finite"
  return np.zeros(len(x), bool), ""


def _describe(field: Field, record: np.void, shard_file: str, index: int) -> str:
  value = np.asarray(record[field.record_field]).reshape(-1)
  if field.id_bounds is not None:
    bounds = np.asarray(field.id_bounds)
    columns = np.flatnonzero((bounds > 0) & ((value < -1) | (value >= bounds)))
    c = int(columns[0])
    return (f"{shard_file}: record {index}: {field.record_field} column {c} holds id {int(value[c])}, outside "
            f"[0, {field.id_bounds[c]}) of its vocabulary")
  shown = value if value.size <= 8 else value[:8]
  return f"{shard_file}: record {index}: {field.record_field} = {shown.tolist()} is not {field.values}"


def validate(records: ShardedRecords, spec: BatchSpec, split: str, shard_files: list[str], policy: str = "error"
             ) -> tuple[ShardedRecords | SelectedRecords, ValidationReport]:
  """The split's records to read from (all, or without the bad ones under "skip") and the report.

  Raises DataError under "error" naming the first bad record: its shard file and index there.
  """
  if policy not in POLICIES:
    raise ValueError(f"invalid-record policy {policy!r} not in {POLICIES}")
  checked = [f for f in spec.fields if (f.values or f.id_bounds is not None) and f.record_field in records.dtype.names]
  if not checked:
    return records, ValidationReport(split, len(records), len(records), {})
  keep = np.ones(len(records), bool)
  counts: dict[str, int] = {}
  for shard, (offset, shard_records) in enumerate(zip(records.offsets, records.shards)):
    for start in range(0, len(shard_records), CHUNK_RECORDS):
      chunk = shard_records[start:start + CHUNK_RECORDS]  # A view of the memmap: no gather.
      for field in checked:
        bad, reason = _bad_values(field, np.asarray(chunk[field.record_field]))
        if not bad.any():
          continue
        if policy == "error":
          first = start + int(np.flatnonzero(bad)[0])
          raise DataError(_describe(field, shard_records[first], shard_files[shard], first)
                          + " (set data.invalid_records=skip to leave such records out and count them)")
        counts[reason] = counts.get(reason, 0) + int(bad.sum())
        keep[offset + start:offset + start + len(chunk)] &= ~bad
  kept = int(keep.sum())
  report = ValidationReport(split, len(records), kept, counts)
  return (records if kept == len(records) else SelectedRecords(records, np.flatnonzero(keep))), report
