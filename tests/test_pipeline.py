"""Tests for rankjax/data/pipeline.py: epoch coverage, seeded shuffles, exact resume, process shards.

The dataset is written here with cat[:, 0] holding each record's index, so every batch row says
which record it came from and can be checked against the memmap.
"""

import json

import numpy as np
import pytest

from rankjax.data import layout, pipeline
from rankjax.data.batch import BatchSpec, Field

NUM_TRAIN, NUM_EVAL = 1000, 300
BATCH = 64  # 1000 % 64 = 40 records left out of each epoch; 300 % 64 = 44 eval rows in the last batch.
BATCHES_PER_EPOCH = NUM_TRAIN // BATCH
NUM_DENSE, NUM_SPARSE = 2, 3


def _records(n: int, rng: np.random.Generator) -> np.ndarray:
  records = np.empty(n, layout.ctr_record_dtype(NUM_DENSE, NUM_SPARSE))
  records["label"] = rng.integers(0, 2, n)
  records["dense"] = rng.normal(size=(n, NUM_DENSE))
  records["cat"] = rng.integers(0, 100, (n, NUM_SPARSE))
  records["cat"][:, 0] = np.arange(n)
  return records


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """(directory, manifest) of an indexed dataset: cat[:, 0] is the record's position in its split."""
  directory = tmp_path_factory.mktemp("indexed")
  rng = np.random.default_rng(0)
  splits = {split: layout.write_split(directory, split, _records(n, rng))
            for split, n in (("train", NUM_TRAIN), ("eval", NUM_EVAL))}
  manifest = layout.write_manifest(directory, layout.ctr_record_dtype(NUM_DENSE, NUM_SPARSE), splits)
  return directory, manifest


def _train(dataset, num_batches, seed=0, **kwargs):
  directory, manifest = dataset
  return pipeline.train_iterator(directory, manifest, global_batch_size=BATCH, num_batches=num_batches,
                                 seed=seed, **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _ids(batch) -> np.ndarray:
  return batch["cat"][:, 0]


def _assert_same_batches(actual, expected):
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    assert a.keys() == e.keys()
    for key in e:
      assert a[key].dtype == e[key].dtype
      np.testing.assert_array_equal(a[key], e[key])


# ---------------------------------------------------------------- train_iterator


def test_train_batches_carry_the_records_they_name(dataset):
  directory, manifest = dataset
  records = layout.open_split(directory, manifest, "train")
  for batch in _take(_train(dataset, 3), 3):
    expected = records[_ids(batch)]
    assert batch["label"].shape == (BATCH,)
    np.testing.assert_array_equal(batch["label"], expected["label"])
    np.testing.assert_array_equal(batch["dense"], expected["dense"])
    np.testing.assert_array_equal(batch["cat"], expected["cat"])


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_one_epoch_covers_distinct_records_once_each(dataset, epoch):
  batches = _take(_train(dataset, (epoch + 1) * BATCHES_PER_EPOCH), (epoch + 1) * BATCHES_PER_EPOCH)
  ids = np.concatenate([_ids(b) for b in batches[epoch * BATCHES_PER_EPOCH:]])
  assert len(np.unique(ids)) == len(ids) == BATCHES_PER_EPOCH * BATCH
  assert ids.min() >= 0 and ids.max() < NUM_TRAIN


def test_train_iterator_stops_after_num_batches(dataset):
  iterator = _train(dataset, 2)
  _take(iterator, 2)
  with pytest.raises(StopIteration):
    next(iterator)


def test_shuffle_differs_between_epochs(dataset):
  batches = _take(_train(dataset, 2 * BATCHES_PER_EPOCH), 2 * BATCHES_PER_EPOCH)
  first = np.concatenate([_ids(b) for b in batches[:BATCHES_PER_EPOCH]])
  second = np.concatenate([_ids(b) for b in batches[BATCHES_PER_EPOCH:]])
  assert not np.array_equal(first, second)
  assert set(first) != set(second)  # Each epoch leaves out a different remainder.


def test_batches_of_any_epoch_can_be_read_in_any_order(dataset):
  # Prefetch threads run ahead of each other: with few batches per epoch one may ask for an epoch
  # older than the newest cached ones (the CI failure "KeyError: 25" on a resume). Every order
  # gives the batches of the in-order stream.
  directory, manifest = dataset
  records = layout.open_split(directory, manifest, "train")
  in_order = pipeline.ShuffledBatches(records, BATCH, seed=0)
  expected = {i: _ids(in_order[i]) for i in range(0, 12 * BATCHES_PER_EPOCH, BATCHES_PER_EPOCH)}
  shuffled = pipeline.ShuffledBatches(records, BATCH, seed=0)
  for i in [5, 6, 7, 8, 9, 10, 11, 4, 3, 2, 1, 0, 11, 0]:
    index = i * BATCHES_PER_EPOCH
    np.testing.assert_array_equal(_ids(shuffled[index]), expected[index])


def test_same_seed_gives_identical_stream(dataset):
  n = BATCHES_PER_EPOCH + 3
  _assert_same_batches(_take(_train(dataset, n, seed=7), n), _take(_train(dataset, n, seed=7), n))


def test_different_seed_changes_the_order(dataset):
  a = np.concatenate([_ids(b) for b in _take(_train(dataset, 3, seed=7), 3)])
  b = np.concatenate([_ids(b) for b in _take(_train(dataset, 3, seed=8), 3)])
  assert not np.array_equal(a, b)


@pytest.mark.parametrize("taken, resumed", [(4, 5), (BATCHES_PER_EPOCH - 2, 5)],
                         ids=["mid_epoch", "across_epoch_boundary"])
def test_set_state_resumes_the_stream_bit_for_bit(dataset, taken, resumed):
  total = taken + resumed
  original = _train(dataset, total, seed=3, read_threads=2, prefetch=4)
  _take(original, taken)
  state = original.get_state()
  expected = _take(original, resumed)
  restored = _train(dataset, total, seed=3, read_threads=2, prefetch=4)
  restored.set_state(state)
  _assert_same_batches(_take(restored, resumed), expected)
  with pytest.raises(StopIteration):
    next(restored)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_are_disjoint_and_union_to_the_global_batch(dataset, process_count):
  n = BATCHES_PER_EPOCH + 2  # Into the second epoch too.
  global_batches = _take(_train(dataset, n), n)
  shards = [_take(_train(dataset, n, process_index=p, process_count=process_count), n)
            for p in range(process_count)]
  for i, global_batch in enumerate(global_batches):
    local_ids = [_ids(shard[i]) for shard in shards]
    assert all(len(ids) == BATCH // process_count for ids in local_ids)
    union = np.concatenate(local_ids)
    assert len(np.unique(union)) == len(union)
    np.testing.assert_array_equal(np.sort(union), np.sort(_ids(global_batch)))


def test_batch_size_not_divisible_by_process_count_is_rejected(dataset):
  with pytest.raises(ValueError, match="divisible"):
    _train(dataset, 1, process_count=3)


def test_train_split_smaller_than_one_batch_is_rejected(dataset):
  directory, manifest = dataset
  with pytest.raises(layout.DataError):
    pipeline.train_iterator(directory, manifest, global_batch_size=NUM_TRAIN + 1, num_batches=1, seed=0)


# ---------------------------------------------------------------- eval_iterator


def _eval(dataset, **kwargs):
  directory, manifest = dataset
  return list(pipeline.eval_iterator(directory, manifest, global_batch_size=BATCH, **kwargs))


def test_eval_yields_every_record_once_in_order_with_weight_one(dataset):
  directory, manifest = dataset
  records = layout.open_split(directory, manifest, "eval")
  batches = _eval(dataset)
  assert len(batches) == -(-NUM_EVAL // BATCH)
  weight = np.concatenate([b["weight"] for b in batches])
  real = weight == 1.0
  np.testing.assert_array_equal(np.concatenate([_ids(b) for b in batches])[real], np.arange(NUM_EVAL))
  np.testing.assert_array_equal(np.concatenate([b["dense"] for b in batches])[real], records["dense"])
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[real], records["label"])


def test_eval_pads_only_the_last_batch_with_weight_zero(dataset):
  batches = _eval(dataset)
  assert all(b["label"].shape == (BATCH,) for b in batches)
  assert all((b["weight"] == 1.0).all() for b in batches[:-1])
  last = batches[-1]["weight"]
  valid_in_last = NUM_EVAL - (len(batches) - 1) * BATCH
  np.testing.assert_array_equal(last[:valid_in_last], 1.0)
  np.testing.assert_array_equal(last[valid_in_last:], 0.0)
  assert set(np.unique(np.concatenate([b["weight"] for b in batches]))) <= {0.0, 1.0}
  assert sum(float(b["weight"].sum()) for b in batches) == NUM_EVAL


def test_eval_process_shards_cover_every_record_once(dataset):
  process_count = 2
  shards = [_eval(dataset, process_index=p, process_count=process_count) for p in range(process_count)]
  assert len({len(s) for s in shards}) == 1  # Every process runs the same number of eval steps.
  ids = np.concatenate([_ids(b)[b["weight"] == 1.0] for s in shards for b in s])
  np.testing.assert_array_equal(np.sort(ids), np.arange(NUM_EVAL))
  assert sum(float(b["weight"].sum()) for s in shards for b in s) == NUM_EVAL


# ---------------------------------------------------------------- record fields beyond the trained ones


def test_batches_hold_the_trained_fields_and_the_chosen_label_column(tmp_path):
  dtype = np.dtype([("label", "<f4", (2,)), ("dense", "<f4", (NUM_DENSE,)), ("cat", "<i4", (NUM_SPARSE,)),
                    ("qid", "<i8")])
  records = np.zeros(NUM_TRAIN, dtype)
  records["label"] = np.stack([np.arange(NUM_TRAIN) % 2, np.arange(NUM_TRAIN) % 3 == 0], axis=1)
  records["cat"][:, 0] = np.arange(NUM_TRAIN)
  records["qid"] = np.arange(NUM_TRAIN) // 10
  manifest = layout.write_manifest(tmp_path, dtype, {"train": layout.write_split(tmp_path, "train", records)})
  for label_index in (0, 1):
    spec = BatchSpec((Field("label", "float32", (), column=label_index), Field("dense", "float32", (NUM_DENSE,)),
                      Field("cat", "int32", (NUM_SPARSE,))))
    (batch,) = _take(pipeline.train_iterator(tmp_path, manifest, global_batch_size=BATCH, num_batches=1, seed=0,
                                             spec=spec), 1)
    assert set(batch) == {"label", "dense", "cat"}
    assert batch["label"].shape == (BATCH,)
    np.testing.assert_array_equal(batch["label"], records["label"][_ids(batch), label_index])


def test_bench_data_prints_one_json_line_per_thread_count(dataset, capsys):
  from rankjax.cli import bench_data
  assert bench_data.main(["--path", str(dataset[0]), "--batch", str(BATCH), "--batches", "3", "--threads", "1,2"]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(l["batch"], l["threads"], l["batches"]) for l in lines] == [(BATCH, 1, 3), (BATCH, 2, 3)]
  assert all(l["samples_per_sec"] > 0 for l in lines)
