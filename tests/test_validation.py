"""Records a task's batch rejects never train silently: labels outside {0, 1}, ids outside the
vocabulary, non-finite features, negative relevance stop with one line naming the shard file and
record ("error"), or are left out and counted by reason ("skip"); manifests cannot point outside
their dataset directory; read-only datasets work."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, task_batch_spec, tiny_config
from rankjax.data import layout, pipeline

NUM_DENSE, VOCAB = 2, [10, 20]


def ctr_dataset(directory: pathlib.Path, n: int = 64, corrupt=()) -> tuple[dict, np.ndarray]:
  """A CTR dataset of n valid records, then (field, record, column, value) corruptions."""
  rng = np.random.default_rng(0)
  dtype = layout.ctr_record_dtype(NUM_DENSE, len(VOCAB))
  records = np.zeros(n, dtype)
  records["label"] = rng.integers(0, 2, n)
  records["dense"] = rng.normal(size=(n, NUM_DENSE))
  records["cat"] = rng.integers(0, 10, (n, len(VOCAB)))
  for field, record, column, value in corrupt:
    if column is None:
      records[field][record] = value
    else:
      records[field][record, column] = value
  directory.mkdir(parents=True, exist_ok=True)
  splits = {s: layout.write_split(directory, s, records) for s in ("train", "eval")}
  manifest = layout.write_manifest(directory, dtype, splits, num_dense=NUM_DENSE, vocab_sizes=VOCAB,
                                   source={"kind": "table"})
  return manifest, records


CORRUPTIONS = [("label", 5, None, 5.0), ("label", 9, None, 0.5), ("label", 11, None, -1.0),
               ("cat", 20, 1, 20), ("cat", 21, 0, -7), ("dense", 30, 0, np.inf), ("cat", 40, 0, 10)]


def _spec(manifest, tmp_path):
  config = tiny_config()
  config.data.path = str(tmp_path)
  return task_batch_spec(config, manifest)


def test_an_invalid_record_stops_the_run_naming_the_shard_file_record_field_and_value(tmp_path):
  manifest, _ = ctr_dataset(tmp_path, corrupt=[("cat", 20, 1, 20)])
  with pytest.raises(layout.DataError) as error:
    pipeline.train_iterator(tmp_path, manifest, global_batch_size=16, num_batches=1, seed=0,
                            spec=_spec(manifest, tmp_path))
  message = str(error.value)
  assert str(tmp_path / "train.bin") in message and "record 20" in message
  assert "cat column 1 holds id 20, outside [0, 20)" in message and "data.invalid_records=skip" in message


def test_label_outside_zero_one_is_invalid_for_a_binary_head(tmp_path):
  manifest, _ = ctr_dataset(tmp_path, corrupt=[("label", 9, None, 0.5)])
  with pytest.raises(layout.DataError, match=r"record 9: label = \[0.5\] is not binary"):
    pipeline.eval_iterator(tmp_path, manifest, global_batch_size=16, spec=_spec(manifest, tmp_path))


def test_skip_leaves_exactly_the_invalid_records_out_and_counts_them_by_reason(tmp_path):
  manifest, records = ctr_dataset(tmp_path, corrupt=CORRUPTIONS)
  reports = []
  batches = list(pipeline.eval_iterator(tmp_path, manifest, global_batch_size=16, spec=_spec(manifest, tmp_path),
                                        invalid_records="skip", report=reports.append))
  (report,) = reports
  assert (report.records, report.kept) == (64, 57)
  assert report.bad_by_reason == {"label: not 0 or 1": 3, "dense: not finite": 1,
                                  "cat: ids outside [0, vocab) and not -1": 3}
  weight = np.concatenate([b["weight"] for b in batches])
  dense = np.concatenate([b["dense"] for b in batches])[weight > 0]
  kept = np.setdiff1d(np.arange(64), [c[1] for c in CORRUPTIONS])
  np.testing.assert_array_equal(dense, records["dense"][kept])  # The others, in their order.
  assert "skipped 7 of 64 records" in report.line()


def test_letor_non_finite_features_and_negative_relevance_are_invalid(tmp_path):
  from rankjax.config import load_config_file
  dtype = np.dtype([("relevance", "<f4", (3,)), ("features", "<f4", (3, 2)), ("mask", "u1", (3,)), ("qid", "<i8")])
  records = np.zeros(8, dtype)
  records["mask"] = 1
  records["relevance"][2, 1] = -3
  records["features"][5, 0, 1] = np.nan
  splits = {s: layout.write_split(tmp_path, s, records) for s in ("train", "eval")}
  manifest = layout.write_manifest(tmp_path, dtype, splits, num_features=2, max_list_size=3,
                                   feature_stats={"mean": [0, 0], "std": [1, 1]}, source={"kind": "letor"})
  config = load_config_file(str(REPO / "configs" / "ltr_mslr.py"))
  config.data.path = str(tmp_path)
  spec = task_batch_spec(config, manifest)
  with pytest.raises(layout.DataError, match="record 2: relevance"):
    pipeline.eval_iterator(tmp_path, manifest, global_batch_size=4, spec=spec)
  reports = []
  pipeline.eval_iterator(tmp_path, manifest, global_batch_size=4, spec=spec, invalid_records="skip",
                         report=reports.append)
  assert reports[0].bad_by_reason == {"relevance: negative or not finite": 1, "features: not finite": 1}


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.bin", "a/../../outside.bin"])
def test_a_manifest_naming_a_shard_outside_its_directory_is_refused(tmp_path, path):
  manifest, _ = ctr_dataset(tmp_path / "data")
  manifest["splits"]["train"]["file"] = path
  with pytest.raises(layout.DataError, match="not inside the dataset directory"):
    layout.open_split(tmp_path / "data", manifest, "train")


def test_a_read_only_dataset_is_verified_without_writing_into_it(tmp_path, monkeypatch):
  manifest, _ = ctr_dataset(tmp_path)
  before = sorted(os.listdir(tmp_path))

  def read_only(*args, **kwargs):
    raise OSError(30, "Read-only file system")

  monkeypatch.setattr(pathlib.Path, "write_text", read_only)
  monkeypatch.setattr(pathlib.Path, "unlink", read_only)
  for _ in range(2):  # Verified again each time: nothing was cached in the directory.
    records = layout.open_split(tmp_path, manifest, "train", verify=True)
    assert len(records) == 64
  assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.slow
def test_rankjax_train_on_invalid_records_exits_2_or_skips_and_reports(tmp_path):
  ctr_dataset(tmp_path / "data", n=1024, corrupt=CORRUPTIONS)
  args = [sys.executable, "-m", "rankjax.cli", "train", "--config", str(REPO / "configs" / "tiny.py"),
          f"--config.data.path={tmp_path / 'data'}", "--config.train.steps=2", "--config.train.batch_size=64",
          "--config.train.eval_batch_size=64", "--config.train.progress_bar=False"]
  p = subprocess.run([*args, "--workdir", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
  assert p.returncode == 2 and "record 5: label" in p.stderr and "Traceback" not in p.stderr, p.stderr
  p = subprocess.run([*args, "--workdir", str(tmp_path / "b"), "--config.data.invalid_records=skip"],
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  assert "train split: skipped 7 of 1,024 records" in p.stderr and "eval split: skipped 7" in p.stderr
  assert json.loads((tmp_path / "b" / "summary.json").read_text())["steps"] == 2
