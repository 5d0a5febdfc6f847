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

Eval split: the eval files, or (`eval_fraction` F) the train files' queries whose qid hashes below
F (hash_to_rows(qid, 2**30, salt EVAL_SALT) < F * 2**30): whole lists, about F of the queries,
the same ones whatever the file order or worker count, and the same qid always on the same side.

Manifest, besides the layout's keys:
  num_features, max_list_size
  feature_stats   {"count", "mean", "std", "min", "max"}: per feature, over the documents written
                  to the train split (absent features as 0); std is the population std (ddof 0),
                  accumulated in float64 with Chan et al.'s pairwise update, one query at a time
  ingest          a row is a document (an input line that is not blank or comment-only):
                  rows_read = rows_written + rows_skipped + documents_truncated;
                  skipped_by_reason, file_errors as for every ingester; queries_written (= the
                  records of all splits), queries_truncated, blank_or_comment_lines
  source          {"kind": "letor", "files", "eval_files", "eval_fraction", "on_error",
                   "num_features_given", "max_list_size_given"}
Memory: one query's first L documents, the write buffer, and the set of qids seen (to detect a
query that is not contiguous): 8 bytes or so per query, not per document.

Workers (`workers` > 1, rankjax.data.parallel): processes parse byte ranges of the files (cut at
line starts) into scratch files of parsed documents; the parent replays them in input order
through the same contiguity rule and list grouping, so a query that spans two ranges, the row
accounting and the first strict-mode error are those of one worker, and the dataset is byte for
byte the same.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
import numpy as np

from rankjax.data import layout, parallel
from rankjax.data.criteo import EMPTY_FILE, LONG_LINE, MAX_LINE_BYTES, count_lines
from rankjax.data.feature_stats import FeatureStats
from rankjax.data.hashing import hash_to_rows
from rankjax.data.writer import INCOMPLETE_MARKER, DatasetWriter, IngestError, IngestStats, ShardWriter, excerpt

BAD_RELEVANCE, MISSING_QID, BAD_QID = "bad relevance", "missing qid", "bad qid"
BAD_FEATURE, FEATURE_OUT_OF_RANGE = "bad feature token", "feature id out of range"
NON_CONTIGUOUS_QUERY = "non-contiguous query"
SHARD_BYTES = 1 << 28  # Default shard size; a record of 200 documents x 136 features is ~110 KB.
WRITE_BUFFER_BYTES = 1 << 23
MAX_FEATURES = 1 << 16  # A record holds every feature of L documents densely; no ranking set nears this.
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# "1", "2", ...: a line whose ids are exactly 1..n (dense LETOR files) skips parsing them.
_ID_TEXT = [str(i) for i in range(1, 1025)]
_COLON = itertools.repeat(":")


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
  eval_fraction: float | None = None  # Instead of eval_inputs: about this fraction of the train queries.
  max_records_per_shard: int | None = None  # None: shards of about SHARD_BYTES.
  workers: int = 1  # Processes parsing byte ranges in parallel (rankjax.data.parallel); the output is the same.


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
    if len(flat) != 2 * len(features) or not all(map(str.__contains__, features, _COLON)):
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


def _file_lines(path: pathlib.Path, byte_range: tuple[int, int] | None = None,
                first_line: int = 1) -> Iterator[tuple[int, bytes]]:
  """(line number, bytes without the line end) of each line of the file or of `byte_range` (which
  starts at line `first_line`); a line over MAX_LINE_BYTES is a BadLine, never held in memory."""
  with open(path, "rb") as f:
    start, end = byte_range or (0, path.stat().st_size)
    f.seek(start)
    position, number = start, first_line - 1
    while position < end and (line := f.readline(min(MAX_LINE_BYTES + 1, end - position))):
      position += len(line)
      number += 1
      if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
        yield number, BadLine(LONG_LINE, line.decode("utf-8", errors="replace"))
        while position < end and (rest := f.readline(min(MAX_LINE_BYTES, end - position))):
          position += len(rest)
          if rest.endswith(b"\n"):
            break
        continue
      yield number, line.rstrip(b"\r\n")


DOCUMENT_CHUNK = 4096  # Documents parsed, handed on and replayed at a time.


def document_dtype(num_features: int | None) -> np.dtype:
  """A parsed document: its line, qid, relevance and 1 + its largest feature id (0: none), with its
  features densely when the feature count is known (the write pass; the measuring pass has none)."""
  fields = [("line", "<i8"), ("qid", "<i8"), ("relevance", "<f4"), ("width", "<i4")]
  return np.dtype(fields + ([("features", "<f4", (num_features,))] if num_features else []))


def parsed_documents(path: pathlib.Path, stats: IngestStats, counts: collections.Counter,
                     num_features: int | None, dense: bool, byte_range: tuple[int, int] | None = None,
                     first_line: int = 1) -> Iterator[np.ndarray]:
  """The well-formed documents of a file (or a byte range of one starting at line `first_line`) in
  chunks of `document_dtype(num_features if dense else None)`, in line order. Malformed lines go to `stats` (strict:
  raised once the documents before them are yielded); blank and comment-only lines are counted in
  `counts`. Feature ids over `num_features` (MAX_FEATURES when None) are out of range."""
  dtype = document_dtype(num_features if dense else None)
  chunk, filled = np.zeros(DOCUMENT_CHUNK, dtype), 0
  for number, line in _file_lines(path, byte_range, first_line):
    text = line.partition(b"#")[0].decode("utf-8", errors="replace").strip() if isinstance(line, bytes) else "-"
    if not text:
      counts["blank_or_comment_lines"] += 1
      continue
    stats.rows_read += 1
    try:
      if isinstance(line, BadLine):
        raise line
      document = parse_line(text, num_features or MAX_FEATURES)
    except BadLine as e:
      if filled and stats.strict:
        yield chunk[:filled]
        filled = 0
      stats.reject_rows(str(path), number, e.reason, e.excerpt)
      continue
    row = chunk[filled]
    row["line"], row["qid"], row["relevance"] = number, document.qid, document.relevance
    row["width"] = int(document.ids[-1]) + 1 if len(document.ids) else 0
    if dense:
      row["features"][document.ids] = document.values
    filled += 1
    if filled == DOCUMENT_CHUNK:
      yield chunk
      chunk, filled = np.zeros(DOCUMENT_CHUNK, dtype), 0
  if filled:
    yield chunk[:filled]


class _QueryOrder:
  """A split's rule that a query's lines are contiguous: a document whose qid was seen before,
  under another query since, is malformed (it is rejected and the current query goes on)."""

  def __init__(self, stats: IngestStats):
    self.stats, self.seen, self.current = stats, set(), None

  def accept(self, path: pathlib.Path, documents: np.ndarray) -> np.ndarray:
    """The documents (in input order) that keep their query contiguous."""
    if not len(documents):
      return documents
    qids = documents["qid"]
    starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]])
    keep = np.ones(len(documents), bool)
    for begin, end in zip(starts.tolist(), np.r_[starts[1:], len(qids)].tolist()):
      qid = int(qids[begin])
      if qid == self.current:
        continue
      if qid in self.seen:
        keep[begin:end] = False
        self.stats.reject_rows(str(path), int(documents["line"][begin]), NON_CONTIGUOUS_QUERY,
                               excerpt(f"query {qid} is not contiguous: it reappears after query {self.current}"),
                               rows=end - begin)
        continue
      self.seen.add(qid)
      self.current = qid
    return documents[keep]


class _Lists:
  """Groups accepted documents, in order, into query lists (a list ends where the qid changes):
  each list's first `max_list_size` documents and how many followed them go to `emit`."""

  def __init__(self, max_list_size: int, emit):
    self.max_list_size, self.emit = max_list_size, emit
    self.qid, self.parts, self.kept, self.dropped = None, [], 0, 0

  def add(self, documents: np.ndarray) -> None:
    if not len(documents):
      return
    qids = documents["qid"]
    starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]])
    for begin, end in zip(starts.tolist(), np.r_[starts[1:], len(qids)].tolist()):
      if self.parts and qids[begin] != self.qid:
        self.finish()
      self.qid = qids[begin]
      take = min(end - begin, self.max_list_size - self.kept)
      if take:
        self.parts.append(documents[begin:begin + take])
        self.kept += take
      self.dropped += end - begin - take

  def finish(self) -> None:
    if self.parts:
      self.emit(np.concatenate(self.parts), self.dropped)
    self.qid, self.parts, self.kept, self.dropped = None, [], 0, 0


@dataclasses.dataclass(frozen=True)
class _Job:
  """A run of whole lines of one split's file (rankjax.data.parallel) and its first line's number."""
  split: str
  unit: parallel.Unit
  index: int
  first_line: int


def _split_chunks(split_files: dict[str, Sequence[pathlib.Path]], options: LetorOptions,
                  num_features: int | None, dense: bool, stats: IngestStats, counts: collections.Counter,
                  scratch_parent: pathlib.Path
                  ) -> Iterator[tuple[str, pathlib.Path, bool, Iterator[np.ndarray]]]:
  """(split, file, whether it is the file's last part, its parsed documents in chunks) in input
  order: parsed here with one worker (or one part), else by `options.workers` processes over byte
  ranges, each part's counts merged (and a strict-mode error raised) after its documents."""
  # Parts of ~1/4 of a worker's share (>= 1 MiB): the text is parsed line by line in Python, so
  # even parts keep every worker busy to the end.
  total = sum(path.stat().st_size for files in split_files.values() for path in files)
  unit_bytes = min(parallel.UNIT_BYTES, max(1 << 20, total // (4 * options.workers)))
  # Inputs under a part's minimum (1 MiB) parse faster here than a pool of processes starts.
  worth_it = options.workers > 1 and total > min(parallel.UNIT_BYTES, 1 << 20)
  units = [(split, unit) for split, files in split_files.items()
           for unit in parallel.cut_units(files, lambda p: False, unit_bytes)] if worth_it else []
  if len(units) < 2:
    for split, files in split_files.items():
      for path in files:
        yield split, path, True, parsed_documents(path, stats, counts, num_features, dense)
    return
  line_counts = parallel.map_in_order(_count_unit_lines, [unit for _, unit in units], options.workers)
  jobs, line = [], 1
  for index, ((split, unit), lines) in enumerate(zip(units, line_counts)):
    line = 1 if unit.first_in_file else line
    jobs.append(_Job(split, unit, index, line))
    line += lines
  scratch_parent.mkdir(parents=True, exist_ok=True)
  scratch = pathlib.Path(tempfile.mkdtemp(prefix=".rankjax-letor-", dir=scratch_parent))
  _WORKER.update(num_features=num_features, dense=dense, strict=options.strict, scratch=scratch)
  try:
    for job, result in zip(jobs, parallel.map_in_order(_parse_worker, jobs, options.workers)):
      last_part = job.unit.byte_range is None or job.unit.byte_range[1] == job.unit.path.stat().st_size
      yield job.split, job.unit.path, last_part, _worker_chunks(result, num_features if dense else None, stats, counts)
  finally:
    _WORKER.clear()
    shutil.rmtree(scratch, ignore_errors=True)


_WORKER: dict = {}  # Set by the parent before forking: num_features, strict, scratch.


def _count_unit_lines(unit: parallel.Unit) -> int:  # Module level: the pool sends it by name.
  return count_lines(unit.path, unit.byte_range)


def _parse_worker(job: _Job) -> dict:  # Module level: the pool sends it by name.
  """One part's documents into a scratch file; its counts, and a strict-mode error as data (the
  parent raises it after the part's documents, so the first error in input order wins)."""
  stats, counts = IngestStats(strict=_WORKER["strict"]), collections.Counter()
  path = _WORKER["scratch"] / f"{job.index}.bin"
  error = None
  with open(path, "wb") as f:
    try:
      for chunk in parsed_documents(job.unit.path, stats, counts, _WORKER["num_features"], _WORKER["dense"],
                                    job.unit.byte_range, job.first_line):
        f.write(chunk.tobytes())
    except IngestError as e:
      error = [e.file, e.line, e.reason, e.excerpt]
  return {"path": str(path), "blank_or_comment_lines": counts["blank_or_comment_lines"],
          **stats.as_worker_result(), **({"error": error} if error else {})}


def _worker_chunks(result: dict, num_features: int | None, stats: IngestStats,
                   counts: collections.Counter) -> Iterator[np.ndarray]:
  """A worker's documents read back in chunks, then its counts merged (raising its error)."""
  path = pathlib.Path(result["path"])
  with open(path, "rb") as f:
    while len(chunk := np.fromfile(f, document_dtype(num_features), count=DOCUMENT_CHUNK)):
      yield chunk
  path.unlink()
  counts["blank_or_comment_lines"] += result["blank_or_comment_lines"]
  stats.merge_worker_result(result)


def _each_split(split_files: dict[str, Sequence[pathlib.Path]], options: LetorOptions, num_features: int | None,
                dense: bool, stats: IngestStats, counts: collections.Counter, scratch_parent: pathlib.Path,
                on_split, on_documents) -> None:
  """Feeds every split's accepted documents, in input order, to on_documents(split, chunk), after
  on_split(split); a file without a document is a file error (raised when strict)."""
  order, rows_before = None, stats.rows_read
  for split, path, last_part, chunks in _split_chunks(split_files, options, num_features, dense, stats, counts,
                                                      scratch_parent):
    if order is None or order[0] != split:
      order = (split, _QueryOrder(stats))
      on_split(split)
    for chunk in chunks:
      on_documents(split, order[1].accept(path, chunk))
    if last_part:
      if stats.rows_read == rows_before:
        stats.reject_file(str(path), 0, EMPTY_FILE, "no documents")
      rows_before = stats.rows_read


def _measure(split_files: dict[str, Sequence[pathlib.Path]], options: LetorOptions,
             scratch_parent: pathlib.Path) -> tuple[int, int]:
  """(largest feature id, longest query list) over the valid documents of all files. Strict mode
  raises the first malformed line here; the write pass counts skips."""
  stats, counts = IngestStats(strict=options.strict), collections.Counter()
  largest = {"id": 0, "list": 0}

  def on_list(documents: np.ndarray, dropped: int) -> None:
    largest["list"] = max(largest["list"], len(documents))
    largest["id"] = max(largest["id"], int(documents["width"].max()))

  lists = {}
  def on_split(split: str) -> None:
    lists[split] = _Lists(np.iinfo(np.int64).max, on_list)

  _each_split(split_files, options, options.num_features, False, stats, counts, scratch_parent, on_split,
              lambda split, documents: lists[split].add(documents))
  for split_lists in lists.values():
    split_lists.finish()
  return largest["id"], largest["list"]


class _ListWriter:
  """Builds one split's records, a query list at a time, into a buffer written when full, and
  counts what it wrote and cut."""

  def __init__(self, split: ShardWriter, dtype: np.dtype, feature_stats: FeatureStats | None):
    self.split, self.dtype, self.feature_stats = split, dtype, feature_stats
    self.max_list_size = dtype["mask"].shape[0]
    self.capacity = max(1, WRITE_BUFFER_BYTES // dtype.itemsize)
    self.buffer, self.filled = np.zeros(self.capacity, dtype), 0
    self.documents_written = self.documents_truncated = self.queries_truncated = 0
    self.lists = _Lists(self.max_list_size, self.add)

  def add(self, documents: np.ndarray, dropped: int) -> None:
    """One query's list: its first max_list_size documents, and how many followed them."""
    i, k = self.filled, len(documents)
    self.buffer["features"][i, :k] = documents["features"]
    self.buffer["relevance"][i, :k] = documents["relevance"]
    self.buffer["mask"][i, :k] = 1
    self.buffer["qid"][i] = documents["qid"][0]
    if self.feature_stats is not None:
      self.feature_stats.add(self.buffer["features"][i, :k])
    self.documents_written += k
    self.documents_truncated += dropped
    self.queries_truncated += dropped > 0
    self.filled += 1
    if self.filled == self.capacity:
      self.flush()

  def close(self) -> None:
    self.lists.finish()
    self.flush()

  def flush(self) -> None:
    self.split.write(self.buffer[:self.filled])
    self.buffer, self.filled = np.zeros(self.capacity, self.dtype), 0


EVAL_SALT = 0x65FA1  # Which queries eval_fraction takes: a fixed hash of the qid.
_HASH_ROWS = 1 << 30


def held_out_for_eval(qid: int, fraction: float) -> bool:
  """Whether eval_fraction=`fraction` puts the query `qid` in the eval split."""
  return int(hash_to_rows(np.array([qid], np.int64), _HASH_ROWS, salt=EVAL_SALT)[0]) < fraction * _HASH_ROWS


def _check_options(options: LetorOptions) -> None:
  for name, value in (("--num-features", options.num_features), ("--max-list-size", options.max_list_size),
                      ("--max-records-per-shard", options.max_records_per_shard)):
    if value is not None and value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")
  if options.workers < 1:
    raise ValueError(f"--workers must be >= 1, got {options.workers}")
  if options.eval_fraction is not None:
    if not 0 < options.eval_fraction < 1:
      raise ValueError(f"--eval-fraction must be in (0, 1), got {options.eval_fraction}")
    if options.eval_inputs:
      raise ValueError("give --eval-input or --eval-fraction, not both")
  if options.num_features is not None and options.num_features > MAX_FEATURES:
    raise ValueError(f"--num-features must be <= {MAX_FEATURES}, got {options.num_features}")


def convert(train_files: Sequence[pathlib.Path], output: str | pathlib.Path, options: LetorOptions) -> dict:
  """Converts LETOR/SVMlight files into a dataset directory (a train split, an eval (test) split
  with `options.eval_inputs` or `options.eval_fraction`, a validation split with
  `options.validation_inputs`); returns its
  manifest. Feature statistics are of the train split only. With `options.workers` > 1, worker
  processes parse byte ranges of the files; the dataset is byte for byte the one of one worker.

  Raises IngestError (strict) for the first malformed line or file, DataError for unusable input.
  """
  _check_options(options)
  split_files = {"train": [pathlib.Path(p) for p in train_files],
                 "eval": [pathlib.Path(p) for p in options.eval_inputs],
                 "validation": [pathlib.Path(p) for p in options.validation_inputs]}
  split_files = {split: files for split, files in split_files.items() if files or split == "train"}
  num_features, max_list_size = options.num_features, options.max_list_size
  output = pathlib.Path(output)
  if num_features is None or max_list_size is None:
    # Workers' scratch: a fresh directory beside the output (which is not written yet).
    largest_id, longest = _measure(split_files, options, output.resolve().parent)
    if num_features is None and largest_id == 0 and longest > 0:
      raise layout.DataError(f"{split_files['train'][0]}: no feature in any document; give --num-features")
    num_features = num_features or largest_id or 1
    max_list_size = max_list_size or longest or 1
  dtype = record_dtype(num_features, max_list_size)
  stats, counts = IngestStats(strict=options.strict), collections.Counter()
  feature_stats = FeatureStats(num_features)
  records_per_shard = options.max_records_per_shard or max(1, SHARD_BYTES // dtype.itemsize)
  with DatasetWriter(output, dtype, records_per_shard) as writer:
    writers = {}
    names = [*split_files, *(["eval"] if options.eval_fraction is not None else [])]

    def on_split(split: str) -> None:
      writers[split] = _ListWriter(writer.split(split), dtype, feature_stats if split == "train" else None)
      if split == "train" and options.eval_fraction is not None:  # The train files' lists, routed by qid.
        on_split("eval")
        fraction, train, evaluation = options.eval_fraction, writers["train"], writers["eval"]
        train.lists = _Lists(train.max_list_size, lambda documents, dropped: (
            evaluation if held_out_for_eval(int(documents["qid"][0]), fraction) else train).add(documents, dropped))

    _each_split(split_files, options, num_features, True, stats, counts, writer.directory,
                on_split, lambda split, documents: writers[split].lists.add(documents))
    for name in names:
      if name not in writers:
        on_split(name)
      writers[name].close()
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
    source = {"kind": "letor", "files": [str(p) for p in split_files["train"]],
              "eval_files": [str(p) for p in split_files.get("eval", [])],
              **({"eval_fraction": options.eval_fraction} if options.eval_fraction is not None else {}),
              **({"validation_files": [str(p) for p in split_files["validation"]]} if "validation" in split_files else {}),
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
