"""`rankjax plan` and `rankjax profile` work on every config in configs/ (tiny sizes), the
learning-to-rank config included: they read the batch and the tables from the config's task."""

import json
import os
import subprocess
import sys

import pytest

from helpers import CONFIGS, TINY_CONFIG, small_overrides
from rankjax import train as train_lib
from rankjax.config import load_config_file, task_class, validate
from rankjax.cli import plan as plan_cli
from rankjax.cli import profile as profile_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("config_path", CONFIGS, ids=os.path.basename)
def test_plan_runs_on_every_config(config_path, tmp_path, capsys):
  overrides = small_overrides(config_path, tmp_path)
  capsys.readouterr()
  assert plan_cli.main(["--config", config_path, "--devices", "8", *overrides]) == 0
  out = capsys.readouterr().out
  assert "compiled train step, per device" in out
  assert ("imbalance" in out) != ("no embedding tables" in out), out


@pytest.mark.parametrize("config_path", CONFIGS, ids=os.path.basename)
def test_profile_runs_on_every_config(config_path, tmp_path, capsys):
  overrides = small_overrides(config_path, tmp_path)
  workdir = tmp_path / "profile"
  assert profile_cli.main(["--config", config_path, "--workdir", str(workdir), "--steps", "1", "--warmup", "0",
                           "--devices", "1", *overrides]) == 0
  report = json.loads((workdir / "profile_report.json").read_text())
  assert report["step_ms_median"] > 0 and report["flops"] > 0 and report["roofline"]["bound_s"] > 0
  assert "roofline bound" in capsys.readouterr().out


@pytest.mark.parametrize("config_path", CONFIGS, ids=os.path.basename)
def test_every_config_selects_its_model_on_a_validation_split(config_path):
  """Each shipped config evaluates a validation split during training and scores the test split
  at the best step by its task's selection metric (synthetic data: records drawn after the eval
  split; a dataset directory: its own validation split, or a held-out fraction of train)."""
  c = load_config_file(config_path)
  on_synthetic = not c.data.path and c.task.name != "ranking"  # Ranking configs take a LETOR dataset.
  if c.task.name != "ranking":
    validate(c, 8)
  assert c.train.eval_every > 0 and c.train.early_stopping.metric == task_class(c.task.name).selection_metric(c)
  assert c.data.synthetic.num_validation > 0 if on_synthetic else c.data.validation_fraction > 0


def test_a_config_run_names_the_best_validation_step_and_the_test_metric_at_it(tmp_path):
  """`rankjax train` on a shipped config (tiny.py, 20 steps, validation every 10) ends with the test
  metric and the step it was scored at, the best validation step (summary.json agrees)."""
  p = subprocess.run([sys.executable, "-m", "rankjax.cli", "train", "--config", TINY_CONFIG, "--workdir",
                      str(tmp_path), "--config.train.progress_bar=False"], capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr
  summary = json.loads((tmp_path / "summary.json").read_text())
  events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  validation = [e for e in events if e["split"] == "validation"]
  assert [e["step"] for e in validation] == [10, 20] and all(e["examples"] == 1024 for e in validation)
  best = max(validation, key=lambda e: e["auc"])
  assert summary["best_step"] == best["step"] and summary["best_validation_auc"] == best["auc"]
  (test,) = [e for e in events if e["split"] == "eval"]
  assert test["best_step"] == best["step"] and summary["eval_auc"] == test["auc"]
  last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr.strip().splitlines()[-1]
  assert f"auc={test['auc']:.6f}" in last and f"test split scored at step {best['step']}" in last


def test_a_dataset_validation_split_is_used_over_a_validation_fraction_and_said_so(tmp_path, capsys):
  lines = []
  config = load_config_file(TINY_CONFIG)
  config.train.progress_bar = False
  config.data.validation_fraction = 0.25  # The synthetic data has its own 1,024 validation records.
  summary = train_lib.train(config, tmp_path, log=lines.append)
  validation = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {e["examples"] for e in validation if e["split"] == "validation"} == {1024}
  assert summary["steps"] == 20
  assert "evaluating the dataset's validation split (1,024 records) every 10 steps" in capsys.readouterr().err
