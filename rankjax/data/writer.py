"""Streaming writer of the fixed-width layout: records go to shard files as they arrive, each
shard's sha256 is computed while writing, and the manifest is written last, atomically.

A crash at any point leaves no manifest for incomplete data: an existing dataset in the output
directory loses its manifest before the first new byte is written. `IngestStats` carries the
row accounting every ingester records (rows read = written + skipped, skips counted by reason).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pathlib
import shutil
from typing import Any

import numpy as np

from rankjax.data import layout

DEFAULT_RECORDS_PER_SHARD = 1 << 21  # ~335 MB of Criteo-shaped (160 B) records.
# Present while a writer owns the directory; an interrupted run leaves it, and the next run may
# then clear the directory.
INCOMPLETE_MARKER = ".rankjax-incomplete"
EXCERPT_CHARS = 80


class IngestError(layout.DataError):
  """A malformed input row or file, as one line: `FILE:LINE: reason: excerpt`."""

  def __init__(self, file: str, line: int, reason: str, excerpt: str):
    self.file, self.line, self.reason, self.excerpt = file, line, reason, excerpt
    super().__init__(f"{file}:{line}: {reason}: {excerpt}")


def excerpt(text: str | bytes, limit: int = EXCERPT_CHARS) -> str:
  """`text` as one printable line of at most `limit` characters (repr-escaped, cut with '...')."""
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  shown = repr(text)
  return shown if len(shown) <= limit else shown[:limit - 3] + "..."


@dataclasses.dataclass
class IngestStats:
  """Rows seen by an ingester and what became of them, and the error policy.

  strict: the first malformed row or file raises IngestError; otherwise it is skipped and
  counted. `skipped_by_reason` counts skipped rows by reason (it sums to rows_skipped);
  `file_errors` lists whole-file problems (an empty file, a truncated gzip) with the file and the
  line where each was noticed.
  """
  strict: bool = True
  rows_read: int = 0
  rows_skipped: int = 0
  skipped_by_reason: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  file_errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def reject_rows(self, file: str, line: int, reason: str, text: str, rows: int = 1) -> None:
    """`rows` malformed rows, the first at `line`: raises (strict) or counts them as skipped."""
    if self.strict:
      raise IngestError(file, line, reason, text)
    self.rows_skipped += rows
    self.skipped_by_reason[reason] += rows

  def reject_file(self, file: str, line: int, reason: str, text: str) -> None:
    """A problem with a whole file (empty, truncated): raises (strict) or records it."""
    if self.strict:
      raise IngestError(file, line, reason, text)
    self.file_errors.append({"file": file, "line": line, "reason": reason})

  def as_worker_result(self) -> dict[str, Any]:
    """What an ingest worker process returns of its counts (merged by `merge_worker_result`)."""
    return {"rows_read": self.rows_read, "skipped_by_reason": dict(self.skipped_by_reason),
            "file_errors": self.file_errors}

  def merge_worker_result(self, result: dict[str, Any]) -> None:
    """Adds a worker's counts; a worker's strict-mode error ({"error": [file, line, reason,
    excerpt]}) is raised here, so the first in input order wins, as with one worker."""
    if "error" in result:
      raise IngestError(*result["error"])
    self.rows_read += result["rows_read"]
    for reason, n in result["skipped_by_reason"].items():
      self.rows_skipped += n
      self.skipped_by_reason[reason] += n
    self.file_errors.extend(result["file_errors"])

  def summary(self) -> str:
    """One line for the log: the skipped rows by reason and the file errors."""
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped_by_reason.items()))
    files = "; ".join(f"{e['file']}: {e['reason']}" for e in self.file_errors)
    return (f"read {self.rows_read} rows, skipped {self.rows_skipped}" + (f" ({reasons})" if reasons else "")
            + (f"; file errors: {files}" if files else ""))


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:05d}.bin"


def write_records_at(directory: pathlib.Path, split: str, max_records_per_shard: int, first: int,
                     records: np.ndarray) -> None:
  """Writes `records` as records first.. of a split whose shards ShardWriter.preallocate sized
  (from any process: the writer hashes them later)."""
  if not len(records):
    return
  data = np.ascontiguousarray(records).view(np.uint8).reshape(len(records), -1)
  done = 0
  while done < len(records):
    index, offset = divmod(first + done, max_records_per_shard)
    take = min(len(records) - done, max_records_per_shard - offset)
    view, position = memoryview(data[done:done + take]).cast("B"), offset * data.shape[1]
    fd = os.open(directory / shard_name(split, index), os.O_WRONLY)
    try:
      while len(view):
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written
    finally:
      os.close(fd)
    done += take


class ShardWriter:
  """One split's records, written in order to `{split}-NNNNN.bin` files of at most
  `max_records_per_shard` records each."""

  def __init__(self, directory: pathlib.Path, split: str, dtype: np.dtype, max_records_per_shard: int):
    self.directory, self.split, self.dtype = directory, split, dtype
    self.max_records_per_shard = max_records_per_shard
    self.shards: list[dict[str, Any]] = []
    self._file, self._name, self._hash, self._in_shard = None, "", None, 0
    self._placed: int | None = None  # preallocate()'s record count; then records hashed so far.
    self._hashed = 0

  @property
  def num_records(self) -> int:
    return sum(s["num_records"] for s in self.shards) + self._in_shard

  def _open_shard(self) -> None:
    name = shard_name(self.split, len(self.shards))
    self._file = open(self.directory / name, "wb")
    self._name, self._hash, self._in_shard = name, hashlib.sha256(), 0

  def _close_shard(self) -> None:
    self._file.flush()
    os.fsync(self._file.fileno())
    self._file.close()
    self.shards.append({"file": self._name, "num_records": self._in_shard, "sha256": self._hash.hexdigest()})
    self._file, self._in_shard = None, 0

  def write(self, records: np.ndarray) -> None:
    """Appends records (of this writer's dtype) to the split."""
    if records.dtype != self.dtype:
      raise TypeError(f"split {self.split}: records have dtype {records.dtype}, expected {self.dtype}")
    start = 0
    while start < len(records):
      if self._file is None:
        self._open_shard()
      take = min(len(records) - start, self.max_records_per_shard - self._in_shard)
      data = np.ascontiguousarray(records[start:start + take]).view(np.uint8)
      self._file.write(data)
      self._hash.update(data)
      self._in_shard += take
      start += take
      if self._in_shard == self.max_records_per_shard:
        self._close_shard()

  # ---- Records placed by other processes (parallel ingestion that knows every record's index
  # before parsing): the shard files are sized first, filled in any order by `write_records_at`,
  # then hashed in record order as the parts complete.

  def preallocate(self, num_records: int) -> None:
    """Creates the shard files for exactly `num_records` records, to be filled by write_records_at."""
    if self.shards or self._file is not None or self._placed is not None:
      raise RuntimeError(f"split {self.split}: preallocate must come before any record")
    for index, first in enumerate(range(0, num_records, self.max_records_per_shard)):
      with open(self.directory / shard_name(self.split, index), "wb") as f:
        f.truncate(min(self.max_records_per_shard, num_records - first) * self.dtype.itemsize)
    self._placed = num_records

  def hash_placed(self, num_records: int, chunk_bytes: int = 1 << 22) -> None:
    """Hashes the placed records before index `num_records` (written by then), recording each
    shard whose records are all hashed, as `write` would have."""
    if self._placed is None or num_records > self._placed:
      raise RuntimeError(f"split {self.split}: {num_records} records to hash, {self._placed} placed")
    per_shard, itemsize = self.max_records_per_shard, self.dtype.itemsize
    while self._hashed < num_records:
      index, offset = divmod(self._hashed, per_shard)
      if offset == 0:
        self._hash = hashlib.sha256()
      shard_end = min((index + 1) * per_shard, self._placed)
      take = min(num_records, shard_end) - self._hashed
      name = shard_name(self.split, index)
      with open(self.directory / name, "rb", buffering=0) as f:
        f.seek(offset * itemsize)
        buffer = bytearray(chunk_bytes)
        left = take * itemsize
        while left:
          n = f.readinto(memoryview(buffer)[:min(left, chunk_bytes)])
          if not n:
            raise RuntimeError(f"{self.directory / name}: shorter than its placed records")
          self._hash.update(memoryview(buffer)[:n])
          left -= n
        self._hashed += take
        if self._hashed == shard_end:
          os.fsync(f.fileno())
          self.shards.append({"file": name, "num_records": shard_end - index * per_shard,
                              "sha256": self._hash.hexdigest()})

  def close(self) -> dict[str, Any]:
    """Closes the last shard; returns the split's manifest entry."""
    if self._placed is not None and self._hashed != self._placed:
      raise RuntimeError(f"split {self.split}: {self._hashed} of {self._placed} placed records hashed")
    if self._file is not None:
      self._close_shard()
    return {"num_records": self.num_records, "shards": list(self.shards)}

  def abandon(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


class DatasetWriter:
  """A dataset directory being written. Use as a context manager; `finish` writes the manifest.

  The output directory must be absent, empty, hold a rankjax dataset (replaced: its manifest is
  removed first, then the files it lists) or an interrupted writer's output (cleared). Anything
  else is refused, so a mistyped path never deletes a user's files.
  """

  def __init__(self, directory: str | pathlib.Path, dtype: np.dtype,
               max_records_per_shard: int = DEFAULT_RECORDS_PER_SHARD):
    if max_records_per_shard < 1:
      raise ValueError(f"--max-records-per-shard must be >= 1, got {max_records_per_shard}")
    self.directory = pathlib.Path(directory)
    self.dtype = dtype
    self.max_records_per_shard = max_records_per_shard
    self.splits: dict[str, ShardWriter] = {}
    self.files: dict[str, dict[str, Any]] = {}
    self._clear_output()

  def _clear_output(self) -> None:
    d = self.directory
    if d.exists() and not d.is_dir():
      raise layout.DataError(f"{d}: output exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    entries = {p.name for p in d.iterdir()}
    if layout.MANIFEST in entries:
      try:
        old = layout.read_manifest(d)
        old_files = [s["file"] for split in old["splits"] for s in layout.split_shards(old, split)]
        old_files += [f["file"] for f in old.get("files", {}).values()]
      except (layout.DataError, KeyError, TypeError):
        old_files = []
      (d / layout.MANIFEST).unlink()  # First: from here on the directory is not a dataset.
      for name in old_files + [layout.VERIFIED_STAMP]:
        path = (d / name).resolve()
        if d.resolve() in path.parents:
          path.unlink(missing_ok=True)
          if path.parent != d.resolve() and not any(path.parent.iterdir()):
            path.parent.rmdir()  # An emptied subdirectory (vocab/).
    elif INCOMPLETE_MARKER in entries:  # An interrupted earlier run: everything here is its output.
      for path in d.iterdir():
        if path.is_dir() and not path.is_symlink():
          shutil.rmtree(path)
        else:
          path.unlink()
    elif entries:
      raise layout.DataError(f"{d}: output directory is not empty and holds no rankjax dataset; "
                             "choose an empty or new directory")
    (d / INCOMPLETE_MARKER).touch()

  def split(self, name: str) -> ShardWriter:
    """The writer of split `name` (created on first use)."""
    if name not in self.splits:
      self.splits[name] = ShardWriter(self.directory, name, self.dtype, self.max_records_per_shard)
    return self.splits[name]

  def write_array(self, key: str, relative_path: str, array: np.ndarray) -> None:
    """A side file (a vocabulary, ...): raw little-endian bytes of `array`, listed in the manifest
    under files[key] with dtype, shape and sha256."""
    path = self.directory / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(array)
    with open(path, "wb") as f:
      f.write(data.view(np.uint8).reshape(-1))
      f.flush()
      os.fsync(f.fileno())
    self.files[key] = {"file": relative_path, "dtype": data.dtype.str, "shape": list(data.shape),
                       "sha256": hashlib.sha256(data.view(np.uint8).reshape(-1)).hexdigest()}

  def finish(self, stats: IngestStats, rows_written: int | None = None, **extra: Any) -> dict[str, Any]:
    """Closes every split and writes the manifest (with the row accounting); returns it.
    `rows_written`: the input rows the records hold, where a record holds several (query lists)."""
    splits = {name: w.close() for name, w in self.splits.items()}
    written = sum(entry["num_records"] for entry in splits.values()) if rows_written is None else rows_written
    if stats.rows_read != written + stats.rows_skipped:
      raise RuntimeError(f"row accounting broken: read {stats.rows_read} != written {written} "
                         f"+ skipped {stats.rows_skipped}")
    ingest = {"rows_read": stats.rows_read, "rows_written": written, "rows_skipped": stats.rows_skipped,
              "skipped_by_reason": dict(sorted(stats.skipped_by_reason.items())),
              "file_errors": list(stats.file_errors)}
    if self.files:
      extra["files"] = dict(self.files)
    manifest = layout.write_manifest(self.directory, self.dtype, splits, ingest=ingest, **extra)
    (self.directory / INCOMPLETE_MARKER).unlink(missing_ok=True)
    return manifest

  def __enter__(self) -> "DatasetWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      for w in self.splits.values():
        w.abandon()
