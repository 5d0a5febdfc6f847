"""One run per workdir: a second `rankjax train` on a workdir in use exits 2 naming the holder; a
lock file left by a dead process is taken over."""

import json
import os
import subprocess
import sys

from helpers import TINY_CONFIG
from rankjax.workdir_lock import WorkdirLock


def train(workdir):
  return subprocess.run([sys.executable, "-m", "rankjax.cli", "train", "--config", TINY_CONFIG, "--workdir",
                         str(workdir), "--config.train.progress_bar=False", "--config.train.steps=5"],
                        capture_output=True, text=True, timeout=300)


def test_a_second_run_on_a_workdir_in_use_exits_2_naming_the_holder(tmp_path):
  with WorkdirLock(tmp_path):
    p = train(tmp_path)
  assert p.returncode == 2 and f"is in use by pid {os.getpid()}" in p.stderr and "Traceback" not in p.stderr
  assert not (tmp_path / "metrics.jsonl").exists()


def test_a_stale_lock_file_from_a_dead_process_is_taken_over(tmp_path):
  (tmp_path / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 999999, "since": "2026-01-01T00:00:00"}))
  p = train(tmp_path)
  assert p.returncode == 0, p.stderr
  assert json.loads((tmp_path / ".lock").read_text())["pid"] != 999999
