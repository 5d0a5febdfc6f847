"""The Grain input pipeline: a Grain record is a whole batch.

Per-record Python costs ~10 µs, far too slow for CTR training, so Grain indexes batches: batch i
of the stream belongs to epoch i // batches_per_epoch, whose global shuffle is a permutation
drawn from (seed, epoch); one sorted fancy-index read of the memmap gathers the batch. Grain
supplies threads, prefetch and the checkpointable iterator state ({"next_index": i}).
Each of P processes reads its own contiguous 1/P of every global batch.

A batch holds the fields of a BatchSpec (rankjax.data.batch: the task's description of its batch,
e.g. label/dense/cat for click models, relevance/features/mask for query lists); without one,
every record field as stored. Records are checked against the spec when the split is opened.

Splits: "train", "eval" (the test split, scored at the end) and "validation" (model selection and
early stopping): a split of the dataset when its converter wrote one, else a Holdout of the train
split's records that training never reads.
"""

from __future__ import annotations

import json
import pathlib
import sys
import threading
import dataclasses
from collections.abc import Callable
from typing import Any

import grain
import numpy as np

from rankjax.data import layout, validation
from rankjax.data.batch import BatchSpec


_CACHED_EPOCHS = 4


MIN_BUCKET_WIDTH = 8
_LENGTHS: dict[int, tuple[Any, np.ndarray]] = {}  # id(records) -> (records, each list's documents).


def list_lengths(records) -> np.ndarray:
  """Each record's list length: 1 + the position of its last document (mask != 0), so a cut to
  the batch's width never drops a document, even from a mask with gaps. Read from the masks only,
  once per opened split (a validation Holdout indexes its train split's lengths)."""
  if isinstance(records, validation.SelectedRecords):
    return list_lengths(records.records)[records.indices]
  cached = _LENGTHS.get(id(records))
  if cached is None or cached[0] is not records:
    present = np.asarray(records["mask"]) != 0
    width = present.shape[1]
    lengths = np.where(present.any(axis=1), width - np.argmax(present[:, ::-1], axis=1), 0)
    cached = _LENGTHS[id(records)] = (records, lengths.astype(np.int64))
  return cached[1]


def bucket_width(longest: int, max_width: int) -> int:
  """The list width of a batch whose longest list has `longest` documents: the next of 2^k and
  1.5 x 2^k (at least MIN_BUCKET_WIDTH, at most the stored width), so a split compiles two shapes
  an octave of list lengths and no batch is over 1.5x as wide as its longest list."""
  n = max(int(longest), MIN_BUCKET_WIDTH)
  power = 1 << (n - 1).bit_length()
  return int(min(max_width, power * 3 // 4 if n <= power * 3 // 4 else power))


def _max_width(spec: BatchSpec) -> int:
  return next(f.shape[0] for f in spec.fields if f.list_axis)


class ShuffledBatches:
  """Random access to the training stream: index i -> this process's share of global batch i.

  The last len % batch_size records of each epoch's permutation are not used in that epoch;
  since the permutation changes every epoch, a different remainder is left out each time.

  With `length_window` W > 0 (query lists; the spec has list fields), each run of W batches of the
  epoch's permutation is sorted by list length (stably) and cut into batches, their order within
  the run shuffled from (seed, epoch, run): lists of like lengths share a batch, and each batch's
  list axis is cut to bucket_width of its longest list.
  """

  def __init__(self, records: layout.ShardedRecords, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, spec: BatchSpec | None = None,
               length_window: int = 0):
    if global_batch_size % process_count:
      raise ValueError(f"batch size {global_batch_size} is not divisible by {process_count} processes")
    if len(records) < global_batch_size:
      raise layout.DataError(f"train split has {len(records)} records, fewer than one batch ({global_batch_size})")
    self.spec = spec or BatchSpec.of_records(records.dtype)
    self.spec.check(records.dtype, "train split")
    self.records = records
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.local_offset = process_index * self.local_batch_size
    self.seed = seed
    self.batches_per_epoch = len(records) // global_batch_size
    self._lock = threading.Lock()
    # The epochs readers asked for most recently. Prefetch threads run ahead of each other, so with
    # few batches per epoch they may ask for an epoch older than the newest ones cached.
    self._permutations: dict[int, np.ndarray] = {}
    self.length_window = length_window if self.spec.has_lists else 0
    if self.length_window:
      self.lengths, self.max_width = list_lengths(records), _max_width(self.spec)

  def permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      permutation = self._permutations.pop(epoch, None)
      if permutation is None:
        permutation = np.random.default_rng([self.seed, epoch]).permutation(len(self.records))
      self._permutations[epoch] = permutation  # Now the most recently used (dicts keep insertion order).
      while len(self._permutations) > _CACHED_EPOCHS:
        del self._permutations[next(iter(self._permutations))]
      return permutation

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    epoch, position = divmod(int(index), self.batches_per_epoch)
    if self.length_window:
      return self._bucketed(epoch, position)
    start = position * self.global_batch_size + self.local_offset
    rows = np.sort(self.permutation(epoch)[start:start + self.local_batch_size])
    return self.spec.read(self.records[rows])

  def _bucketed(self, epoch: int, position: int) -> dict[str, np.ndarray]:
    run, within = divmod(position, self.length_window)
    first = run * self.length_window
    count = min(self.length_window, self.batches_per_epoch - first)
    b = self.global_batch_size
    rows = self.permutation(epoch)[first * b:(first + count) * b]
    rows = rows[np.argsort(self.lengths[rows], kind="stable")].reshape(count, b)
    batch_rows = rows[np.random.default_rng([self.seed, epoch, run, 0xb0c7]).permutation(count)[within]]
    width = bucket_width(self.lengths[batch_rows].max(), self.max_width)
    local = np.sort(batch_rows[self.local_offset:self.local_offset + self.local_batch_size])
    return self.spec.read_lists(self.records, local, width)


class SequentialBatches:
  """The eval split in fixed-size batches, every record once; the last batch is padded with weight 0.
  In order, or with `length_buckets` (query lists) shortest lists first, each batch's list axis
  cut to bucket_width of its longest list (sums over lists do not depend on the order)."""

  def __init__(self, records: layout.ShardedRecords, global_batch_size: int, process_index: int = 0,
               process_count: int = 1, spec: BatchSpec | None = None, length_buckets: bool = False):
    if global_batch_size % process_count:
      raise ValueError(f"eval batch size {global_batch_size} is not divisible by {process_count} processes")
    self.spec = spec or BatchSpec.of_records(records.dtype)
    self.spec.check(records.dtype, "eval split")
    self.records = records
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.local_offset = process_index * self.local_batch_size
    self.num_batches = -(-len(records) // global_batch_size)
    self.order = self.widths = None
    if length_buckets and self.spec.has_lists:
      lengths = list_lengths(records)
      self.order = np.argsort(lengths, kind="stable")
      padded = np.zeros(self.num_batches * global_batch_size, np.int64)
      padded[:len(records)] = lengths[self.order]
      max_width = _max_width(self.spec)
      self.widths = [bucket_width(n, max_width) for n in padded.reshape(self.num_batches, -1).max(axis=1)]

  def __len__(self) -> int:
    return self.num_batches

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    start = int(index) * self.global_batch_size + self.local_offset
    rows = np.arange(start, start + self.local_batch_size)
    valid = rows < len(self.records)
    rows = np.where(valid, rows, 0)
    if self.widths is None:
      batch = self.spec.read(self.records[rows])
    else:
      batch = self.spec.read_lists(self.records, self.order[rows], self.widths[int(index)])
    batch["weight"] = valid.astype(np.float32)
    return batch


@dataclasses.dataclass(frozen=True)
class Holdout:
  """The validation split cut from the train split: `fraction` of its records, the last ones
  (order="last": converters keep the input order, so with time-ordered input these are the newest)
  or a random sample (order="random", drawn from `seed`). A record is a whole query list for
  ranking data, so LETOR lists are held out whole. Records the value rules reject are left out
  before the cut."""
  fraction: float
  order: str = "last"
  seed: int = 0

  ORDERS = ("last", "random")

  def indices(self, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) record positions among `count` records, each sorted."""
    held = int(round(self.fraction * count))
    if not 0 < held < count:
      raise layout.DataError(f"data.validation_fraction={self.fraction} of {count:,} train records holds out "
                             f"{held:,}: leave at least one record in each of train and validation")
    if self.order == "last":
      cut = np.arange(count - held, count)
    else:
      cut = np.sort(np.random.default_rng([self.seed, 0x7a11d]).choice(count, held, replace=False))
    train = np.setdiff1d(np.arange(count), cut, assume_unique=True)
    return train, cut


def holdout_of(data_config, manifest: dict) -> Holdout | None:
  """The validation records cut from the train split (config.data.validation_fraction), or None;
  None too when the dataset has a validation split of its own: that one is used, the fraction is
  for data without one."""
  if not data_config.validation_fraction or "validation" in manifest["splits"]:
    return None
  return Holdout(data_config.validation_fraction, data_config.validation_order, data_config.shuffle_seed)


def _held_out(records, holdout: Holdout, split: str):
  train, validation_rows = holdout.indices(len(records))
  rows = train if split == "train" else validation_rows
  if isinstance(records, validation.SelectedRecords):  # Positions among the kept records -> in the split.
    return validation.SelectedRecords(records.records, records.indices[rows])
  return validation.SelectedRecords(records, rows)


# Splits opened and checked in this process: an evaluation every N steps reuses the memmaps and
# the check instead of scanning the split again (and reports skipped records once).
_OPENED: dict[tuple, object] = {}


def _open(directory: str | pathlib.Path, manifest: dict, split: str, spec: BatchSpec | None, verify: bool,
          invalid_records: str, report: Callable[[validation.ValidationReport], None] | None,
          holdout: Holdout | None = None):
  """A split's records, checked against the spec's value rules (see rankjax.data.validation);
  records left out under "skip" are reported through `report` (default: one line on stderr).
  With a `holdout`, "train" and "validation" are its two parts of the train split."""
  if holdout is not None and split in ("train", "validation"):
    if "validation" in manifest["splits"]:
      raise layout.DataError(f"{directory} has a validation split of its own; leave data.validation_fraction at 0")
    return _held_out(_open(directory, manifest, "train", spec, verify, invalid_records, report, None), holdout, split)
  if spec is None:
    return layout.open_split(directory, manifest, split, verify)
  # The manifest's split entry (shard names, counts, sha256) in the key: a rewritten dataset reopens.
  key = (str(pathlib.Path(directory).resolve()), split, json.dumps(manifest["splits"].get(split), sort_keys=True),
         spec, invalid_records, verify)
  if key not in _OPENED:
    records = layout.open_split(directory, manifest, split, verify)
    spec.check(records.dtype, f"{split} split")
    files = [str(pathlib.Path(directory) / s["file"]) for s in layout.split_shards(manifest, split)]
    records, result = validation.validate(records, spec, split, files, invalid_records)
    if result.kept < result.records:
      (report or (lambda r: print(f"rankjax: {r.line()}", file=sys.stderr)))(result)
    _OPENED[key] = records
  return _OPENED[key]


def open_checked(directory: str | pathlib.Path, manifest: dict, split: str, spec: BatchSpec, *, verify: bool = True,
                 invalid_records: str = "error") -> tuple[Any, np.ndarray]:
  """(a split's records as the iterators read them, each one's index in the split): under
  invalid_records="skip" the bad records are left out (and reported), so the indices skip them."""
  records = _open(directory, manifest, split, spec, verify, invalid_records, None)
  return records, (records.indices if isinstance(records, validation.SelectedRecords) else np.arange(len(records)))


def _iterate(source, length: int, read_threads: int, prefetch: int) -> grain.DatasetIterator:
  dataset = grain.MapDataset.range(length).map(source.__getitem__)
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
  return iter(dataset.to_iter_dataset(options))


def train_iterator(directory: str | pathlib.Path, manifest: dict, *, global_batch_size: int, num_batches: int,
                   seed: int, read_threads: int = 2, prefetch: int = 4,
                   process_index: int = 0, process_count: int = 1, spec: BatchSpec | None = None,
                   verify: bool = True, invalid_records: str = "error",
                   report: Callable[[validation.ValidationReport], None] | None = None,
                   holdout: Holdout | None = None, length_window: int = 0) -> grain.DatasetIterator:
  """A checkpointable iterator over `num_batches` shuffled training batches (several epochs if needed).

  `verify`: check the shards' sha256 on open (see layout.open_split; cached after the first time).
  `invalid_records`: "error" or "skip" for records the spec's value rules reject.
  `holdout`: the validation records, never trained on.
  `length_window`: query lists batched by length in runs of this many batches (ShuffledBatches).
  """
  records = _open(directory, manifest, "train", spec, verify, invalid_records, report, holdout)
  source = ShuffledBatches(records, global_batch_size, seed, process_index, process_count, spec, length_window)
  return _iterate(source, num_batches, read_threads, prefetch)


def eval_iterator(directory: str | pathlib.Path, manifest: dict, *, global_batch_size: int,
                  read_threads: int = 2, prefetch: int = 4,
                  process_index: int = 0, process_count: int = 1, spec: BatchSpec | None = None,
                  verify: bool = True, invalid_records: str = "error",
                  report: Callable[[validation.ValidationReport], None] | None = None,
                  split: str = "eval", holdout: Holdout | None = None,
                  length_buckets: bool = False) -> grain.DatasetIterator:
  """The eval (test) or validation split, every (valid) record once: in order, or query lists
  shortest first in length-bucketed batches (see SequentialBatches)."""
  records = _open(directory, manifest, split, spec, verify, invalid_records, report, holdout)
  source = SequentialBatches(records, global_batch_size, process_index, process_count, spec, length_buckets)
  return _iterate(source, len(source), read_threads, prefetch)
