"""Tests for rankjax/data/table.py through `rankjax data table`: Parquet and CSV files made here
with pyarrow, rows computed by hand (rankjax.hashing on the ids), multi-hot padding, qid, several
labels, and malformed rows in strict and skip mode."""

import hashlib
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from helpers import task_batch_spec, tiny_config, train_five_steps_on
from rankjax.cli import data as data_cli
from rankjax.config import ConfigError, base_config
from rankjax.data import layout, pipeline, table
from rankjax.data.hashing import hash_to_rows
from rankjax.tasks.ctr import ClickTask

SPEC = {"label": "click", "dense": ["price", "age"],
        "categorical": [{"name": "user", "num_rows": 100}, {"name": "item", "num_rows": 50}],
        "sequence": [{"name": "history", "num_rows": 30, "max_hotness": 3}], "qid": "query"}

ROWS = {
    "click": [1, 0, 1, 0, 1, 0, 0, 1],
    "price": [1.5, None, 3.0, -2.0, 0.25, float("nan"), 7.0, 8.0],
    "age": [30, 40, None, 20, 10, 50, 60, 70],
    "user": ["alice", "bob", None, "17", "alice", "carol", "bob", "-3"],
    "item": [5, 6, 7, None, 5, 9, 10, 11],
    "history": [[1, 2, 3, 4], [], None, [4, None, 5], [9], [2, 2], [7], [8, 9, 10]],
    "query": [100, 100, 101, 101, 102, 102, 103, 103],
}


def _id(value) -> int:
  """The documented id of a value: an integer as itself, other text by BLAKE2b."""
  try:
    return int(value) & (2 ** 64 - 1)
  except ValueError:
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "little")


def _row(value, num_rows: int) -> int:
  return 0 if value is None else 1 + int(hash_to_rows(np.array([_id(value)], np.uint64), num_rows - 1)[0])


def _expected(rows: dict) -> dict:
  n = len(rows["click"])
  cat = np.full((n, 5), -1, np.int32)
  for i in range(n):
    cat[i, 0] = _row(rows["user"][i], 100)
    cat[i, 1] = _row(rows["item"][i], 50)
    history = [v for v in (rows["history"][i] or []) if v is not None][:3]
    cat[i, 2:2 + len(history)] = [_row(v, 30) for v in history]
  dense = np.array([[0.0 if v is None or v != v else v for v in (rows["price"][i], rows["age"][i])] for i in range(n)])
  return {"label": np.array(rows["click"], np.float32), "dense": dense.astype(np.float32), "cat": cat,
          "qid": np.array(rows["query"], np.int64)}


def _spec_file(tmp_path, spec=SPEC):
  path = tmp_path / "spec.json"
  path.write_text(json.dumps(spec))
  return path


def _cli(*args):
  return data_cli.main(["table", *map(str, args)])


def _split(directory, split):
  return layout.open_split(directory, layout.read_manifest(directory), split)[:]


def _assert_split(records, expected, rows):
  for field in ("label", "dense", "cat", "qid"):
    np.testing.assert_array_equal(records[field], expected[field][rows], err_msg=field)


def _write_parquet(path, rows, row_group_size=3):
  columns = {name: pa.array(values) for name, values in rows.items()}
  columns["user"] = columns["user"].dictionary_encode()  # As pandas writes a categorical column.
  pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
  return path


def _write_csv(path, rows, separator="|"):
  text_rows = dict(rows)
  text_rows["history"] = [None if h is None else separator.join(str(v) for v in h if v is not None)
                          for h in rows["history"]]
  pa_csv.write_csv(pa.table(text_rows), path)
  return path


@pytest.mark.parametrize("name, write", [("t.parquet", _write_parquet), ("t.csv", _write_csv)],
                         ids=["parquet", "csv_with_separated_sequences"])
def test_round_trip_hashes_ids_pads_sequences_and_keeps_qid(tmp_path, name, write):
  source = write(tmp_path / name, ROWS)
  assert _cli("--input", source, "--output", tmp_path / "out", "--spec", _spec_file(tmp_path),
              "--eval-fraction", 0.25) == 0
  expected = _expected(ROWS)
  _assert_split(_split(tmp_path / "out", "train"), expected, slice(0, 6))
  _assert_split(_split(tmp_path / "out", "eval"), expected, slice(6, 8))
  manifest = layout.read_manifest(tmp_path / "out")
  assert manifest["num_dense"] == 2 and manifest["vocab_sizes"] == [100, 50, 30]
  assert manifest["hotness"] == [1, 1, 3] and manifest["labels"] == ["click"]
  assert manifest["sequences_truncated"] == {"history": 1}
  assert manifest["feature_spec"]["qid"] == "query"
  assert layout.fields_to_dtype(manifest["fields"])["qid"] == np.dtype("<i8")


def test_a_list_column_read_with_the_wrong_separator_is_reported(tmp_path, capsys):
  assert _cli("--input", _write_csv(tmp_path / "right.csv", ROWS), "--output", tmp_path / "right", "--spec",
              _spec_file(tmp_path), "--eval-fraction", 0.25) == 0
  assert "warning" not in capsys.readouterr().out
  several = layout.read_manifest(tmp_path / "right")["sequence_rows_with_several_ids"]["history"]
  assert several == sum(len([v for v in h if v is not None]) > 1 for h in ROWS["history"] if h)
  # Written with ',' while the spec says '|': each list is taken as one id, and the run says so.
  assert _cli("--input", _write_csv(tmp_path / "wrong.csv", ROWS, separator=","), "--output", tmp_path / "wrong",
              "--spec", _spec_file(tmp_path), "--eval-fraction", 0.25) == 0
  assert layout.read_manifest(tmp_path / "wrong")["sequence_rows_with_several_ids"] == {"history": 0}
  out = capsys.readouterr().out
  assert "warning: list column 'history': no row holds more than one id" in out and "'|'" in out


def test_min_count_gives_an_exact_vocabulary_of_the_train_rows_with_an_oov_row(tmp_path, capsys):
  from rankjax.data import raw_rows
  from rankjax.data.writer import IngestStats
  spec = dict(SPEC, categorical=[{"name": "user", "min_count": 2}, {"name": "item", "num_rows": 50}],
              sequence=[{"name": "history", "min_count": 2, "max_hotness": 3}])
  source = _write_parquet(tmp_path / "t.parquet", ROWS)
  assert _cli("--input", source, "--output", tmp_path / "out", "--spec", _spec_file(tmp_path, spec),
              "--eval-fraction", 0.25) == 0
  out = tmp_path / "out"
  manifest = layout.read_manifest(out)
  # Train rows 0..5 (eval 6, 7): alice twice, history ids 2 (three times) and 4 (twice).
  assert manifest["vocab_sizes"] == [3, 50, 4]
  assert manifest["vocabularies"]["user"] == {"min_count": 2, "ids_kept": 1, "ids_seen": 4, "oov_lookups_in_train": 3}
  assert manifest["vocabularies"]["history"]["ids_kept"] == 2
  cat = np.concatenate([_split(out, "train")["cat"], _split(out, "eval")["cat"]])
  np.testing.assert_array_equal(cat[:, 0], [2, 1, 0, 1, 2, 1, 1, 1])  # 0 missing, 1 out of vocabulary.
  np.testing.assert_array_equal(cat[:, 2:], [[1, 2, 1], [-1, -1, -1], [-1, -1, -1], [3, 1, -1], [1, -1, -1],
                                             [2, 2, -1], [1, -1, -1], [1, 1, 1]])
  assert manifest["feature_spec"]["categorical"][0] == {"name": "user", "num_rows": 3, "min_count": 2}
  # Raw rows (`rankjax predict --input FILE`) are mapped with the stored vocabulary.
  scored = list(raw_rows.records(source, manifest, out, IngestStats(strict=True)))
  np.testing.assert_array_equal(np.concatenate([r["cat"] for _, r in scored]), cat)
  # A cap keeps the most frequent ids.
  capped = dict(spec, sequence=[{"name": "history", "min_count": 1, "num_rows": 3, "max_hotness": 3}])
  assert _cli("--input", source, "--output", tmp_path / "capped", "--spec", _spec_file(tmp_path, capped),
              "--eval-fraction", 0.25) == 0
  np.testing.assert_array_equal(_split(tmp_path / "capped", "train")["cat"][0, 2:], [1, 2, 1])


@pytest.mark.parametrize("entry, key", [({"name": "user"}, "categorical[0]"),
                                        ({"name": "user", "min_count": -1}, "categorical[0].min_count"),
                                        ({"name": "user", "min_count": 2, "num_rows": 2}, "categorical[0].num_rows")])
def test_bad_vocabulary_keys_name_the_spec_key(tmp_path, entry, key):
  with pytest.raises(layout.DataError, match=re.escape(f"spec key '{key}'")):
    table.spec_from_dict(dict(SPEC, categorical=[entry]), "spec.json")


def test_several_labels_are_one_field_and_the_pipeline_trains_on_the_chosen_one(tmp_path):
  rows = dict(ROWS, buy=[float(i % 3 == 0) for i in range(8)])
  spec = _spec_file(tmp_path, dict(SPEC, label=["click", "buy"]))
  assert _cli("--input", _write_parquet(tmp_path / "t.parquet", rows), "--output", tmp_path / "out",
              "--spec", spec, "--eval-input", _write_parquet(tmp_path / "e.parquet", rows)) == 0
  records = _split(tmp_path / "out", "train")
  assert records["label"].shape == (8, 2)
  np.testing.assert_array_equal(records["label"], np.array([rows["click"], rows["buy"]], np.float32).T)
  manifest = layout.read_manifest(tmp_path / "out")
  assert manifest["labels"] == ["click", "buy"]
  for label_index, column in ((0, "click"), (1, "buy")):
    (batch,) = pipeline.eval_iterator(tmp_path / "out", manifest, global_batch_size=8,
                                      spec=_click_spec(manifest, label_index))
    assert set(batch) == {"label", "dense", "cat", "weight"}  # qid is not a training input.
    np.testing.assert_array_equal(batch["label"], np.array(rows[column], np.float32))
  with pytest.raises(layout.DataError, match="label_index 2"):
    pipeline.eval_iterator(tmp_path / "out", manifest, global_batch_size=8, spec=_click_spec(manifest, 2))


RAW_SPEC = {"label": "click", "dense": ["price", "age"],
            "categorical": [{"name": "user", "raw": True}, {"name": "item", "num_rows": 50}],
            "sequence": [{"name": "history", "raw": True, "max_hotness": 3}], "qid": "query"}


def _raw_words(values):
  ids = np.array(values, np.uint64)
  return (ids & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32), (ids >> np.uint64(32)).astype(np.uint32).view(np.int32)


@pytest.mark.parametrize("name, write", [("t.parquet", _write_parquet), ("t.csv", _write_csv)], ids=["parquet", "csv"])
def test_raw_features_keep_their_64_bit_ids_beside_hashed_ones(tmp_path, name, write):
  from rankjax.data import criteo
  source = write(tmp_path / name, ROWS)
  assert _cli("--input", source, "--output", tmp_path / "out", "--spec", _spec_file(tmp_path, RAW_SPEC),
              "--eval-fraction", 0.25) == 0
  pad = 2 ** 64 - 1
  user = [criteo.MISSING_RAW_ID if v is None else _id(v) for v in ROWS["user"]]
  history = [([_id(v) for v in (h or []) if v is not None][:3] + [pad] * 3)[:3] for h in ROWS["history"]]
  low, high = zip(*(_raw_words([u, *h]) for u, h in zip(user, history)))
  expected = _expected(ROWS)
  for split, rows in (("train", slice(0, 6)), ("eval", slice(6, 8))):
    records = _split(tmp_path / "out", split)
    np.testing.assert_array_equal(records["cat"][:, [0, 2, 3, 4]], np.array(low)[rows])
    np.testing.assert_array_equal(records["cat_hi"][:, [0, 2, 3, 4]], np.array(high)[rows])
    np.testing.assert_array_equal(records["cat"][:, 1], expected["cat"][rows, 1])  # hashed as before
    np.testing.assert_array_equal(records["cat_hi"][:, 1], 0)
    np.testing.assert_array_equal(records["label"], expected["label"][rows])
  manifest = layout.read_manifest(tmp_path / "out")
  assert manifest["raw_ids"] == [True, False, True]
  # Distinct train ids: users alice, bob, 17, carol and the null's id; history 1..5 and 9 (-3 is "-3").
  assert manifest["vocab_sizes"] == [5, 50, len({v for h in history[:6] for v in h if v != pad})]


def test_vocab_raw_keeps_every_hashed_feature_raw_as_the_spec_key_would(tmp_path, capsys):
  """`--vocab raw` on a spec that hashes user and history (and buckets age, counts item) writes the
  dataset of the spec with "raw": true on those two, byte for byte; a spec that hashes nothing is
  an error naming it."""
  source = _write_parquet(tmp_path / "t.parquet", ROWS)
  hashed = dict(SPEC, categorical=[{"name": "user", "num_rows": 100}, {"name": "item", "min_count": 1},
                                   {"name": "age_band", "column": "age", "boundaries": [25, 45]}])
  by_key = dict(hashed, categorical=[{"name": "user", "raw": True}, *hashed["categorical"][1:]],
                sequence=[{"name": "history", "raw": True, "max_hotness": 3}])
  (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
  assert _cli("--input", source, "--output", tmp_path / "flag", "--spec", _spec_file(tmp_path / "a", hashed),
              "--vocab", "raw", "--eval-fraction", 0.25) == 0
  assert _cli("--input", source, "--output", tmp_path / "key", "--spec", _spec_file(tmp_path / "b", by_key),
              "--eval-fraction", 0.25) == 0
  flag, key = layout.read_manifest(tmp_path / "flag"), layout.read_manifest(tmp_path / "key")
  assert flag["raw_ids"] == key["raw_ids"] == [True, False, False, True]
  assert flag["vocab_sizes"] == key["vocab_sizes"] and flag["feature_spec"] == key["feature_spec"]
  for split in ("train", "eval"):
    got, want = _split(tmp_path / "flag", split), _split(tmp_path / "key", split)
    for field in want.dtype.names:
      np.testing.assert_array_equal(got[field], want[field], err_msg=field)
  capsys.readouterr()
  assert _cli("--input", source, "--output", tmp_path / "none", "--spec", _spec_file(tmp_path / "b", by_key),
              "--vocab", "raw") == 2
  assert f"{tmp_path / 'b' / 'spec.json'}: --vocab raw keeps hashed features' ids raw, and the spec hashes none" in (
      capsys.readouterr().err)


def test_raw_ids_reserved_for_a_null_and_padding_are_bad_rows(tmp_path, capsys):
  rows = {k: list(v) for k, v in ROWS.items()}
  rows["user"][3], rows["history"][5] = "-1", [3, -2]
  source = _write_parquet(tmp_path / "t.parquet", rows)
  spec = _spec_file(tmp_path, RAW_SPEC)
  assert _cli("--input", source, "--output", tmp_path / "strict", "--spec", spec, "--eval-fraction", 0.25) == 2
  assert f"{source}:4: {table.RESERVED_ID}" in capsys.readouterr().err
  assert _cli("--input", source, "--output", tmp_path / "skip", "--spec", spec, "--eval-fraction", 0.25,
              "--on-error", "skip") == 0
  assert layout.read_manifest(tmp_path / "skip")["ingest"]["skipped_by_reason"] == {table.RESERVED_ID: 2}


def test_a_model_trains_on_raw_and_hashed_features_of_one_table(tmp_path):
  import jax
  from rankjax.experiment import build
  from test_train_step import run_steps
  from test_dynamic_tables import _map_of
  assert _cli("--input", _write_parquet(tmp_path / "t.parquet", ROWS), "--output", tmp_path / "out",
              "--spec", _spec_file(tmp_path, RAW_SPEC), "--eval-fraction", 0.25) == 0
  config = tiny_config(batch_size=4, eval_batch_size=8)
  config.data.path = str(tmp_path / "out")
  config.mesh.shape = (1, 1)
  exp, state, losses = run_steps(config, tmp_path / "run", jax.devices()[:1], 3)
  engine = exp.task.engine
  assert {n: d.spec.wide for n, d in engine.dynamic.items()} == {"cat_0": True, "cat_2": True}
  assert np.all(np.isfinite(losses))
  held = _map_of(state.embedding["dynamic"]["cat_0"])
  assert {_id("alice"), _id("bob"), _id("17")} <= set(held)
  # Row ids keep their range check; a raw id's words take any value (bound 0).
  assert exp.task.batch_spec["cat"].id_bounds == (0, 50, 0, 0, 0)
  config.eval.group_feature = "item"  # GAUC over a feature with rows
  assert build(config, None, jax.devices()[:1], manifest=exp.manifest).task.group_slot == 1
  config.eval.group_feature = "user"
  with pytest.raises(ConfigError, match="raw 64-bit ids") as err:
    build(config, None, jax.devices()[:1], manifest=exp.manifest)
  assert err.value.key == "eval.group_feature"
  config.eval.group_feature = ""
  config.embedding.overrides = ("user:kind=static",)
  with pytest.raises(ConfigError, match="raw 64-bit ids"):
    build(config, None, jax.devices()[:1], manifest=exp.manifest)


def test_embedding_overrides_and_the_gauc_group_may_name_the_spec_columns(tmp_path):
  import jax
  from rankjax.experiment import build
  spec = _spec_file(tmp_path)
  assert _cli("--input", _write_parquet(tmp_path / "t.parquet", ROWS), "--output", tmp_path / "out",
              "--spec", spec, "--eval-input", _write_parquet(tmp_path / "e.parquet", ROWS)) == 0
  manifest = layout.read_manifest(tmp_path / "out")
  config = tiny_config()
  config.mesh.shape = (1, 1)
  config.embedding.overrides = ("user:optimizer=sgd", "history:initializer=zeros", "cat_1:optimizer=sgd")
  engine = build(config, None, jax.devices()[:1], manifest=manifest).task.engine
  tables = {t.name: t for t in engine.user_tables}
  assert (tables["cat_0"].optimizer, tables["cat_1"].optimizer, tables["cat_2"].initializer) == ("sgd", "sgd", "zeros")
  config.embedding.overrides = ("price:optimizer=sgd",)  # A dense column has no table.
  with pytest.raises(ConfigError, match="no table 'price'.*columns: user, item, history"):
    build(config, None, jax.devices()[:1], manifest=manifest)
  config.embedding.overrides = ()
  config.eval.group_feature = "item"  # GAUC per item: the column names the feature.
  assert build(config, None, jax.devices()[:1], manifest=manifest).task.group_slot == 1
  config.eval.group_feature = "price"
  with pytest.raises(ConfigError, match="eval.group_feature.*or a column: user, item, history"):
    build(config, None, jax.devices()[:1], manifest=manifest)


def _click_spec(manifest, label_index):
  """The batch the ctr task trains on with data.label_index=label_index."""
  config = tiny_config()
  config.data.label_index = label_index
  return task_batch_spec(config, manifest)


# ---------------------------------------------------------------- malformed rows


def _bad_rows():
  rows = {name: list(values) for name, values in ROWS.items()}
  rows["click"][2] = None  # Row 3 (CSV line 4): missing label.
  rows["query"][5] = None  # Row 6 (CSV line 7): missing qid.
  return rows


def test_strict_parquet_names_the_row_of_a_null_label(tmp_path, capsys):
  source = _write_parquet(tmp_path / "t.parquet", _bad_rows())
  assert _cli("--input", source, "--output", tmp_path / "out", "--spec", _spec_file(tmp_path)) == 2
  assert capsys.readouterr().err.strip() == f"{source}:3: missing label: 'click=None'"
  assert not (tmp_path / "out" / layout.MANIFEST).exists()


def test_strict_csv_names_the_line_of_a_row_with_too_few_columns(tmp_path, capsys):
  source = _write_csv(tmp_path / "t.csv", ROWS)
  lines = source.read_text().splitlines()
  lines[5] = "1,2"
  source.write_text("\n".join(lines) + "\n")
  assert _cli("--input", source, "--output", tmp_path / "out", "--spec", _spec_file(tmp_path)) == 2
  assert capsys.readouterr().err.strip() == f"{source}:6: wrong column count: '1,2'"


def test_strict_csv_names_a_non_numeric_dense_value(tmp_path, capsys):
  source = _write_csv(tmp_path / "t.csv", ROWS)
  source.write_text(source.read_text().replace("0.25", "cheap"))
  assert _cli("--input", source, "--output", tmp_path / "out", "--spec", _spec_file(tmp_path)) == 2
  assert capsys.readouterr().err.strip() == f"{source}:6: non-numeric dense value: \"price='cheap'\""


def test_strict_csv_names_a_non_integer_qid(tmp_path, capsys):
  rows = dict(ROWS, query=[str(q) for q in ROWS["query"]])
  rows["query"][1] = "q7"
  source = _write_csv(tmp_path / "t.csv", rows)
  assert _cli("--input", source, "--output", tmp_path / "out", "--spec", _spec_file(tmp_path)) == 2
  assert capsys.readouterr().err.strip() == f"{source}:3: non-integer qid: \"query='q7'\""


def test_skip_mode_counts_each_reason_and_read_equals_written_plus_skipped(tmp_path, capsys):
  source = _write_csv(tmp_path / "t.csv", _bad_rows())
  lines = source.read_text().splitlines()
  lines[2] = "only,three,fields"  # Row 2.
  lines.insert(5, "")  # An empty line: every column null, so its label is missing.
  source.write_text("\n".join(lines) + "\n")
  empty = tmp_path / "u.csv"
  empty.write_text("")
  assert _cli("--input", tmp_path / "*.csv", "--output", tmp_path / "out", "--spec", _spec_file(tmp_path),
              "--on-error", "skip", "--eval-fraction", 0.3) == 0
  ingest = layout.read_manifest(tmp_path / "out")["ingest"]
  assert ingest["skipped_by_reason"] == {"missing label": 2, "missing qid": 1, "wrong column count": 1}
  assert ingest["rows_read"] == 9 and ingest["rows_written"] == 5 and ingest["rows_skipped"] == 4
  assert ingest["file_errors"] == [{"file": str(empty), "line": 0, "reason": "empty file"}]
  expected = _expected(ROWS)
  kept = [0, 3, 4, 6, 7]
  written = np.concatenate([_split(tmp_path / "out", "train"), _split(tmp_path / "out", "eval")])
  _assert_split(written, expected, kept)
  assert "skipped 2 rows: missing label" in capsys.readouterr().out


@pytest.mark.parametrize("spec, key", [
    ({"dense": ["price"], "categorical": [{"name": "user", "num_rows": 10}]}, "label"),
    (dict(SPEC, categorical=[{"name": "user", "num_rows": 1}]), "categorical[0].num_rows"),
    (dict(SPEC, sequence=[{"name": "history", "num_rows": 10}]), "sequence[0]"),
    (dict(SPEC, extra=1), "extra"),
    (dict(SPEC, dense=["price", "price"]), "price"),
    (dict(SPEC, categorical=[{"name": "b", "column": "age", "boundaries": [3, 1]}]), "categorical[0].boundaries"),
    (dict(SPEC, categorical=[{"name": "b", "column": "age", "boundaries": [1, "x"]}]), "categorical[0].boundaries"),
    (dict(SPEC, categorical=[{"name": "b", "column": "age", "boundaries": [1], "num_rows": 5}]),
     "categorical[0].num_rows"),
    (dict(SPEC, categorical=[{"name": "b", "column": "age", "boundaries": [1], "min_count": 2}]),
     "categorical[0].min_count"),
    (dict(SPEC, categorical=[{"name": "b", "column": "click", "boundaries": [1]}]), "categorical[0].column"),
    (dict(SPEC, categorical=[{"name": "b", "column": "age", "num_rows": 9}]), "categorical[0].column"),
    (dict(SPEC, categorical=[{"name": "user", "raw": True, "min_count": 2}]), "categorical[0].raw"),
    (dict(SPEC, sequence=[{"name": "history", "raw": "yes", "max_hotness": 3}]), "sequence[0].raw"),
])
def test_bad_spec_exits_2_naming_the_key(tmp_path, capsys, spec, key):
  source = _write_parquet(tmp_path / "t.parquet", ROWS)
  assert _cli("--input", source, "--output", tmp_path / "out", "--spec", _spec_file(tmp_path, spec)) == 2
  err = capsys.readouterr().err.strip()
  assert f"spec key '{key}'" in err and len(err.splitlines()) == 1


def test_a_dense_column_is_also_bucketised_into_categorical_features(tmp_path, capsys):
  """`age` is dense and two bucketised features; `price` only bucketised (its own name); null and
  NaN take row 0, a value on a boundary goes to the bucket above it."""
  spec = {"label": "click", "dense": ["age"],
          "categorical": [{"name": "age_band", "column": "age", "boundaries": [18, 35, 50]},
                          {"name": "age_coarse", "column": "age", "boundaries": [40]},
                          {"name": "price", "boundaries": [0.0, 2.0, 7.0]}, {"name": "user", "num_rows": 100}]}
  rows = dict(ROWS, age=[30, 40, None, 18, 10, 50, 60, 70])
  for name, write in (("t.parquet", _write_parquet), ("t.csv", _write_csv)):
    out = tmp_path / name.replace(".", "_")
    assert _cli("--input", write(tmp_path / name, rows), "--output", out, "--spec", _spec_file(tmp_path, spec),
                "--eval-fraction", 0.25) == 0
    records = np.concatenate([_split(out, "train"), _split(out, "eval")])
    ages = np.array([np.nan if a is None else a for a in rows["age"]], float)
    prices = np.array([np.nan if v is None else v for v in rows["price"]], float)
    bucket = lambda x, b: np.where(np.isnan(x), 0, 1 + np.searchsorted(b, x, side="right"))  # noqa: E731
    np.testing.assert_array_equal(records["cat"][:, 0], bucket(ages, [18, 35, 50]))
    np.testing.assert_array_equal(records["cat"][:, 1], bucket(ages, [40]))
    np.testing.assert_array_equal(records["cat"][:, 2], bucket(prices, [0.0, 2.0, 7.0]))
    np.testing.assert_array_equal(records["dense"][:, 0], np.nan_to_num(ages))
    manifest = layout.read_manifest(out)
    assert manifest["vocab_sizes"] == [5, 3, 5, 100]
    assert manifest["feature_spec"]["categorical"][0] == {"name": "age_band", "num_rows": 5, "column": "age",
                                                         "boundaries": [18.0, 35.0, 50.0]}
  bad = {k: v for k, v in dict(rows, price=["1", "x", "2", "3", "4", "5", "6", "7"]).items() if k != "history"}
  pa_csv.write_csv(pa.table(bad), tmp_path / "bad.csv")
  assert _cli("--input", tmp_path / "bad.csv", "--output", tmp_path / "bad", "--spec", _spec_file(tmp_path, spec)) == 2
  assert capsys.readouterr().err.strip() == f"{tmp_path / 'bad.csv'}:3: non-numeric dense value: \"price='x'\""


def test_a_spec_column_missing_from_the_file_is_named(tmp_path, capsys):
  source = _write_parquet(tmp_path / "t.parquet", {k: v for k, v in ROWS.items() if k != "age"})
  assert _cli("--input", source, "--output", tmp_path / "out", "--spec", _spec_file(tmp_path)) == 2
  assert "no column 'age'" in capsys.readouterr().err


def test_feature_spec_record_dtype_follows_the_spec():
  spec = table.FeatureSpec(labels=("a", "b"), dense=("x",), categorical=(table.CategoricalFeature("u", 10),),
                           sequence=(table.SequenceFeature("s", 10, 4),))
  assert spec.record_dtype() == np.dtype([("label", "<f4", (2,)), ("dense", "<f4", (1,)), ("cat", "<i4", (5,))])
  assert spec.hotness == [1, 4] and spec.vocab_sizes == [10, 10]


# ---------------------------------------------------------------- training on the output


@pytest.mark.slow
def test_rankjax_train_runs_on_a_converted_table(tmp_path):
  rng = np.random.default_rng(0)
  n = 3000
  rows = {"click": rng.integers(0, 2, n).tolist(), "price": rng.lognormal(3.0, 1.5, n).tolist(),
          "age": rng.integers(0, 90, n).tolist(), "user": [f"u{i}" for i in rng.integers(0, 500, n)], "item": rng.integers(0, 300, n).tolist(),
          "history": [rng.integers(0, 300, int(k)).tolist() for k in rng.integers(0, 6, n)],
          "query": (np.arange(n) // 10).tolist()}
  assert _cli("--input", _write_parquet(tmp_path / "t.parquet", rows), "--output", tmp_path / "data",
              "--spec", _spec_file(tmp_path), "--eval-fraction", 0.2) == 0
  summary = train_five_steps_on("table_example.py", tmp_path / 'data', tmp_path)
  assert summary["steps"] == 5 and 0 < summary["eval_auc"] < 1


def _behaviour_rows(n: int, seed: int = 0) -> dict:
  """A feed log: click and (only after a click) buy labels, a user, the shown item and the
  user's recently clicked items (a list column of the same item ids)."""
  rng = np.random.default_rng(seed)
  click = rng.integers(0, 2, n)
  return {"click": click.tolist(), "buy": (click * rng.integers(0, 2, n)).tolist(), "price": rng.lognormal(3.0, 1.5, n).tolist(),
          "age": rng.integers(0, 90, n).tolist(), "user": [f"u{i}" for i in rng.integers(0, 500, n)],
          "item": rng.integers(0, 300, n).tolist(),
          "history": [rng.integers(0, 300, int(k)).tolist() for k in rng.integers(0, 6, n)]}


BEHAVIOUR_SPEC = {"label": ["click", "buy"], "dense": ["price", "age"],
                  "categorical": [{"name": "user", "num_rows": 500}, {"name": "item", "num_rows": 200}],
                  "sequence": [{"name": "history", "num_rows": 200, "max_hotness": 5}]}


def test_dense_stats_in_the_manifest_are_the_train_splits(tmp_path):
  rows = _behaviour_rows(400)
  assert _cli("--input", _write_parquet(tmp_path / "t.parquet", rows), "--output", tmp_path / "data",
              "--spec", _spec_file(tmp_path, BEHAVIOUR_SPEC), "--eval-fraction", 0.25) == 0
  stats = layout.read_manifest(tmp_path / "data")["dense_stats"]
  train = np.array([rows["price"][:300], rows["age"][:300]], np.float32).T.astype(np.float64)
  assert stats["count"] == 300
  np.testing.assert_allclose(stats["mean"], train.mean(axis=0), rtol=1e-9)
  np.testing.assert_allclose(stats["std"], train.std(axis=0), rtol=1e-9)


@pytest.mark.slow
def test_sequence_and_multi_task_zoo_models_train_on_a_converted_table(tmp_path):
  assert _cli("--input", _write_parquet(tmp_path / "t.parquet", _behaviour_rows(3000)), "--output", tmp_path / "data",
              "--spec", _spec_file(tmp_path, BEHAVIOUR_SPEC), "--eval-fraction", 0.2) == 0
  (tmp_path / "din").mkdir(), (tmp_path / "esmm").mkdir()
  din = train_five_steps_on("din.py", tmp_path / "data", tmp_path / "din", "--config.model.target_feature=cat_1",
                            "--config.model.history_feature=cat_2", "--config.eval.group_feature=cat_0")
  assert din["steps"] == 5 and 0 < din["eval_auc"] < 1 and din["eval_gauc_groups"] > 0
  esmm = train_five_steps_on("esmm.py", tmp_path / "data", tmp_path / "esmm")
  assert 0 < esmm["eval_click/auc"] < 1 and 0 < esmm["eval_conversion/auc"] < 1
  # task.normalize=auto took log1p for the long-tailed price, standardisation for age, and said so.
  assert din["normalization"] == esmm["normalization"] == {"mode": "auto", "log1p_features": [0]}


def test_a_history_hashed_into_other_rows_than_its_target_is_a_config_error(tmp_path):
  spec = dict(BEHAVIOUR_SPEC, sequence=[{"name": "history", "num_rows": 300, "max_hotness": 5}])
  assert _cli("--input", _write_parquet(tmp_path / "t.parquet", _behaviour_rows(200)), "--output", tmp_path / "data",
              "--spec", _spec_file(tmp_path, spec), "--eval-fraction", 0.2) == 0
  config = tiny_config()
  config.model = base_config("din").model
  config.model.target_feature, config.model.history_feature = "cat_1", "cat_2"
  with pytest.raises(ConfigError, match="model.history_feature.*same num_rows"):
    ClickTask.embedding_tables(config, layout.read_manifest(tmp_path / "data"))


def _dataset_bytes(directory):
  """Every file of a dataset directory (the manifest without its source and ingest counters' order)."""
  out = {}
  for path in sorted(directory.iterdir()):
    if path.is_file():
      out[path.name] = path.read_bytes()
  manifest = json.loads(out.pop("manifest.json"))
  return out, manifest


@pytest.mark.parametrize("eval_fraction", [0.3, None], ids=["eval_fraction", "eval_files"])
def test_several_workers_write_the_same_dataset_as_one(tmp_path, eval_fraction):
  rows = _behaviour_rows(900, seed=1)
  rows["click"][5] = None  # Malformed rows in two files, skipped and counted.
  rows["click"][400] = None
  inputs = []
  for k, part in enumerate((slice(0, 250), slice(250, 600), slice(600, 900))):
    piece = {name: values[part] for name, values in rows.items()}
    write = _write_parquet if k != 1 else _write_csv
    inputs.append(write(tmp_path / f"in{k}.{'csv' if k == 1 else 'parquet'}", piece))
  (tmp_path / "inputs").mkdir()
  for path in inputs:
    path.rename(tmp_path / "inputs" / path.name)
  split = ["--eval-fraction", eval_fraction] if eval_fraction else [
      "--eval-input", _write_parquet(tmp_path / "eval.parquet", _behaviour_rows(100, seed=2))]
  outputs = {}
  for workers in (1, 3):
    out = tmp_path / f"out{workers}"
    assert _cli("--input", tmp_path / "inputs" / "*", "--output", out, "--spec", _spec_file(tmp_path, BEHAVIOUR_SPEC),
                "--on-error", "skip", "--max-records-per-shard", 200, "--workers", workers, *split) == 0
    outputs[workers] = _dataset_bytes(out)
  (files1, manifest1), (files3, manifest3) = outputs[1], outputs[3]
  assert files1 == files3 and len(files1) > 2
  assert manifest1 == manifest3
  assert manifest1["ingest"]["rows_skipped"] == 2 and manifest1["ingest"]["rows_read"] == 900 + (not eval_fraction) * 100


def test_several_workers_in_strict_mode_name_the_first_bad_row_in_input_order(tmp_path, capsys):
  (tmp_path / "inputs").mkdir()
  for k in range(3):
    rows = _behaviour_rows(50, seed=k)
    if k:  # Files 1 and 2 each hold a row without a label; file 1's is the one one worker meets first.
      rows["click"][10 + k] = None
    _write_parquet(tmp_path / "inputs" / f"in{k}.parquet", rows)
  assert _cli("--input", tmp_path / "inputs" / "*", "--output", tmp_path / "out", "--spec",
              _spec_file(tmp_path, BEHAVIOUR_SPEC), "--eval-fraction", 0.2, "--workers", 3) == 2
  err = capsys.readouterr().err
  assert "in1.parquet:12" in err and "missing label" in err
