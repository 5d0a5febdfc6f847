"""Learning to rank with categorical features: `rankjax data table --lists` groups a table's rows
into query lists (checked against the per-row conversion of the same file), and the ranking task
looks each document's ids up in the embedding engine: a planted per-document effect is learned
only through the tables; 2x4-mesh steps equal one device's; the exported scorer matches the
trainer bit for bit."""

import json

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import REPO, assert_same_trained_state
from rankjax import train as train_lib
from rankjax.cli import data as data_cli
from rankjax.config import load_config_file
from rankjax.data import layout
from rankjax.export import artifact
from test_export import _assert_bitwise_parity, _trained
from test_train_step import run_steps

SPEC = {"label": "rel", "dense": ["bm25"], "qid": "query",
        "categorical": [{"name": "doc", "num_rows": 400}, {"name": "brand", "num_rows": 16}]}


def _rows(num_queries: int, seed: int = 0, max_docs: int = 8) -> dict:
  """Query lists over 300 documents with a planted quality each: relevance follows the document's
  quality (seen only through its id); bm25 is noise."""
  rng = np.random.default_rng(seed)
  quality = rng.normal(size=300)
  rows = {"query": [], "rel": [], "bm25": [], "doc": [], "brand": []}
  for q in range(num_queries):
    docs = rng.choice(300, int(rng.integers(2, max_docs + 1)), replace=False)
    for d in docs:
      rows["query"].append(q)
      rows["rel"].append(int(np.clip(np.round(quality[d] + 1 + 0.3 * rng.normal()), 0, 3)))
      rows["bm25"].append(float(rng.lognormal()))
      rows["doc"].append(f"doc{d}")
      rows["brand"].append(int(d % 7))
  return rows


def _convert(tmp_path, rows, name, *args, spec=SPEC):
  source = tmp_path / f"{name}.parquet"
  pq.write_table(pa.table(rows), source, row_group_size=7)  # Queries cross batch boundaries.
  (tmp_path / f"{name}.json").write_text(json.dumps(spec))
  return data_cli.main(["table", "--input", str(source), "--output", str(tmp_path / name),
                        "--spec", str(tmp_path / f"{name}.json"), *map(str, args)])


def _records(directory, split):
  return layout.open_split(directory, layout.read_manifest(directory), split)[:]


def _grouped(rows_records, max_list_size):
  """The per-row records grouped by consecutive qid, as list records would hold them."""
  lists = []
  starts = np.flatnonzero(np.r_[True, rows_records["qid"][1:] != rows_records["qid"][:-1]])
  for start, end in zip(starts, np.r_[starts[1:], len(rows_records)]):
    lists.append(rows_records[start:min(end, start + max_list_size)])
  return lists


@pytest.mark.parametrize("max_list_size", [None, 5])
def test_lists_hold_the_rows_of_each_query_as_the_row_conversion_writes_them(tmp_path, max_list_size):
  rows = _rows(40)
  assert _convert(tmp_path, rows, "rows", "--eval-fraction", 0.25) == 0
  cap = ["--max-list-size", max_list_size] if max_list_size else []
  assert _convert(tmp_path, rows, "lists", "--lists", "--eval-fraction", 0.25, *cap) == 0
  manifest = layout.read_manifest(tmp_path / "lists")
  longest = max(np.bincount(rows["query"]))
  size = max_list_size or longest
  assert manifest["max_list_size"] == size and manifest["lists"]["longest_query"] == longest
  per_row = np.concatenate([_records(tmp_path / "rows", "train"), _records(tmp_path / "rows", "eval")])
  expected = _grouped(per_row, size)
  lists = np.concatenate([_records(tmp_path / "lists", "train"), _records(tmp_path / "lists", "eval")])
  assert len(lists) == len(expected) == 40
  for record, want in zip(lists, expected):
    n = len(want)
    assert record["qid"] == want["qid"][0] and record["mask"].tolist() == [1] * n + [0] * (size - n)
    np.testing.assert_array_equal(record["relevance"][:n], want["label"])
    np.testing.assert_array_equal(record["features"][:n], want["dense"])
    np.testing.assert_array_equal(record["cat"][:n], want["cat"])
    assert (record["cat"][n:] == -1).all() and (record["features"][n:] == 0).all()
  dropped = sum(max(0, c - size) for c in np.bincount(rows["query"]))
  assert manifest["lists"]["documents_truncated"] == dropped
  assert manifest["ingest"]["rows_written"] == len(rows["query"])
  # The query straddling the eval-fraction row boundary is whole in train; eval starts after it.
  train_queries = _records(tmp_path / "lists", "train")["qid"]
  boundary_query = per_row["qid"][len(_records(tmp_path / "rows", "train")) - 1]
  assert train_queries[-1] == boundary_query
  kept = _records(tmp_path / "lists", "train")[-1]["mask"].sum()
  assert kept == min(size, np.count_nonzero(np.asarray(rows["query"]) == boundary_query))
  stats = manifest["feature_stats"]  # Over the documents written to the train split.
  documents = _records(tmp_path / "lists", "train")
  written = documents["features"][documents["mask"] == 1].astype(np.float64)
  np.testing.assert_allclose(stats["mean"], written.mean(axis=0), rtol=1e-9)


@pytest.mark.parametrize("change, message", [
    (lambda rows, spec: (dict(rows, query=rows["query"][5:] + rows["query"][:5]), spec), "appears again"),
    (lambda rows, spec: (rows, {k: v for k, v in spec.items() if k != "qid"}), "qid"),
    (lambda rows, spec: (dict(rows, rel2=rows["rel"]), dict(spec, label=["rel", "rel2"])), "one label"),
])
def test_bad_list_input_is_one_line_naming_the_problem(tmp_path, capsys, change, message):
  rows, spec = change(_rows(10), SPEC)
  assert _convert(tmp_path, rows, "lists", "--lists", "--eval-fraction", 0.25, spec=spec) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1


def _ranking_config(data_dir, steps):
  config = load_config_file(str(REPO / "configs" / "ltr_letor.py"))
  config.data.path = str(data_dir)
  config.train.progress_bar, config.train.steps, config.train.log_every = False, steps, steps
  config.train.batch_size, config.train.eval_batch_size = 16, 32
  config.train.dense_learning_rate = 3e-3
  config.embedding.learning_rate = 0.1
  config.model.hidden, config.model.embed_dim = (32,), 8
  return config


@pytest.fixture(scope="module")
def list_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("lists")
  rows = _rows(600)
  assert _convert(root, rows, "lists", "--lists", "--eval-fraction", 0.2) == 0
  assert _convert(root, rows, "dense_only", "--lists", "--eval-fraction", 0.2,
                  spec={"label": "rel", "dense": ["bm25"], "qid": "query",
                        "categorical": [{"name": "brand", "num_rows": 16}]}) == 0
  return root


@pytest.mark.slow
def test_a_per_document_effect_is_learned_through_the_embedding_tables(list_data, tmp_path):
  one = jax.devices()[:1]  # Learning, not sharding (checked below): one device is faster here.
  with_ids = train_lib.train(_ranking_config(list_data / "lists", 300), tmp_path / "ids", one, log=lambda *_: None)
  without = train_lib.train(_ranking_config(list_data / "dense_only", 300), tmp_path / "brand", one,
                            log=lambda *_: None)
  assert with_ids["eval_ndcg@10"] > without["eval_ndcg@10"] + 0.05, (with_ids, without)


def test_list_steps_with_tables_on_a_2x4_mesh_equal_one_device(list_data, tmp_path):
  ref_config, config = _ranking_config(list_data / "lists", 3), _ranking_config(list_data / "lists", 3)
  ref_config.mesh.shape, config.mesh.shape = (1, 1), (2, 4)
  ref_config.train.list_size = config.train.list_size = 4  # Sampled documents carry their ids along.
  # SGD: the score bias has no gradient under softmax (shift invariance) but rounding noise,
  # which Adam would scale up to full steps differently on each mesh.
  ref_config.train.dense_optimizer = config.train.dense_optimizer = "sgd"
  ref_exp, ref_state, ref_losses = run_steps(ref_config, tmp_path / "one", jax.devices()[:1], 3)
  exp, state, losses = run_steps(config, tmp_path / "mesh", jax.devices(), 3)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_same_trained_state(exp, state, ref_exp, ref_state)


def test_exported_list_scorer_with_tables_matches_the_trainer_bit_for_bit(list_data, tmp_path):
  config = _ranking_config(list_data / "lists", 3)
  config.eval.block_rows = 1
  data_dir = _trained(config, tmp_path / "run")
  artifact.export(tmp_path / "run", tmp_path / "model")
  _assert_bitwise_parity(tmp_path / "run", tmp_path / "model", data_dir, batch_size=5)


def test_raw_ids_in_lists_train_dynamic_tables_and_export_as_the_trainer(tmp_path):
  """`--lists --vocab raw`: each document's ids keep their 64 bits (cat / cat_hi as the per-row
  raw conversion writes them, -1 in both on padding documents); the ranking task gives the raw
  features dynamic tables (no collisions, sized by their distinct train ids), trains, and its
  exported scorer matches the trainer bit for bit."""
  rows = _rows(60, max_docs=6)
  assert _convert(tmp_path, rows, "rows", "--eval-fraction", 0.25, "--vocab", "raw") == 0
  assert _convert(tmp_path, rows, "lists", "--lists", "--eval-fraction", 0.25, "--vocab", "raw") == 0
  manifest = layout.read_manifest(tmp_path / "lists")
  assert manifest["raw_ids"] == [True, True]
  assert manifest["vocab_sizes"] == layout.read_manifest(tmp_path / "rows")["vocab_sizes"]
  per_row = np.concatenate([_records(tmp_path / "rows", "train"), _records(tmp_path / "rows", "eval")])
  lists = np.concatenate([_records(tmp_path / "lists", "train"), _records(tmp_path / "lists", "eval")])
  size = manifest["max_list_size"]
  for record, want in zip(lists, _grouped(per_row, size), strict=True):
    n = len(want)
    np.testing.assert_array_equal(record["cat"][:n], want["cat"])
    np.testing.assert_array_equal(record["cat_hi"][:n], want["cat_hi"])
    assert (record["cat"][n:] == -1).all() and (record["cat_hi"][n:] == -1).all()
  assert np.any(lists["cat_hi"][lists["mask"] == 1] != 0)  # "doc17" text ids: BLAKE2b, high words set.

  config = _ranking_config(tmp_path / "lists", 3)
  config.eval.block_rows = 1
  data_dir = _trained(config, tmp_path / "run")
  exp, state, losses = run_steps(config, tmp_path / "steps", jax.devices()[:1], 3)
  assert np.all(np.isfinite(losses))
  assert set(exp.task.engine.dynamic) == {"cat_0", "cat_1"}  # Both raw features: dynamic maps.
  artifact.export(tmp_path / "run", tmp_path / "model")
  _assert_bitwise_parity(tmp_path / "run", tmp_path / "model", data_dir, batch_size=5)
