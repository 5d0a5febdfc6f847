"""The Grain input pipeline: a Grain record is a whole batch.

Per-record Python costs ~10 µs, far too slow for CTR training, so Grain indexes batches: batch i
of the stream belongs to epoch i // batches_per_epoch, whose global shuffle is a permutation
drawn from (seed, epoch); one sorted fancy-index read of the memmap gathers the batch. Grain
supplies threads, prefetch and the checkpointable iterator state ({"next_index": i}).
Each of P processes reads its own contiguous 1/P of every global batch.

A batch holds the fields the trainer consumes: label, dense, cat. Other record fields (a table's
`qid`) are not read into batches. A record with several labels (a label field of shape (k,)) is
trained on one of them, column `label_index` (0 by default). LETOR records are query lists: a
batch is then a batch of lists, relevance [b, L], features [b, L, N] and mask [b, L], all float32.
"""

from __future__ import annotations

import pathlib
import threading

import grain
import numpy as np

from rankjax.data import layout


TRAINED_FIELDS = ("label", "dense", "cat")
RANKING_FIELDS = ("relevance", "features", "mask")


def holds_query_lists(dtype: np.dtype) -> bool:
  """Whether records are LETOR query lists (rankjax.data.letor) rather than labelled examples."""
  return "relevance" in dtype.names


def _to_arrays(records: np.ndarray, label_index: int) -> dict[str, np.ndarray]:
  if holds_query_lists(records.dtype):
    return {name: np.ascontiguousarray(records[name], np.float32) for name in RANKING_FIELDS}
  arrays = {name: np.ascontiguousarray(records[name]) for name in TRAINED_FIELDS}
  if arrays["label"].ndim == 2:
    arrays["label"] = np.ascontiguousarray(arrays["label"][:, label_index])
  return arrays


def _check_label_index(records: layout.ShardedRecords, label_index: int) -> None:
  if holds_query_lists(records.dtype):
    if label_index:
      raise layout.DataError(f"label_index {label_index} is out of range: query lists have one relevance label")
    return
  label_shape = records.dtype["label"].shape
  num_labels = label_shape[0] if label_shape else 1
  if not 0 <= label_index < num_labels:
    raise layout.DataError(f"label_index {label_index} is out of range: the records have {num_labels} label(s)")


class ShuffledBatches:
  """Random access to the training stream: index i -> this process's share of global batch i.

  The last len % batch_size records of each epoch's permutation are not used in that epoch;
  since the permutation changes every epoch, a different remainder is left out each time.
  """

  def __init__(self, records: layout.ShardedRecords, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, label_index: int = 0):
    if global_batch_size % process_count:
      raise ValueError(f"batch size {global_batch_size} is not divisible by {process_count} processes")
    if len(records) < global_batch_size:
      raise layout.DataError(f"train split has {len(records)} records, fewer than one batch ({global_batch_size})")
    _check_label_index(records, label_index)
    self.records = records
    self.label_index = label_index
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.local_offset = process_index * self.local_batch_size
    self.seed = seed
    self.batches_per_epoch = len(records) // global_batch_size
    self._lock = threading.Lock()
    self._permutations: dict[int, np.ndarray] = {}  # The last two epochs: readers straddle a boundary.

  def permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._permutations:
        self._permutations[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.records))
        for old in sorted(self._permutations)[:-2]:
          del self._permutations[old]
      return self._permutations[epoch]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    epoch, position = divmod(int(index), self.batches_per_epoch)
    start = position * self.global_batch_size + self.local_offset
    rows = np.sort(self.permutation(epoch)[start:start + self.local_batch_size])
    return _to_arrays(self.records[rows], self.label_index)


class SequentialBatches:
  """The eval split in order, in fixed-size batches; the last batch is padded with weight 0."""

  def __init__(self, records: layout.ShardedRecords, global_batch_size: int, process_index: int = 0,
               process_count: int = 1, label_index: int = 0):
    if global_batch_size % process_count:
      raise ValueError(f"eval batch size {global_batch_size} is not divisible by {process_count} processes")
    _check_label_index(records, label_index)
    self.records = records
    self.label_index = label_index
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.local_offset = process_index * self.local_batch_size
    self.num_batches = -(-len(records) // global_batch_size)

  def __len__(self) -> int:
    return self.num_batches

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    start = int(index) * self.global_batch_size + self.local_offset
    rows = np.arange(start, start + self.local_batch_size)
    valid = rows < len(self.records)
    batch = _to_arrays(self.records[np.where(valid, rows, 0)], self.label_index)
    batch["weight"] = valid.astype(np.float32)
    return batch


def _iterate(source, length: int, read_threads: int, prefetch: int) -> grain.DatasetIterator:
  dataset = grain.MapDataset.range(length).map(source.__getitem__)
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
  return iter(dataset.to_iter_dataset(options))


def train_iterator(directory: str | pathlib.Path, manifest: dict, *, global_batch_size: int, num_batches: int,
                   seed: int, read_threads: int = 2, prefetch: int = 4,
                   process_index: int = 0, process_count: int = 1, label_index: int = 0,
                   verify: bool = True) -> grain.DatasetIterator:
  """A checkpointable iterator over `num_batches` shuffled training batches (several epochs if needed).

  `verify`: check the shards' sha256 on open (see layout.open_split; cached after the first time).
  """
  source = ShuffledBatches(layout.open_split(directory, manifest, "train", verify), global_batch_size, seed,
                           process_index, process_count, label_index)
  return _iterate(source, num_batches, read_threads, prefetch)


def eval_iterator(directory: str | pathlib.Path, manifest: dict, *, global_batch_size: int,
                  read_threads: int = 2, prefetch: int = 4,
                  process_index: int = 0, process_count: int = 1, label_index: int = 0,
                  verify: bool = True) -> grain.DatasetIterator:
  """The eval split in order, every record once (see SequentialBatches)."""
  source = SequentialBatches(layout.open_split(directory, manifest, "eval", verify), global_batch_size,
                             process_index, process_count, label_index)
  return _iterate(source, len(source), read_threads, prefetch)
