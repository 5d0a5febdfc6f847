"""Shared test helpers."""

import pathlib

from rankjax.config import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "configs" / "tiny.py")


def tiny_config(**train):
  """configs/tiny.py without the progress bar; `train` overrides config.train fields."""
  c = load_config_file(TINY_CONFIG)
  c.train.progress_bar = False
  for k, v in train.items():
    c.train[k] = v
  return c


def train_five_steps_on(config_name: str, data_dir, tmp_path) -> dict:
  """Runs `rankjax train` for 5 small steps of configs/<config_name> on a converted dataset;
  returns its summary.json (the run must succeed)."""
  import json
  import subprocess
  import sys
  workdir = tmp_path / "work"
  p = subprocess.run(
      [sys.executable, "-m", "rankjax.cli", "train", "--config", str(REPO / "configs" / config_name),
       "--workdir", str(workdir), f"--config.data.path={data_dir}", "--config.train.steps=5",
       "--config.train.batch_size=256", "--config.train.eval_batch_size=1024", "--config.train.log_every=5",
       "--config.checkpoint.every_steps=5", "--config.train.progress_bar=False"],
      capture_output=True, text=True, cwd=tmp_path, timeout=600)
  assert p.returncode == 0, p.stderr
  return json.loads((workdir / "summary.json").read_text())
