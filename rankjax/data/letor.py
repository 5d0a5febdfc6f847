"""LETOR/SVMlight ranking data (`rel qid:Q id:value ... # comment`) into the fixed-width layout,
one record per query list, streamed a query at a time; bad lines raised or skipped and counted.

Input: one document per line; CRLF line ends and anything after '#' are ignored, as are blank and
comment-only lines (counted, not rows). Relevance is a finite number, Q an int64, feature ids are
1-based integers, strictly increasing within a line (as SVMlight requires), at most N (given) or
MAX_FEATURES (inferred); a feature that is absent is 0. A query's lines must be contiguous in the concatenation of a split's files (files in
the order given), as in MSLR-WEB and LETOR 4.0: a qid that reappears after another is an error.

Record (one query list, L = max_list_size, N = num_features):
  relevance float32[L], features float32[L, N], mask uint8[L] (1: a document, 0: padding),
  qid int64.
A list's first L documents are kept in file order; the rest are dropped and counted
(`documents_truncated`), shorter lists are padded with zeros and mask 0. N and L default to the
largest feature id and the longest list of the input (train and eval files), which takes one
extra parsing pass.

Manifest, besides the layout's keys:
  num_features, max_list_size
  feature_stats   {"count", "mean", "std", "min", "max"}: per feature, over the documents written
                  to the train split (absent features as 0); std is the population std (ddof 0),
                  accumulated in float64 with Chan et al.'s pairwise update, one query at a time
  ingest          a row is a document (an input line that is not blank or comment-only):
                  rows_read = rows_written + rows_skipped + documents_truncated;
                  skipped_by_reason, file_errors as for every ingester; queries_written (= the
                  records of all splits), queries_truncated, blank_or_comment_lines
  source          {"kind": "letor", "files", "eval_files", "on_error", "num_features_given",
                   "max_list_size_given"}
Memory: one query's first L documents, the write buffer, and the set of qids seen (to detect a
query that is not contiguous): 8 bytes or so per query, not per document.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import pathlib
from collections.abc import Iterator, Sequence
import numpy as np

from rankjax.data import layout
from rankjax.data.criteo import EMPTY_FILE, LONG_LINE, MAX_LINE_BYTES
from rankjax.data.feature_stats import FeatureStats
from rankjax.data.writer import INCOMPLETE_MARKER, DatasetWriter, IngestStats, ShardWriter, excerpt

BAD_RELEVANCE, MISSING_QID, BAD_QID = "bad relevance", "missing qid", "bad qid"
BAD_FEATURE, FEATURE_OUT_OF_RANGE = "bad feature token", "feature id out of range"
NON_CONTIGUOUS_QUERY = "non-contiguous query"
SHARD_BYTES = 1 << 28  # Default shard size; a record of 200 documents x 136 features is ~110 KB.
WRITE_BUFFER_BYTES = 1 << 23
MAX_FEATURES = 1 << 16  # A record holds every feature of L documents densely; no ranking set nears this.
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# "1", "2", ...: a line whose ids are exactly 1..n (dense LETOR files) skips parsing them.
_ID_TEXT = [str(i) for i in range(1, 1025)]


def record_dtype(num_features: int, max_list_size: int) -> np.dtype:
  """One query list: relevance[L], features[L, N], mask[L] (1 = a document), qid."""
  return np.dtype([("relevance", "<f4", (max_list_size,)), ("features", "<f4", (max_list_size, num_features)),
                   ("mask", "u1", (max_list_size,)), ("qid", "<i8")])


@dataclasses.dataclass(frozen=True)
class LetorOptions:
  num_features: int | None = None  # None: the largest feature id in the input.
  max_list_size: int | None = None  # None: the longest query list in the input.
  strict: bool = True  # The first malformed line stops the conversion; otherwise skipped and counted.
  eval_inputs: tuple[pathlib.Path, ...] = ()  # Files of an eval split; none: only a train split.
  validation_inputs: tuple[pathlib.Path, ...] = ()  # Files of a validation split (e.g. MSLR's vali.txt).
  max_records_per_shard: int | None = None  # None: shards of about SHARD_BYTES.


@dataclasses.dataclass(frozen=True)
class Document:
  qid: int
  relevance: float
  ids: np.ndarray  # (k,) int64 feature ids, 0-based, increasing.
  values: np.ndarray  # (k,) float32


class BadLine(Exception):
  """Why a line is not a document: a reason (counted in skip mode) and an excerpt."""

  def __init__(self, reason: str, text: str):
    super().__init__(f"{reason}: {text}")
    self.reason, self.excerpt = reason, excerpt(text)


def _first_bad_feature(tokens: Sequence[str], num_features: int) -> BadLine:
  """The first offending `id:value` token of a line the fast path rejected, checked one by one."""
  previous = 0
  for token in tokens:
    id_text, colon, value_text = token.partition(":")
    try:
      if not colon or ":" in value_text:
        raise ValueError
      feature_id, value = int(id_text), float(value_text)
    except ValueError:
      return BadLine(BAD_FEATURE, token)
    if not math.isfinite(value):
      return BadLine(BAD_FEATURE, f"{token} (not finite)")
    if feature_id < 1:
      return BadLine(BAD_FEATURE, f"{token} (feature ids start at 1)")
    if feature_id <= previous:
      return BadLine(BAD_FEATURE, f"{token} after feature {previous} (ids must increase)")
    if feature_id > num_features:
      return BadLine(FEATURE_OUT_OF_RANGE, f"{token} (num_features {num_features})")
    previous = feature_id
  raise AssertionError(f"no bad token in a line the fast path rejected: {' '.join(tokens)[:200]}")


def parse_line(text: str, num_features: int) -> Document:
  """One document from a line without its comment and line end; raises BadLine. Feature ids
  over `num_features` are out of range."""
  tokens = text.split(None, 2)
  try:
    relevance = float(tokens[0])
  except ValueError:
    raise BadLine(BAD_RELEVANCE, f"relevance={tokens[0]}") from None
  if not math.isfinite(relevance):
    raise BadLine(BAD_RELEVANCE, f"relevance={tokens[0]}")
  if len(tokens) < 2 or not tokens[1].startswith("qid:"):
    raise BadLine(MISSING_QID, text)
  try:
    qid = int(tokens[1][4:])
  except ValueError:
    raise BadLine(BAD_QID, tokens[1]) from None
  if not _INT64_MIN <= qid <= _INT64_MAX:
    raise BadLine(BAD_QID, f"{tokens[1]} (outside int64)")
  features = tokens[2].split() if len(tokens) == 3 else []
  # Fast path: "a:b c:d" -> [a, b, c, d]; each token must hold exactly one ':'.
  flat = ":".join(features).split(":") if features else []
  try:
    if len(flat) != 2 * len(features) or not all(":" in t for t in features):
      raise ValueError
    id_text = flat[0::2]
    ids = (np.arange(1, len(id_text) + 1) if id_text == _ID_TEXT[:len(id_text)]
           else np.array(id_text, dtype=np.int64))
    values = np.array(flat[1::2], dtype=np.float64)
  except (ValueError, OverflowError):
    raise _first_bad_feature(features, num_features) from None
  if len(ids) and (ids[0] < 1 or not np.isfinite(values).all() or (np.diff(ids) <= 0).any()
                   or ids[-1] > num_features):
    raise _first_bad_feature(features, num_features)
  return Document(qid, relevance, ids - 1, values.astype(np.float32))


def _file_lines(path: pathlib.Path, stats: IngestStats) -> Iterator[tuple[int, bytes]]:
  """(line number, bytes without the line end) of each line; a line over MAX_LINE_BYTES is read
  as a row and rejected without being held in memory."""
  with open(path, "rb") as f:
    number = 0
    while line := f.readline(MAX_LINE_BYTES + 1):
      number += 1
      if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
        stats.rows_read += 1
        stats.reject_rows(str(path), number, LONG_LINE, excerpt(line))
        while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
          pass
        continue
      yield number, line.rstrip(b"\r\n")


def documents(files: Sequence[pathlib.Path], stats: IngestStats, num_features: int,
              counts: collections.Counter) -> Iterator[Document]:
  """The valid documents of `files` in order. Malformed lines and lines of a query seen before
  (not contiguous) go to `stats`; blank and comment-only lines are counted in `counts`."""
  seen: set[int] = set()
  current = None
  for path in files:
    rows_before = stats.rows_read
    for number, line in _file_lines(path, stats):
      text = line.partition(b"#")[0].decode("utf-8", errors="replace").strip()
      if not text:
        counts["blank_or_comment_lines"] += 1
        continue
      stats.rows_read += 1
      try:
        document = parse_line(text, num_features)
      except BadLine as e:
        stats.reject_rows(str(path), number, e.reason, e.excerpt)
        continue
      if document.qid != current:
        if document.qid in seen:
          stats.reject_rows(str(path), number, NON_CONTIGUOUS_QUERY,
                            excerpt(f"query {document.qid} is not contiguous: it reappears after query {current}"))
          continue
        seen.add(document.qid)
        current = document.qid
      yield document
    if stats.rows_read == rows_before:
      stats.reject_file(str(path), 0, EMPTY_FILE, "no documents")


def _measure(split_files: Sequence[Sequence[pathlib.Path]], options: LetorOptions) -> tuple[int, int]:
  """(largest feature id, longest query list) over the valid documents of all files. Strict mode
  raises the first malformed line here; the write pass counts skips."""
  stats, counts = IngestStats(strict=options.strict), collections.Counter()
  largest_id, longest = 0, 0
  for files in split_files:
    qid, run = None, 0
    for document in documents(files, stats, options.num_features or MAX_FEATURES, counts):
      run = run + 1 if document.qid == qid else 1
      qid, longest = document.qid, max(longest, run)
      if len(document.ids):
        largest_id = max(largest_id, int(document.ids[-1]) + 1)
  return largest_id, longest


class _ListWriter:
  """Builds one split's records, a query list at a time, into a buffer written when full, and
  counts what it wrote and cut."""

  def __init__(self, split: ShardWriter, dtype: np.dtype, feature_stats: FeatureStats | None):
    self.split, self.dtype, self.feature_stats = split, dtype, feature_stats
    self.max_list_size = dtype["mask"].shape[0]
    self.capacity = max(1, WRITE_BUFFER_BYTES // dtype.itemsize)
    self.buffer, self.filled = np.zeros(self.capacity, dtype), 0
    self.documents_written = self.documents_truncated = self.queries_truncated = 0

  def add(self, kept: Sequence[Document], dropped: int) -> None:
    """One query's list: its first max_list_size documents, and how many followed them."""
    i, k = self.filled, len(kept)
    rows = np.repeat(np.arange(k), [len(d.ids) for d in kept])
    self.buffer["features"][i, rows, np.concatenate([d.ids for d in kept])] = np.concatenate([d.values for d in kept])
    self.buffer["relevance"][i, :k] = [d.relevance for d in kept]
    self.buffer["mask"][i, :k] = 1
    self.buffer["qid"][i] = kept[0].qid
    if self.feature_stats is not None:
      self.feature_stats.add(self.buffer["features"][i, :k])
    self.documents_written += k
    self.documents_truncated += dropped
    self.queries_truncated += dropped > 0
    self.filled += 1
    if self.filled == self.capacity:
      self.flush()

  def flush(self) -> None:
    self.split.write(self.buffer[:self.filled])
    self.buffer, self.filled = np.zeros(self.capacity, self.dtype), 0


def _write_lists(documents_in_order: Iterator[Document], out: _ListWriter) -> None:
  """Groups documents into query lists (a list ends where the qid changes) and writes them."""
  kept: list[Document] = []
  dropped = 0
  for document in documents_in_order:
    if kept and document.qid != kept[0].qid:
      out.add(kept, dropped)
      kept, dropped = [], 0
    if len(kept) < out.max_list_size:
      kept.append(document)
    else:
      dropped += 1
  if kept:
    out.add(kept, dropped)
  out.flush()


def _check_options(options: LetorOptions) -> None:
  for name, value in (("--num-features", options.num_features), ("--max-list-size", options.max_list_size),
                      ("--max-records-per-shard", options.max_records_per_shard)):
    if value is not None and value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")
  if options.num_features is not None and options.num_features > MAX_FEATURES:
    raise ValueError(f"--num-features must be <= {MAX_FEATURES}, got {options.num_features}")


def convert(train_files: Sequence[pathlib.Path], output: str | pathlib.Path, options: LetorOptions) -> dict:
  """Converts LETOR/SVMlight files into a dataset directory (a train split, an eval (test) split
  with `options.eval_inputs`, a validation split with `options.validation_inputs`); returns its
  manifest. Feature statistics are of the train split only.

  Raises IngestError (strict) for the first malformed line or file, DataError for unusable input.
  """
  _check_options(options)
  train_files = [pathlib.Path(p) for p in train_files]
  eval_files = [pathlib.Path(p) for p in options.eval_inputs]
  validation_files = [pathlib.Path(p) for p in options.validation_inputs]
  num_features, max_list_size = options.num_features, options.max_list_size
  if num_features is None or max_list_size is None:
    largest_id, longest = _measure((train_files, eval_files, validation_files), options)
    if num_features is None and largest_id == 0 and longest > 0:
      raise layout.DataError(f"{train_files[0]}: no feature in any document; give --num-features")
    num_features = num_features or largest_id or 1
    max_list_size = max_list_size or longest or 1
  dtype = record_dtype(num_features, max_list_size)
  stats, counts = IngestStats(strict=options.strict), collections.Counter()
  feature_stats = FeatureStats(num_features)
  records_per_shard = options.max_records_per_shard or max(1, SHARD_BYTES // dtype.itemsize)
  with DatasetWriter(output, dtype, records_per_shard) as writer:
    writers = {"train": _ListWriter(writer.split("train"), dtype, feature_stats)}
    if eval_files:
      writers["eval"] = _ListWriter(writer.split("eval"), dtype, None)
    if validation_files:
      writers["validation"] = _ListWriter(writer.split("validation"), dtype, None)
    for name, files in (("train", train_files), ("eval", eval_files), ("validation", validation_files)):
      if name in writers:
        _write_lists(documents(files, stats, num_features, counts), writers[name])
        if writers[name].split.num_records == 0:
          raise layout.DataError(f"{output}: the {name} split would be empty ({stats.summary()})")
    written = sum(w.documents_written for w in writers.values())
    truncated = sum(w.documents_truncated for w in writers.values())
    if stats.rows_read != written + stats.rows_skipped + truncated:
      raise RuntimeError(f"row accounting broken: read {stats.rows_read} != written {written} "
                         f"+ skipped {stats.rows_skipped} + truncated {truncated}")
    ingest = {"rows_read": stats.rows_read, "rows_written": written, "rows_skipped": stats.rows_skipped,
              "documents_truncated": truncated, "skipped_by_reason": dict(sorted(stats.skipped_by_reason.items())),
              "file_errors": list(stats.file_errors),
              "queries_written": sum(w.split.num_records for w in writers.values()),
              "queries_truncated": sum(w.queries_truncated for w in writers.values()),
              "blank_or_comment_lines": counts["blank_or_comment_lines"]}
    source = {"kind": "letor", "files": [str(p) for p in train_files], "eval_files": [str(p) for p in eval_files],
              **({"validation_files": [str(p) for p in validation_files]} if validation_files else {}),
              "on_error": "strict" if options.strict else "skip",
              "num_features_given": options.num_features is not None,
              "max_list_size_given": options.max_list_size is not None}
    # DatasetWriter.finish counts one input row per record; here a record is a list of documents.
    splits = {name: split.close() for name, split in writer.splits.items()}
    manifest = layout.write_manifest(writer.directory, dtype, splits, ingest=ingest, num_features=num_features,
                                     max_list_size=max_list_size, feature_stats=feature_stats.as_dict(),
                                     source=source)
    (writer.directory / INCOMPLETE_MARKER).unlink(missing_ok=True)
  return manifest
