"""Parallel ingestion: input files cut into units of whole lines (byte ranges of a plain file; a
gzip file is one unit), converted by worker processes: where every unit's records have known
places (Criteo in strict mode) the workers write them into the sized shards and the parent only
hashes them in order; otherwise into temporary record files the parent copies in input order.
Either way the output is byte-identical to one worker's (same shards, same checksums, same row
accounting).

Workers are forked, so what the parent built before the pool (a vocabulary) is theirs without
copying; they return small JSON-able summaries and write records to files, never through pipes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

UNIT_BYTES = 32 << 20  # Plain files are cut about every 32 MiB, at the next line start.
COPY_RECORDS = 1 << 16  # Records copied from a worker's file at a time: bounded memory.


@dataclasses.dataclass(frozen=True)
class Unit:
  """A run of whole lines: byte_range of a plain file, or the whole file (None)."""
  path: pathlib.Path
  byte_range: tuple[int, int] | None
  first_in_file: bool  # Its first line is the file's line 1.


def _next_line_start(f, offset: int, size: int) -> int:
  """The offset just after the first '\\n' at or after `offset` (or `size`)."""
  f.seek(offset)
  while offset < size:
    chunk = f.read(1 << 16)
    newline = chunk.find(b"\n")
    if newline >= 0:
      return offset + newline + 1
    offset += len(chunk)
  return size


def cut_units(files: Sequence[pathlib.Path], is_compressed: Callable[[pathlib.Path], bool],
              unit_bytes: int | None = None) -> list[Unit]:
  """Every file as units of whole lines (about `unit_bytes`, default UNIT_BYTES), in input order."""
  unit_bytes = unit_bytes or UNIT_BYTES
  units = []
  for path in files:
    size = path.stat().st_size
    if is_compressed(path) or size <= unit_bytes:
      units.append(Unit(path, None, True))
      continue
    with open(path, "rb") as f:
      starts = [0]
      while True:
        nxt = _next_line_start(f, starts[-1] + unit_bytes, size)
        if nxt >= size:
          break
        starts.append(nxt)
    units += [Unit(path, (a, b), a == 0) for a, b in zip(starts, starts[1:] + [size])]
  return units


def workers_default() -> int:
  """All the cores this process may use."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def map_in_order(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> Iterator[Any]:
  """fn over jobs in forked worker processes, results in job order (as they complete in order)."""
  context = multiprocessing.get_context("fork")
  with context.Pool(min(workers, len(jobs))) as pool:
    yield from pool.imap(fn, jobs)


def copy_records(path: pathlib.Path, dtype: np.dtype, write: Callable[[np.ndarray], None]) -> int:
  """Streams a worker's record file into `write`, then deletes it; returns the record count."""
  total = 0
  with open(path, "rb") as f:
    while True:
      records = np.fromfile(f, dtype, count=COPY_RECORDS)
      if not len(records):
        break
      write(records)
      total += len(records)
  path.unlink()
  return total
