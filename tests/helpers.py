"""Shared test helpers."""

import pathlib

from rankjax.config import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "configs" / "tiny.py")


def tiny_config(**train):
  """configs/tiny.py without the progress bar and without its validation split and periodic evals
(a test sets what it checks); `train` overrides config.train fields."""
  c = load_config_file(TINY_CONFIG)
  c.train.progress_bar = False
  c.data.synthetic.num_validation, c.data.validation_fraction = 0, 0.0
  c.train.eval_every, c.train.early_stopping.metric = 0, ""
  for k, v in train.items():
    c.train[k] = v
  return c


def assert_same_trained_state(exp, state, ref_exp, ref_state, table_atol=1e-7):
  """Embedding tables (by table, whatever the layout) and dense params equal the reference's."""
  import jax
  import numpy as np
  tables, ref_tables = exp.task.engine.table_values(state.embedding), ref_exp.task.engine.table_values(ref_state.embedding)
  for name in ref_tables:
    np.testing.assert_allclose(tables[name], ref_tables[name], rtol=1e-5, atol=table_atol)
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def train_five_steps_on(config_name: str, data_dir, tmp_path, *overrides: str) -> dict:
  """Runs `rankjax train` for 5 small steps of configs/<config_name> on a converted dataset (and
  `--config.KEY=VALUE` overrides); returns its summary.json (the run must succeed)."""
  import json
  import subprocess
  import sys
  workdir = tmp_path / "work"
  p = subprocess.run(
      [sys.executable, "-m", "rankjax.cli", "train", "--config", str(REPO / "configs" / config_name),
       "--workdir", str(workdir), f"--config.data.path={data_dir}", "--config.train.steps=5",
       "--config.train.batch_size=256", "--config.train.eval_batch_size=1024", "--config.train.log_every=5",
       "--config.checkpoint.every_steps=5", "--config.train.progress_bar=False", *overrides],
      capture_output=True, text=True, cwd=tmp_path, timeout=600)
  assert p.returncode == 0, p.stderr
  return json.loads((workdir / "summary.json").read_text())


def ctr_model_inputs(num_dense: int, num_sparse: int, dim: int, heads=("click",)):
  """(InputSpec, make_inputs) for a click model over `num_sparse` pooled features of `dim`;
  make_inputs(dense_bd, emb_bfd) -> ModelInputs, features in order."""
  from rankjax.model_inputs import EmbeddedFeature, InputSpec, KeyedEmbeddings, ModelInputs
  spec = InputSpec(heads=heads, num_dense=num_dense,
                   embedded=tuple(EmbeddedFeature(f"cat_{i}", dim) for i in range(num_sparse)))

  def make_inputs(dense_bd, emb_bfd):
    return ModelInputs(dense=dense_bd, embedded=KeyedEmbeddings(spec.embedded, {dim: emb_bfd}, {}))

  return spec, make_inputs


def task_batch_spec(config, manifest):
  """The BatchSpec the config's task reads from data of `manifest` (one device, nothing trained)."""
  import jax
  from rankjax.experiment import build
  config.mesh.shape = (1, 1)
  return build(config, None, jax.devices()[:1], manifest=manifest).task.batch_spec


MAX_TEST_ROWS = 1_000_000  # Configs with more embedding rows get a row_scale in small_overrides.
CONFIGS = sorted(str(p) for p in (REPO / "configs").glob("*.py"))


def small_letor_dataset(directory) -> str:
  """A tiny LETOR dataset (40 queries x 5 documents x 5 features, the fifth heavy-tailed: log1p under
  task.normalize=auto) converted by `rankjax data letor`."""
  from rankjax.cli import data as data_cli
  lines = [f"{(q + d) % 3} qid:{q} 1:{d} 2:{q % 7} 3:0.5 4:{d * q % 5} 5:{1e6 / (1 + (q * 7 + d * 3) % 199) ** 3:.3f}"
           for q in range(40) for d in range(5)]
  source = directory / "letor.txt"
  source.write_text("\n".join(lines) + "\n")
  assert data_cli.main(["letor", "--input", str(source), "--eval-input", str(source),
                        "--output", str(directory / "letor")]) == 0
  return str(directory / "letor")


def small_overrides(config_path: str, tmp_path) -> list[str]:
  """Overrides that make any config's step seconds-long: a small batch and data set, small tables;
  configs of a dataset directory (data.path) run on synthetic data of the same model instead
  (ranking configs on a tiny converted LETOR set)."""
  config = load_config_file(config_path)
  if config.task.name == "ranking":
    return ["--config.train.batch_size=8", "--config.train.eval_batch_size=8",
            f"--config.data.path={small_letor_dataset(tmp_path)}"]
  rows = sum(config.data.synthetic.vocab_sizes)
  scale = [f"--config.data.row_scale={1e4 / rows}"] if rows > MAX_TEST_ROWS else []
  synthetic = ["--config.data.path="] if config.data.path else []
  validation = ["--config.data.synthetic.num_validation=256"] if config.data.synthetic.num_validation else []
  return ["--config.train.batch_size=256", "--config.train.eval_batch_size=256",
          "--config.data.synthetic.num_train=2048", "--config.data.synthetic.num_eval=256", *validation, *scale,
          *synthetic]
