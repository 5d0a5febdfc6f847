"""Sharded splits (rankjax/data/layout.py) and the streaming writer (rankjax/data/writer.py):
a split in many shards reads exactly like one file, checksums catch a flipped byte, the manifest
appears last, and the row accounting is enforced."""

import json
import os

import numpy as np
import pytest

from rankjax.data import layout, pipeline, validation, writer

NUM_TRAIN, NUM_EVAL, BATCH = 1000, 300, 64
DTYPE = layout.ctr_record_dtype(2, 3)


def _records(n: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  records = np.zeros(n, DTYPE)
  records["label"] = rng.integers(0, 2, n)
  records["dense"] = rng.normal(size=(n, 2))
  records["cat"] = rng.integers(0, 100, (n, 3))
  records["cat"][:, 0] = np.arange(n)
  return records


TRAIN, EVAL = _records(NUM_TRAIN, 0), _records(NUM_EVAL, 1)


@pytest.fixture(scope="module")
def single_file(tmp_path_factory):
  directory = tmp_path_factory.mktemp("single")
  splits = {"train": layout.write_split(directory, "train", TRAIN), "eval": layout.write_split(directory, "eval", EVAL)}
  return directory, layout.write_manifest(directory, DTYPE, splits)


def _write_sharded(directory, records_per_shard, chunk=37):
  stats = writer.IngestStats(rows_read=NUM_TRAIN + NUM_EVAL)
  with writer.DatasetWriter(directory, DTYPE, records_per_shard) as out:
    for name, records in (("train", TRAIN), ("eval", EVAL)):
      for start in range(0, len(records), chunk):  # Writes that straddle shard boundaries.
        out.split(name).write(records[start:start + chunk])
    return out.finish(stats, num_dense=2)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  directory = tmp_path_factory.mktemp("sharded")
  return directory, _write_sharded(directory, records_per_shard=150)


def _batches(iterator):
  return [dict(b) for b in iterator]


# ---------------------------------------------------------------- equivalence


def test_shards_hold_the_records_in_order_with_their_counts_and_checksums(sharded):
  directory, manifest = sharded
  shards = manifest["splits"]["train"]["shards"]
  assert [s["num_records"] for s in shards] == [150] * 6 + [100]
  assert [s["file"] for s in shards] == [f"train-{i:05d}.bin" for i in range(7)]
  assert all(layout.file_sha256(directory / s["file"]) == s["sha256"] for s in shards)
  assert b"".join((directory / s["file"]).read_bytes() for s in shards) == TRAIN.tobytes()
  assert manifest["format_version"] == layout.FORMAT_VERSION == 2
  assert manifest["ingest"]["rows_written"] == NUM_TRAIN + NUM_EVAL


@pytest.mark.parametrize("process_count", [1, 2])
def test_sharded_split_gives_the_same_train_batches_as_one_file(single_file, sharded, process_count):
  n = NUM_TRAIN // BATCH + 3  # Into the second epoch.
  for process_index in range(process_count):
    expected, actual = (_batches(pipeline.train_iterator(d, m, global_batch_size=BATCH, num_batches=n, seed=5,
                                                         process_index=process_index, process_count=process_count))
                        for d, m in (single_file, sharded))
    assert len(actual) == len(expected) == n
    for a, e in zip(actual, expected):
      assert a.keys() == e.keys()
      for key in e:
        np.testing.assert_array_equal(a[key], e[key])


def test_sharded_split_gives_the_same_eval_batches_as_one_file(single_file, sharded):
  expected, actual = (_batches(pipeline.eval_iterator(d, m, global_batch_size=BATCH))
                      for d, m in (single_file, sharded))
  for a, e in zip(actual, expected, strict=True):
    for key in e:
      np.testing.assert_array_equal(a[key], e[key])


def test_sharded_records_index_like_one_array(sharded):
  records = layout.open_split(*sharded, "train")
  rng = np.random.default_rng(2)
  assert len(records) == NUM_TRAIN and records.shape == (NUM_TRAIN,)
  for indices in (np.sort(rng.choice(NUM_TRAIN, 200, replace=False)), rng.integers(0, NUM_TRAIN, 300),
                  np.array([999, 0, 150, 149, 150, -1, -1000]), np.array([], np.int64)):
    assert records[indices].tobytes() == TRAIN[indices].tobytes()
  assert records[140:460:3].tobytes() == TRAIN[140:460:3].tobytes()
  assert records[-1].tobytes() == TRAIN[-1].tobytes() and records[450].tobytes() == TRAIN[450].tobytes()
  np.testing.assert_array_equal(records["cat"], TRAIN["cat"])
  with pytest.raises(IndexError):
    records[np.array([NUM_TRAIN])]


def test_a_field_gathered_and_cut_equals_the_records_field_cut(sharded):
  records = layout.open_split(*sharded, "train")
  selected = validation.SelectedRecords(records, np.arange(3, NUM_TRAIN, 2))
  indices = np.random.default_rng(3).integers(0, len(selected), 120)  # Unsorted, repeated, every shard.
  for width in (None, 1, 2, 3, 5):
    cut = slice(None) if width is None else slice(0, width)
    np.testing.assert_array_equal(records.gather_field("cat", indices, width), TRAIN[indices]["cat"][:, cut])
    np.testing.assert_array_equal(selected.gather_field("cat", indices, width),
                                  TRAIN[np.arange(3, NUM_TRAIN, 2)[indices]]["cat"][:, cut])
  np.testing.assert_array_equal(records.gather_field("label", indices), TRAIN[indices]["label"])


# ---------------------------------------------------------------- checksums


def _copy(source, destination):
  destination.mkdir()
  for path in source.iterdir():
    if path.is_file() and path.name != layout.VERIFIED_STAMP:
      (destination / path.name).write_bytes(path.read_bytes())
  return destination, layout.read_manifest(destination)


def _flip_byte(path, offset=100):
  data = bytearray(path.read_bytes())
  data[offset] ^= 0x01
  stat = path.stat()
  path.write_bytes(bytes(data))
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # A later mtime, as a real edit leaves.


def test_a_flipped_byte_is_detected_naming_the_shard(sharded, tmp_path):
  directory, manifest = _copy(sharded[0], tmp_path / "copy")
  shard = directory / "train-00003.bin"
  _flip_byte(shard)
  with pytest.raises(layout.DataError, match=f"{shard}: sha256 .* differs from the manifest"):
    pipeline.train_iterator(directory, manifest, global_batch_size=BATCH, num_batches=1, seed=0)
  assert len(layout.open_split(directory, manifest, "train", verify=False)) == NUM_TRAIN  # Opt-out still opens.


def test_verification_is_recorded_and_redone_when_a_shard_changes(sharded, tmp_path, monkeypatch):
  directory, manifest = _copy(sharded[0], tmp_path / "copy")
  hashed = []
  real_sha256 = layout.file_sha256
  monkeypatch.setattr(layout, "file_sha256", lambda path: hashed.append(path.name) or real_sha256(path))
  layout.open_split(directory, manifest, "eval")
  assert hashed == ["eval-00000.bin", "eval-00001.bin"]
  stamp = json.loads((directory / layout.VERIFIED_STAMP).read_text())
  assert sorted(stamp) == ["eval-00000.bin", "eval-00001.bin"]
  hashed.clear()
  layout.open_split(directory, manifest, "eval")
  assert hashed == []  # Unchanged shards are not hashed again.
  _flip_byte(directory / "eval-00001.bin")
  with pytest.raises(layout.DataError, match="eval-00001.bin"):
    layout.open_split(directory, manifest, "eval")
  assert hashed == ["eval-00001.bin"]


def test_an_unwritable_stamp_only_means_verifying_again(sharded, tmp_path):
  directory, manifest = _copy(sharded[0], tmp_path / "copy")
  (directory / layout.VERIFIED_STAMP).mkdir()  # Cannot be replaced by a file.
  assert len(layout.open_split(directory, manifest, "train")) == NUM_TRAIN
  assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- manifest versions


def test_a_version_1_single_file_manifest_still_opens(single_file, tmp_path):
  directory, manifest = _copy(single_file[0], tmp_path / "v1")
  old = dict(manifest, format_version=1)
  (directory / layout.MANIFEST).write_text(json.dumps(old))
  manifest = layout.read_manifest(directory)
  assert layout.open_split(directory, manifest, "train")[:].tobytes() == TRAIN.tobytes()
  assert layout.split_shards(manifest, "eval") == [manifest["splits"]["eval"]]


def test_an_unknown_format_version_is_rejected(single_file, tmp_path):
  directory, manifest = _copy(single_file[0], tmp_path / "v9")
  (directory / layout.MANIFEST).write_text(json.dumps(dict(manifest, format_version=9)))
  with pytest.raises(layout.DataError, match="v9"):
    layout.read_manifest(directory)


def test_shard_counts_that_disagree_with_the_split_total_are_rejected(sharded, tmp_path):
  directory, manifest = _copy(sharded[0], tmp_path / "copy")
  manifest["splits"]["train"]["num_records"] += 1
  with pytest.raises(layout.DataError, match="shards sum to 1000"):
    layout.open_split(directory, manifest, "train")


# ---------------------------------------------------------------- writer


def test_a_failed_write_leaves_no_manifest_and_the_next_run_clears_it(tmp_path):
  directory = tmp_path / "out"
  with pytest.raises(RuntimeError, match="interrupted"):
    with writer.DatasetWriter(directory, DTYPE, 100) as out:
      out.split("train").write(TRAIN)
      raise RuntimeError("interrupted")
  assert not (directory / layout.MANIFEST).exists()
  assert (directory / writer.INCOMPLETE_MARKER).exists()
  _write_sharded(directory, records_per_shard=500)
  assert sorted(p.name for p in directory.iterdir()) == [
      "eval-00000.bin", layout.MANIFEST, "train-00000.bin", "train-00001.bin"]


def test_replacing_a_dataset_removes_its_manifest_before_writing(sharded, tmp_path):
  directory, _ = _copy(sharded[0], tmp_path / "copy")
  writer.DatasetWriter(directory, DTYPE, 100)  # Opened, then "crashes" before finish().
  assert not (directory / layout.MANIFEST).exists()
  assert not list(directory.glob("*.bin"))


def test_row_accounting_must_add_up(tmp_path):
  out = writer.DatasetWriter(tmp_path / "out", DTYPE)
  out.split("train").write(TRAIN[:10])
  with pytest.raises(RuntimeError, match="read 11 != written 10 \\+ skipped 0"):
    out.finish(writer.IngestStats(rows_read=11))
  assert not (tmp_path / "out" / layout.MANIFEST).exists()


def test_strict_stats_raise_and_lenient_stats_count():
  strict = writer.IngestStats(strict=True)
  with pytest.raises(writer.IngestError, match="^f.tsv:7: bad thing: 'x'$"):
    strict.reject_rows("f.tsv", 7, "bad thing", "'x'")
  lenient = writer.IngestStats(strict=False, rows_read=5)
  lenient.reject_rows("f.tsv", 7, "bad thing", "'x'", rows=2)
  lenient.reject_file("g.tsv", 0, "empty file", "")
  assert lenient.rows_skipped == 2 and lenient.skipped_by_reason == {"bad thing": 2}
  assert lenient.file_errors == [{"file": "g.tsv", "line": 0, "reason": "empty file"}]


def test_excerpt_is_one_line_of_at_most_80_characters():
  assert writer.excerpt("a\tb") == "'a\\tb'"
  long = writer.excerpt("x" * 500)
  assert len(long) == 80 and long.endswith("...")
  assert "\n" not in writer.excerpt(b"line\nbreak\xff")
