"""`rankjax plan` and `rankjax profile` work on every config in configs/ (tiny sizes), the
learning-to-rank config included: they read the batch and the tables from the config's task."""

import json
import os

import pytest

from helpers import CONFIGS, small_overrides
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
