"""Query lists from a table (`rankjax data table --lists`): the rows of one query id (the spec's
"qid" column, consecutive rows) become one list record, as `rankjax data letor` writes them, with
each document's categorical ids beside its dense features, for learning to rank with the
embedding engine (task `ranking`).

Record (L = max_list_size, N = dense columns, S = the categorical and sequence slots):
  relevance f4[L] (the label), features f4[L, N] (dense), mask u1[L] (1 = a document),
  cat i4[L, S] (rows as in a table record; -1 on padding documents), with raw features
  (`"raw": true`, --vocab raw) cat_hi i4[L, S] (their ids' high words, as a table record's; -1 on
  padding documents, so both words read as the padding id 2**64 - 1), qid i8.
A list keeps its first L documents in input order; the rest are dropped and counted
(`documents_truncated`, `queries_truncated`). L is the longest query of the input unless
--max-list-size caps it. A query whose rows straddle the --eval-fraction boundary stays whole
in the train split; a query id found again after other queries (rows not grouped) is an error.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from rankjax.data import layout
from rankjax.data.feature_stats import FeatureStats
from rankjax.data.writer import ShardWriter

WRITE_LISTS = 1024  # List records buffered per write.


def list_dtype(num_dense: int, slots: int, max_list_size: int, raw_ids: bool = False) -> np.dtype:
  size = max_list_size
  return np.dtype([("relevance", "<f4", (size,)), ("features", "<f4", (size, num_dense)), ("mask", "u1", (size,)),
                   ("cat", "<i4", (size, slots)), *((("cat_hi", "<i4", (size, slots)),) if raw_ids else ()),
                   ("qid", "<i8")])


def _qid_batches(path: pathlib.Path, column: str, is_parquet: bool):
  if is_parquet:
    yield from (b.column(0) for b in pq.ParquetFile(path).iter_batches(columns=[column]))
    return
  reader = pa_csv.open_csv(path, convert_options=pa_csv.ConvertOptions(include_columns=[column],
                                                                       column_types={column: pa.string()}))
  yield from (b.column(0) for b in reader)


def longest_query(files: Sequence[pathlib.Path], column: str, is_parquet) -> int:
  """The most consecutive rows sharing a value of `column` in any of `files` (a pass over that column)."""
  longest = 0
  for path in files:
    previous, run = None, 0
    for array in _qid_batches(path, column, is_parquet(path)):
      values = array.to_numpy(zero_copy_only=False)  # Ids, or text from CSV: compared as they are.
      if not len(values):
        continue
      starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
      lengths = np.diff(np.r_[starts, len(values)])
      if values[0] == previous:  # The run goes on from the previous batch.
        lengths[0] += run
      longest = max(longest, int(lengths.max()))
      previous, run = values[-1], int(lengths[-1])
  return longest


class ListGrouper:
  """Table records of one split, in input order -> one list record per query, written to `split`."""

  def __init__(self, split: ShardWriter, dtype: np.dtype, output: pathlib.Path, stats: FeatureStats | None,
               finished: set[int] | None = None):
    self.split, self.dtype, self.output, self.stats = split, dtype, output, stats
    self.max_list_size = dtype["mask"].shape[0]
    self.qid: int | None = None  # The query being gathered.
    self.pending: list[np.ndarray] = []
    self.finished = set() if finished is None else finished  # Query ids closed (shared by the splits of one input).
    self.ready: list[np.ndarray] = []
    self.documents_truncated = self.queries_truncated = 0
    self.rows = 0  # Rows added: the documents written and those truncated.

  def leading_rows_of_current_query(self, rows: np.ndarray) -> int:
    """How many of `rows`' first rows belong to the query being gathered."""
    if self.qid is None:
      return 0
    other = np.flatnonzero(rows["qid"] != self.qid)
    return int(other[0]) if len(other) else len(rows)

  def add(self, rows: np.ndarray) -> None:
    if not len(rows):
      return
    self.rows += len(rows)
    qid = rows["qid"]
    starts = np.flatnonzero(np.r_[True, qid[1:] != qid[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(rows)]):
      query = int(qid[start])
      if query != self.qid:
        self._close_query()
        if query in self.finished:
          raise layout.DataError(f"{self.output}: query id {query} appears again after other queries: the rows of "
                                 "a query must be consecutive (sort the table by its qid column)")
        self.qid = query
      self.pending.append(rows[start:end])

  def _close_query(self) -> None:
    if self.qid is None:
      return
    rows = np.concatenate(self.pending)
    kept = rows[:self.max_list_size]
    record = np.zeros(1, self.dtype)
    record["relevance"][0, :len(kept)] = kept["label"] if kept["label"].ndim == 1 else kept["label"][:, 0]
    record["features"][0, :len(kept)] = kept["dense"]
    record["mask"][0, :len(kept)] = 1
    for field in ("cat", "cat_hi") if "cat_hi" in self.dtype.names else ("cat",):
      record[field][0] = -1
      record[field][0, :len(kept)] = kept[field]
    record["qid"] = self.qid
    if self.stats is not None:
      self.stats.add(kept["dense"])
    dropped = len(rows) - len(kept)
    self.documents_truncated += dropped
    self.queries_truncated += dropped > 0
    self.ready.append(record)
    self.finished.add(self.qid)
    self.qid, self.pending = None, []
    if len(self.ready) >= WRITE_LISTS:
      self._write()

  def _write(self) -> None:
    if self.ready:
      self.split.write(np.concatenate(self.ready))
      self.ready = []

  def finish(self) -> None:
    self._close_query()
    self._write()
