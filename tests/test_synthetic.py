"""Tests for rankjax/data/synthetic.py and the layout it writes (rankjax/data/layout.py).

The planted model is re-run from the seed as the oracle for the written records and for the
manifest's Bayes-optimal metrics; scikit-learn recomputes those metrics independently.
"""

import json
import os
import shutil

import numpy as np
import pytest
from sklearn import metrics as skm

from rankjax.config import base_config
from rankjax.data import layout, synthetic, synthetic_retrieval

NUM_TRAIN, NUM_EVAL = 5000, 2000


def _spec(**overrides) -> synthetic.SyntheticSpec:
  c = base_config().data.synthetic
  c.num_train, c.num_eval = NUM_TRAIN, NUM_EVAL
  for key, value in overrides.items():
    c[key] = value
  return synthetic.SyntheticSpec.from_config(c)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """(directory, spec, manifest) of one small generated dataset, shared read-only."""
  spec = _spec()
  directory = tmp_path_factory.mktemp("synthetic") / "data"
  manifest = synthetic.generate(directory, spec)
  return directory, spec, manifest


def _replayed_samples(spec):
  """What generate() draws: the planted model, then the train split, then the eval split."""
  rng = np.random.default_rng(spec.seed)
  planted = synthetic._PlantedModel(spec, rng)
  train = planted.sample(spec.num_train, spec, rng)
  eval_ = planted.sample(spec.num_eval, spec, rng)
  return {"train": train, "eval": eval_}


def _copy(directory, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(directory, copy)
  return copy


# ---------------------------------------------------------------- determinism


def test_same_spec_generates_byte_identical_splits_and_manifest(dataset, tmp_path):
  directory, spec, manifest = dataset
  again = synthetic.generate(tmp_path / "again", spec)
  assert again == manifest
  assert (tmp_path / "again" / layout.MANIFEST).read_text() == (directory / layout.MANIFEST).read_text()
  for entry in manifest["splits"].values():
    assert (tmp_path / "again" / entry["file"]).read_bytes() == (directory / entry["file"]).read_bytes()


def test_different_seed_generates_different_data(dataset, tmp_path):
  directory, spec, manifest = dataset
  other = synthetic.generate(tmp_path / "other", _spec(seed=spec.seed + 1))
  for split, entry in manifest["splits"].items():
    assert other["splits"][split]["sha256"] != entry["sha256"]
    assert (tmp_path / "other" / entry["file"]).read_bytes() != (directory / entry["file"]).read_bytes()


def test_a_validation_split_is_drawn_last_leaving_train_and_eval_byte_identical(dataset, tmp_path):
  directory, spec, manifest = dataset
  with_validation = synthetic.generate(tmp_path / "v", _spec(num_validation=300))
  for split in ("train", "eval"):  # File names, record counts and sha256.
    assert with_validation["splits"][split] == manifest["splits"][split]
  assert with_validation["bayes_optimal_eval_auc"] == manifest["bayes_optimal_eval_auc"]
  assert with_validation["dense_stats"] == manifest["dense_stats"]
  validation = layout.open_split(tmp_path / "v", with_validation, "validation")
  rng = np.random.default_rng(spec.seed)  # The replayed draw: planted model, train, eval, then validation.
  planted = synthetic._PlantedModel(spec, rng)
  planted.sample(spec.num_train, spec, rng)
  planted.sample(spec.num_eval, spec, rng)
  label, dense, cat, _ = planted.sample(300, spec, rng)
  np.testing.assert_array_equal(validation["label"], label)
  np.testing.assert_array_equal(validation["cat"], cat)
  np.testing.assert_array_equal(validation["dense"], dense)


def test_a_retrieval_validation_split_leaves_train_and_eval_byte_identical(tmp_path):
  c = base_config("two_tower").data.synthetic
  c.num_train, c.num_eval = 2000, 200
  c.retrieval.num_users, c.retrieval.num_items = 300, 100
  without = synthetic_retrieval.generate(tmp_path / "a", synthetic_retrieval.RetrievalSpec.from_config(c))
  c.num_validation = 150
  spec = synthetic_retrieval.RetrievalSpec.from_config(c)
  with_validation = synthetic_retrieval.generate(tmp_path / "b", spec)
  for split in ("train", "eval"):
    assert with_validation["splits"][split] == without["splits"][split]
  assert with_validation["retrieval"] == without["retrieval"]
  assert len(layout.open_split(tmp_path / "b", with_validation, "validation")) == 150


# ---------------------------------------------------------------- contents against the planted model


@pytest.mark.parametrize("split", ["train", "eval"])
def test_written_records_equal_the_planted_model_samples(dataset, split):
  directory, spec, manifest = dataset
  label, dense, cat, _ = _replayed_samples(spec)[split]
  records = layout.open_split(directory, manifest, split)
  np.testing.assert_array_equal(records["label"], label)
  np.testing.assert_array_equal(records["dense"], dense)
  np.testing.assert_array_equal(records["cat"], cat)


def test_split_files_hash_to_the_manifest_sha256(dataset):
  directory, _, manifest = dataset
  for entry in manifest["splits"].values():
    assert layout.file_sha256(directory / entry["file"]) == entry["sha256"]


def test_manifest_bayes_optimal_metrics_equal_sklearn_on_the_true_logits(dataset):
  _, spec, manifest = dataset
  label, _, _, logit = _replayed_samples(spec)["eval"]
  assert manifest["bayes_optimal_eval_auc"] == pytest.approx(skm.roc_auc_score(label, logit), rel=1e-12)
  assert manifest["bayes_optimal_eval_logloss"] == pytest.approx(
      skm.log_loss(label, 1.0 / (1.0 + np.exp(-logit))), rel=1e-6)
  assert manifest["eval_positive_rate"] == pytest.approx(np.mean(label, dtype=np.float64), rel=1e-6)


def test_manifest_records_the_spec_and_record_layout(dataset):
  _, spec, manifest = dataset
  assert manifest["source"] == {"kind": "synthetic", **spec.as_dict()}
  assert manifest["vocab_sizes"] == list(spec.vocab_sizes)
  dtype = layout.fields_to_dtype(manifest["fields"])
  assert dtype == layout.ctr_record_dtype(spec.num_dense, len(spec.vocab_sizes))
  assert manifest["record_bytes"] == dtype.itemsize
  assert {s: e["num_records"] for s, e in manifest["splits"].items()} == {"train": NUM_TRAIN, "eval": NUM_EVAL}


@pytest.mark.parametrize("split", ["train", "eval"])
def test_ids_lie_within_each_feature_vocabulary(dataset, split):
  directory, spec, manifest = dataset
  cat = np.asarray(layout.open_split(directory, manifest, split)["cat"])
  assert (cat >= 0).all()
  assert (cat < np.asarray(spec.vocab_sizes)[None, :]).all()


def test_labels_are_binary_and_dense_features_are_log1p_counts(dataset):
  directory, _, manifest = dataset
  records = layout.open_split(directory, manifest, "train")
  assert set(np.unique(records["label"])) <= {0.0, 1.0}
  counts = np.expm1(records["dense"].astype(np.float64))
  # float32 keeps ~7 significant digits of log1p(count), so 1 + count survives to ~1e-6 relative.
  assert (np.abs(counts - np.round(counts)) <= 1e-5 * (1.0 + counts)).all()
  assert (counts >= 0).all()


def test_id_frequencies_are_zipf_heavy_tailed_unlike_a_uniform_draw(dataset):
  directory, spec, manifest = dataset
  feature = spec.vocab_sizes.index(2000)
  vocab = spec.vocab_sizes[feature]
  ids = np.asarray(layout.open_split(directory, manifest, "train")["cat"][:, feature])
  counts = np.bincount(ids, minlength=vocab)
  uniform = np.bincount(np.random.default_rng(0).integers(0, vocab, len(ids)), minlength=vocab)
  assert counts.max() > uniform.max()
  assert np.median(counts) < np.median(uniform)
  # Oracle for the head: the top id's share matches the Zipf pmf of rank 1 within 5 binomial sigmas.
  pmf = np.arange(1, vocab + 1, dtype=np.float64) ** -spec.zipf_exponent
  p_top = pmf[0] / pmf.sum()
  sigma = np.sqrt(len(ids) * p_top * (1 - p_top))
  assert abs(counts.max() - len(ids) * p_top) < 5 * sigma


# ---------------------------------------------------------------- ensure()


def test_ensure_reuses_data_generated_from_the_same_spec(tmp_path):
  spec = _spec()
  directory = tmp_path / "data"
  first = synthetic.ensure(directory, spec)
  files = [directory / layout.MANIFEST] + [directory / e["file"] for e in first["splits"].values()]
  before = {f: f.stat().st_mtime_ns for f in files}
  inode = directory.stat().st_ino
  assert synthetic.ensure(directory, spec) == first
  assert {f: f.stat().st_mtime_ns for f in files} == before
  assert directory.stat().st_ino == inode


def test_ensure_regenerates_data_for_a_changed_spec(tmp_path):
  directory = tmp_path / "data"
  synthetic.ensure(directory, _spec())
  changed = _spec(num_eval=NUM_EVAL // 2)
  manifest = synthetic.ensure(directory, changed)
  assert manifest["source"] == {"kind": "synthetic", **changed.as_dict()}
  assert layout.read_manifest(directory) == manifest
  assert len(layout.open_split(directory, manifest, "eval")) == changed.num_eval


def test_ensure_regenerates_over_an_unreadable_manifest(tmp_path, dataset):
  directory = _copy(dataset[0], tmp_path)
  (directory / layout.MANIFEST).write_text("{not json")
  assert synthetic.ensure(directory, dataset[1]) == dataset[2]


# ---------------------------------------------------------------- layout errors


def test_open_split_rejects_a_truncated_file_naming_it(dataset, tmp_path):
  directory = _copy(dataset[0], tmp_path)
  manifest = dataset[2]
  path = directory / manifest["splits"]["eval"]["file"]
  os.truncate(path, path.stat().st_size - 1)
  with pytest.raises(layout.DataError, match=str(path)):
    layout.open_split(directory, manifest, "eval")


def test_open_split_rejects_a_missing_file_naming_it(dataset, tmp_path):
  directory = _copy(dataset[0], tmp_path)
  manifest = dataset[2]
  path = directory / manifest["splits"]["train"]["file"]
  path.unlink()
  with pytest.raises(layout.DataError, match=str(path)):
    layout.open_split(directory, manifest, "train")


def test_open_split_rejects_an_unknown_split_naming_the_manifest(dataset):
  directory, _, manifest = dataset
  with pytest.raises(layout.DataError, match=str(directory / layout.MANIFEST)):
    layout.open_split(directory, manifest, "no_such_split")


def test_read_manifest_rejects_a_missing_manifest_naming_its_path(tmp_path):
  with pytest.raises(layout.DataError, match=str(tmp_path / layout.MANIFEST)):
    layout.read_manifest(tmp_path)


def test_read_manifest_rejects_invalid_json_naming_its_path(tmp_path):
  (tmp_path / layout.MANIFEST).write_text('{"format": ')
  with pytest.raises(layout.DataError, match=str(tmp_path / layout.MANIFEST)):
    layout.read_manifest(tmp_path)


def test_read_manifest_rejects_another_format_naming_its_path(tmp_path):
  (tmp_path / layout.MANIFEST).write_text(json.dumps({"format": "csv", "format_version": 1}))
  with pytest.raises(layout.DataError, match=str(tmp_path / layout.MANIFEST)):
    layout.read_manifest(tmp_path)


def test_record_dtype_round_trips_through_manifest_fields():
  dtype = layout.ctr_record_dtype(num_dense=3, num_sparse=5)
  assert layout.fields_to_dtype(json.loads(json.dumps(layout.dtype_to_fields(dtype)))) == dtype
