"""Serving: `rankjax export` -> `rankjax predict`. An exported model scores every eval record bit
for bit as the trainer did (eval.write_scores), for every zoo model, DLRM-DCNv2 and the LTR
scorer, at any request batch size; exporting from a 2x4 mesh gathers the tables exactly; the
artifact scores in a process that never imports rankjax; quantized tables change scores by the
measured, recorded amount; bad input gets one-line errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import REPO, small_letor_dataset, tiny_config
from rankjax import train as train_lib
from rankjax.config import load_config_file
from rankjax.data import layout, pipeline
from rankjax.export import artifact
from rankjax.export import weights as weights_lib
from rankjax.export.serving import ServingModel, read_batches
from test_zoo import INTERACTION_MODELS, MULTITASK_MODELS, SEQUENCE_MODELS, zoo_config


def _trained(config, workdir):
  """Trains `config` in `workdir` writing eval_scores.parquet; returns the run's data directory."""
  config.eval.write_scores = True
  train_lib.train(config, workdir, log=lambda *_: None)
  return config.data.path or str(workdir / "data" / "synthetic")


def _scores(model: ServingModel, data_dir, batch_size: int) -> tuple[np.ndarray, dict[str, list]]:
  """(rows, head column -> scores) of the model over the eval split, `batch_size` records a call."""
  task = artifact.serving_task(model.directory)
  records, indices = pipeline.open_checked(data_dir, layout.read_manifest(data_dir), "eval", task.batch_spec)
  rows, columns = [], {}
  for batch_rows, inputs in read_batches(records, indices, task.batch_spec, tuple(model.inputs),
                                         model.aligned(batch_size)):
    rows.append(batch_rows)
    for head, values in model.score(inputs).items():
      if "mask" in inputs:
        values = [v[m > 0] for v, m in zip(values, inputs["mask"])]
      columns.setdefault(head, []).extend(list(values))
  return np.concatenate(rows), columns


def _assert_bitwise_parity(workdir, model_dir, data_dir, batch_size):
  trainer = pq.read_table(workdir / "eval_scores.parquet").to_pydict()
  model = ServingModel(model_dir)
  rows, columns = _scores(model, data_dir, batch_size)
  np.testing.assert_array_equal(trainer["row"], rows)
  names = ["score"] if len(model.heads) == 1 else [f"score_{h}" for h in model.heads]
  for name, head in zip(names, model.heads):
    expected = [np.asarray(v, np.float32) for v in trainer[name]]
    assert len(expected) == len(columns[head])
    for e, got in zip(expected, columns[head]):
      assert np.array_equal(e, np.asarray(got, np.float32)), (head, e, got)


ZOO = ("logreg", *INTERACTION_MODELS, *MULTITASK_MODELS, *SEQUENCE_MODELS)


@pytest.mark.parametrize("name", ZOO)
def test_exported_zoo_model_scores_eval_records_bit_for_bit_as_the_trainer(name, tmp_path):
  config = zoo_config(name)
  config.eval.block_rows = 32  # Each device scores its 128 rows of an eval batch in 4 blocks.
  data_dir = _trained(config, tmp_path / "run")
  artifact.export(tmp_path / "run", tmp_path / "model")
  _assert_bitwise_parity(tmp_path / "run", tmp_path / "model", data_dir, batch_size=300)


@pytest.mark.parametrize("config_name", ("dlrm_dcnv2_mlperf.py", "ltr_mslr.py"))
def test_exported_dcnv2_and_ltr_scorer_match_the_trainer_bit_for_bit(config_name, tmp_path):
  config = load_config_file(str(REPO / "configs" / config_name))
  config.train.progress_bar, config.train.steps = False, 3
  if config.task.name == "ranking":
    config.data.path = small_letor_dataset(tmp_path)
    config.train.batch_size, config.train.eval_batch_size, config.eval.block_rows = 8, 16, 1
  else:  # The MLPerf shape at test size.
    config.data.path, config.data.row_scale = "", 1.0
    s = config.data.synthetic
    s.num_train, s.num_eval, s.vocab_sizes, s.hotness = 4096, 1024, (50, 20, 100, 7, 30, 60), (1, 2, 1, 3, 1, 1)
    s.num_validation = 512
    config.model.embed_dim, config.model.bottom_mlp, config.model.top_mlp = 8, (16, 8), (32, 16, 1)
    config.embedding.overrides = ()
    config.train.batch_size, config.train.eval_batch_size = 256, 512
  data_dir = _trained(config, tmp_path / "run")
  if config.task.name == "ranking":  # The fifth feature is heavy-tailed: the export must apply log1p too.
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["normalization"]["log1p_features"] == [4]
  artifact.export(tmp_path / "run", tmp_path / "model")
  _assert_bitwise_parity(tmp_path / "run", tmp_path / "model", data_dir, batch_size=5)


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
  """The tiny DLRM trained on a 2x4 (data x model) mesh, its tables sharded over 4 devices, and
  exported (float32 and int8 tables)."""
  root = tmp_path_factory.mktemp("export_mesh")
  config = tiny_config()
  config.mesh.shape = (2, 4)
  data_dir = _trained(config, root / "run")
  artifact.export(root / "run", root / "model")
  return root, data_dir


def test_export_from_a_2x4_mesh_gathers_every_table_and_parameter_exactly(mesh_run):
  root, data_dir = mesh_run
  config = tiny_config()
  config.mesh.shape = (2, 4)
  exp = train_lib.build(config, root / "run")
  state, *_ = train_lib._restore_latest_good(exp, config, root / "run", train_lib.checkpoint_lib.Checkpointer(
      str(root / "run" / "checkpoints"), max_to_keep=3), train_lib.checkpoint_integrity.fingerprint(
      config, exp.manifest, jax.eval_shape(exp.init_fn, config.seed).params), lambda *_: None)
  manifest = json.loads((root / "model" / "serving.json").read_text())
  stored = {e["name"]: weights_lib.read(root / "model", e) for e in manifest["weights"]}
  for name, table in exp.task.engine.table_values(state.embedding).items():
    where = manifest["tables"][name]
    got = stored[where["weight"]][where["row_offset"]:where["row_offset"] + where["rows"]]
    np.testing.assert_array_equal(got, table)
  params = {"params" + jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  for name, value in params.items():
    np.testing.assert_array_equal(stored[name], value)
  assert manifest["step"] == 20 and manifest["platforms"] == ["cpu", "cuda"] and manifest["block_rows"] == 64  # 512 eval rows over 8 devices
  _assert_bitwise_parity(root / "run", root / "model", data_dir, batch_size=1000)


def test_artifact_scores_in_a_process_that_imports_only_jax(mesh_run, tmp_path):
  root, data_dir = mesh_run
  model = ServingModel(root / "model")
  task = artifact.serving_task(root / "model")
  records, indices = pipeline.open_checked(data_dir, layout.read_manifest(data_dir), "eval", task.batch_spec)
  _, inputs = next(read_batches(records, indices, task.batch_spec, tuple(model.inputs), 37))
  np.savez(tmp_path / "inputs.npz", **inputs)
  p = subprocess.run([sys.executable, str(REPO / "scripts" / "score_exported.py"), "--model", str(root / "model"),
                      "--inputs", str(tmp_path / "inputs.npz"), "--output", str(tmp_path / "scores.npz")],
                     capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""},
                     cwd=tmp_path)
  assert p.returncode == 0, p.stderr
  assert "modules: jax numpy tensorstore" in p.stdout, p.stdout
  with np.load(tmp_path / "scores.npz", allow_pickle=False) as scores:
    np.testing.assert_array_equal(scores["click"], model.score(inputs)["click"])


@pytest.mark.parametrize("quantize, bound", (("bf16", 2e-3), ("int8", 2e-3)))
def test_quantized_tables_change_scores_by_the_recorded_measured_amount(mesh_run, tmp_path, quantize, bound):
  root, data_dir = mesh_run
  manifest = artifact.export(root / "run", tmp_path / "model", quantize=quantize)
  error = manifest["quantization_error"]["click"]
  assert 0 < error["max_abs"] < bound and error["mean_abs"] <= error["max_abs"] and error["records"] == 2048
  entry = next(e for e in manifest["weights"] if e["name"].startswith("embedding/"))
  stored = list((tmp_path / "model" / entry["path"]).rglob("*"))
  assert entry["stored_as"] == quantize and stored
  exact, quantized = ServingModel(root / "model"), ServingModel(tmp_path / "model")
  task = artifact.serving_task(root / "model")
  records, indices = pipeline.open_checked(data_dir, layout.read_manifest(data_dir), "eval", task.batch_spec)
  _, inputs = next(read_batches(records, indices, task.batch_spec, tuple(exact.inputs), 2048))
  difference = np.abs(exact.score(inputs)["click"] - quantized.score(inputs)["click"])
  assert difference.max() == pytest.approx(error["max_abs"], rel=1e-3, abs=1e-7)


def _cli(*args, cwd):
  return subprocess.run([sys.executable, "-m", "rankjax.cli", *args], capture_output=True, text=True, timeout=300,
                        cwd=cwd)


def test_export_and_predict_commands_write_the_trainer_layout(mesh_run, tmp_path):
  root, data_dir = mesh_run
  p = _cli("export", "--workdir", str(root / "run"), "--out", str(tmp_path / "model"), cwd=tmp_path)
  assert p.returncode == 0, p.stderr
  assert "rankjax export: step 20" in p.stdout
  p = _cli("predict", "--model", str(tmp_path / "model"), "--input", data_dir, "--output",
           str(tmp_path / "scores.parquet"), "--batch-size", "333", cwd=tmp_path)
  assert p.returncode == 0, p.stderr
  assert "scored 2,048 records" in p.stdout
  assert pq.read_table(tmp_path / "scores.parquet").equals(pq.read_table(root / "run" / "eval_scores.parquet"))


@pytest.mark.parametrize("args, message", (
    (("export", "--workdir", "{tmp}/none", "--out", "{tmp}/m"), "no recorded config"),
    (("export", "--workdir", "{run}", "--out", "{tmp}/m", "--step", "7"), "--step 7: not a checkpoint"),
    (("predict", "--model", "{tmp}", "--input", "{data}", "--output", "{tmp}/s.parquet"), "no serving manifest"),
    (("predict", "--model", "{model}", "--input", "{tmp}", "--output", "{tmp}/s.parquet"), "no manifest"),
))
def test_export_and_predict_errors_are_one_line(mesh_run, tmp_path, args, message):
  root, data_dir = mesh_run
  (tmp_path / "none").mkdir()
  names = {"tmp": str(tmp_path), "run": str(root / "run"), "model": str(root / "model"), "data": data_dir}
  p = _cli(*[a.format(**names) for a in args], cwd=tmp_path)
  assert p.returncode == 2, p.stderr
  lines = [line for line in p.stderr.splitlines() if line.startswith("rankjax: error:")]
  assert len(lines) == 1 and message in lines[0], p.stderr
  assert "Traceback" not in p.stderr


@pytest.fixture(scope="module")
def server(mesh_run):
  import threading
  from rankjax.export.http_server import make_server
  root, data_dir = mesh_run
  model = ServingModel(root / "model")
  httpd = make_server(model, port=0, max_batch=100)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield model, f"http://127.0.0.1:{httpd.server_address[1]}", data_dir
  httpd.shutdown()
  httpd.server_close()


def _http(url, body=None, method=None):
  import urllib.error
  import urllib.request
  data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                   headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=60) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def test_serve_scores_a_json_request_as_the_model_does(server):
  model, url, data_dir = server
  task = artifact.serving_task(model.directory)
  records, indices = pipeline.open_checked(data_dir, layout.read_manifest(data_dir), "eval", task.batch_spec)
  _, inputs = next(read_batches(records, indices, task.batch_spec, tuple(model.inputs), 3))
  status, reply = _http(f"{url}/v1/score", {"inputs": {k: v.tolist() for k, v in inputs.items()}})
  assert status == 200, reply
  np.testing.assert_array_equal(np.asarray(reply["scores"]["click"], np.float32), model.score(inputs)["click"])
  status, described = _http(f"{url}/v1/model")
  assert status == 200 and described["heads"] == ["click"] and described["max_batch"] == 100
  assert described["inputs"]["cat"]["shape"] == ["batch", 6]


@pytest.mark.parametrize("body, status, message", (
    (b"{not json", 400, "not JSON"),
    ({"rows": []}, 400, '{"inputs"'),
    ({"inputs": {"dense": [[0.0] * 13], "cat": [[1] * 6], "user": [[1]]}}, 400, "unknown input 'user'"),
    ({"inputs": {"dense": [[0.0] * 13]}}, 400, "missing input 'cat'"),
    ({"inputs": {"dense": [["a"] * 13], "cat": [[1] * 6]}}, 400, "input 'dense': float32 values expected"),
    ({"inputs": {"dense": [[0.0] * 13], "cat": [[0.5] * 6]}}, 400, "input 'cat': int32 values expected"),
    ({"inputs": {"dense": [[0.0] * 12], "cat": [[1] * 6]}}, 400, "input 'dense': shape [1, 12], expected"),
    ({"inputs": {"dense": [[0.0] * 13] * 2, "cat": [[1] * 6]}}, 400, "input 'cat': batch 1, input 'dense' has 2"),
    ({"inputs": {"dense": [[0.0] * 13] * 101, "cat": [[1] * 6] * 101}}, 413, "over the limit of 100"),
    ({"inputs": {"dense": [[0.0] * 13], "cat": [[1, 1, 1, 7, 1, 1]]}}, 400,
     "row 0 column 3: id 7 outside [0, 7) and not -1"),
))
def test_serve_answers_bad_requests_with_a_4xx_naming_the_problem(server, body, status, message):
  _, url, _ = server
  got, reply = _http(f"{url}/v1/score", body)
  assert got == status and message in reply["error"], reply


def test_serve_unknown_paths_and_methods(server):
  _, url, _ = server
  assert _http(f"{url}/v2/score", {"inputs": {}})[0] == 404
  assert _http(f"{url}/v1/score")[0] == 405


def test_bench_serve_reports_latency_per_batch_size(mesh_run, tmp_path):
  root, _ = mesh_run
  p = _cli("bench", "serve", "--model", str(root / "model"), "--batch-sizes", "1,16", "--seconds", "0.2",
           "--json", str(tmp_path / "latency.json"), cwd=tmp_path)
  assert p.returncode == 0, p.stderr
  results = json.loads((tmp_path / "latency.json").read_text())["results"]
  assert [r["batch_size"] for r in results] == [1, 16]
  assert all(0 < r["p50_ms"] <= r["p99_ms"] and r["calls"] >= 20 and r["rows_per_sec"] > 0 for r in results)


@pytest.fixture(scope="module", params=("hash", "frequency", "raw"))
def criteo_model(request, tmp_path_factory):
  """A tiny DLRM trained on 600 Criteo lines converted with the hash or frequency vocabulary (or
  the raw 64-bit ids, into dynamic tables), exported."""
  from rankjax.cli import data as data_cli
  from test_criteo import _lines, _write
  root = tmp_path_factory.mktemp(f"export_criteo_{request.param}")
  tsv = _write(root / "day.tsv", _lines(600, seed=3))
  args = ["criteo", "--input", str(tsv), "--eval-input", str(tsv), "--output", str(root / "data"),
          "--vocab", request.param] + (["--max-rows-per-table", "64"] if request.param == "hash" else [])
  assert data_cli.main(args) == 0
  config = tiny_config(steps=3, batch_size=64, eval_batch_size=128)
  config.data.path = str(root / "data")
  if request.param == "raw":  # C1, C2 dynamic; the rest hashed from both words (26 maps compile for minutes)
    config.embedding.overrides = tuple(f"C{i}:rows=50" for i in range(3, 27))
  _trained(config, root / "run")
  artifact.export(root / "run", root / "model")
  return root, tsv


def test_predict_on_raw_criteo_tsv_equals_predict_on_the_converted_dataset(criteo_model):
  from rankjax.export import predict
  root, tsv = criteo_model
  assert predict.predict(root / "model", root / "data", root / "from_dataset.parquet", batch_size=100) == 600
  assert predict.predict(root / "model", tsv, root / "from_tsv.parquet", batch_size=100) == 600
  from_tsv = pq.read_table(root / "from_tsv.parquet")
  assert from_tsv.equals(pq.read_table(root / "from_dataset.parquet"))
  assert from_tsv.equals(pq.read_table(root / "run" / "eval_scores.parquet"))


def test_predict_on_raw_rows_stops_at_a_bad_line_or_skips_and_counts_it(criteo_model, tmp_path):
  from test_criteo import _lines, _write
  root, _ = criteo_model
  lines = _lines(50, seed=4)
  lines[7] = "x" + lines[7]  # A bad label on line 8.
  tsv = _write(tmp_path / "bad.tsv", lines)
  p = _cli("predict", "--model", str(root / "model"), "--input", str(tsv), "--output", str(tmp_path / "s.parquet"),
           cwd=tmp_path)
  assert p.returncode == 2 and f"{tsv}:8: bad label" in p.stderr, p.stderr
  assert not (tmp_path / "s.parquet").exists()
  p = _cli("predict", "--model", str(root / "model"), "--input", str(tsv), "--output", str(tmp_path / "s.parquet"),
           "--invalid-records", "skip", cwd=tmp_path)
  assert p.returncode == 0, p.stderr
  assert "skipped 1" in p.stderr and "scored 49 records" in p.stdout, p.stderr
  rows = pq.read_table(tmp_path / "s.parquet").column("row").to_pylist()
  assert rows == [r for r in range(50) if r != 7]


def test_predict_on_a_raw_table_file_equals_predict_on_its_conversion(tmp_path):
  from rankjax.cli import data as data_cli
  from rankjax.export import predict
  rng = np.random.default_rng(5)
  n = 400
  columns = {"click": rng.integers(0, 2, n), "price": rng.normal(size=n), "user": [f"u{i % 37}" for i in range(n)],
             "item": rng.integers(0, 90, n)}
  pq.write_table(__import__("pyarrow").table(columns), tmp_path / "rows.parquet")
  spec = {"label": "click", "dense": ["price"],
          "categorical": [{"name": "user", "num_rows": 64}, {"name": "item", "num_rows": 128}]}
  (tmp_path / "spec.json").write_text(json.dumps(spec))
  assert data_cli.main(["table", "--input", str(tmp_path / "rows.parquet"), "--eval-input", str(tmp_path / "rows.parquet"),
                        "--spec", str(tmp_path / "spec.json"), "--output", str(tmp_path / "data")]) == 0
  config = tiny_config(steps=3, batch_size=64, eval_batch_size=128)
  config.data.path = str(tmp_path / "data")
  _trained(config, tmp_path / "run")
  artifact.export(tmp_path / "run", tmp_path / "model")
  assert predict.predict(tmp_path / "model", tmp_path / "rows.parquet", tmp_path / "raw.parquet", batch_size=64) == n
  assert pq.read_table(tmp_path / "raw.parquet").equals(pq.read_table(tmp_path / "run" / "eval_scores.parquet"))


def test_export_of_a_run_without_config_json_takes_its_config_and_checks_it(mesh_run, tmp_path):
  import shutil
  root, _ = mesh_run
  run = tmp_path / "run"
  shutil.copytree(root / "run", run)
  (run / "config.json").unlink()
  # The run was trained without a held-out validation fraction (tests' tiny_config).
  data = f"--config.data.path={root / 'run' / 'data' / 'synthetic'}", "--config.data.validation_fraction=0"
  p = _cli("export", "--workdir", str(run), "--out", str(tmp_path / "m"), "--config", str(REPO / "configs" / "tiny.py"),
           "--config.mesh.shape=(2,4)", "--config.model.embed_dim=16", *data, cwd=tmp_path)
  assert p.returncode == 2 and "was trained on another model: model.embed_dim: 8 -> 16" in p.stderr, p.stderr
  p = _cli("export", "--workdir", str(run), "--out", str(tmp_path / "m"), "--config", str(REPO / "configs" / "tiny.py"),
           "--config.mesh.shape=(2,4)", "--block-rows", "16", *data, cwd=tmp_path)
  assert p.returncode == 0 and "scored in blocks of 16 rows" in p.stdout, p.stderr


def test_export_replaces_an_old_artifact_only_when_complete_and_refuses_a_file(mesh_run, tmp_path):
  root, _ = mesh_run
  first = artifact.export(root / "run", tmp_path / "model", block_rows=16)
  second = artifact.export(root / "run", tmp_path / "model")
  assert first["block_rows"] == 16 and second["block_rows"] == 64
  assert json.loads((tmp_path / "model" / "serving.json").read_text())["block_rows"] == 64
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # No staging or backup left behind.
  (tmp_path / "file").write_text("x")
  p = _cli("export", "--workdir", str(root / "run"), "--out", str(tmp_path / "file"), cwd=tmp_path)
  assert p.returncode == 2 and "is a file, not a directory" in p.stderr, p.stderr


def test_predict_refuses_a_dataset_encoded_differently_from_the_training_data(criteo_model, tmp_path):
  from rankjax.cli import data as data_cli
  root, tsv = criteo_model
  manifest = json.loads((root / "data" / "manifest.json").read_text())
  other = ["--vocab", "hash", "--max-rows-per-table", "99"]
  if manifest["source"]["vocab"] == "frequency":
    other = ["--vocab", "frequency", "--min-count", "2"]
  assert data_cli.main(["criteo", "--input", str(tsv), "--eval-input", str(tsv), "--output", str(tmp_path / "other"),
                        *other]) == 0
  p = _cli("predict", "--model", str(root / "model"), "--input", str(tmp_path / "other"), "--output",
           str(tmp_path / "s.parquet"), cwd=tmp_path)
  assert p.returncode == 2 and "encoded differently" in p.stderr and "vocab_sizes" in p.stderr, p.stderr


def test_eval_block_rows_must_be_a_non_negative_int():
  from rankjax.config import ConfigError, validate
  config = tiny_config()
  config.eval.block_rows = -32
  with pytest.raises(ConfigError, match="eval.block_rows"):
    validate(config, 8)
