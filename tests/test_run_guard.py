"""Nothing hangs, nothing is logged twice: a stuck step trips the watchdog, SIGTERM during a stuck
step exits within the grace period, a SIGTERM at a step that is not a log step resumes to the
same logged losses, a finished workdir appends nothing, logs get progress lines without a TTY,
and two processes run many steps in flight without deadlocking."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import TINY_CONFIG

pytestmark = pytest.mark.slow

QUIET = ("--config.train.progress_bar=False",)


def start(workdir, *args, env=None, devices=1):
  return subprocess.Popen(
      [sys.executable, "-m", "rankjax.cli", "train", "--config", TINY_CONFIG, "--workdir", str(workdir), *QUIET, *args],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workdir.parent,
      env={**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
           **(env or {})})


def events(workdir, split):
  return [e for e in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if e["split"] == split]


def test_a_stuck_step_trips_the_watchdog_with_one_line(tmp_path):
  p = start(tmp_path / "w", "--config.train.step_timeout_s=3", env={"RANKJAX_TEST_STALL_AT_STEP": "15"})
  began = time.monotonic()
  _, err = p.communicate(timeout=300)
  assert p.returncode == 5, err
  line = err.strip().splitlines()[-1]
  assert "no step finished for train.step_timeout_s=3 s after step" in line
  assert "The last committed checkpoint is step 10" in line
  assert time.monotonic() - began < 120


def test_sigterm_during_a_stuck_step_exits_within_the_grace_period(tmp_path):
  p = start(tmp_path / "w", "--config.train.stop_grace_s=2", "--config.train.step_timeout_s=0",
            env={"RANKJAX_TEST_STALL_AT_STEP": "15"})
  deadline = time.monotonic() + 240
  while not (tmp_path / "w" / "checkpoints" / "10").exists():  # Step 10's checkpoint: the loop is running.
    assert time.monotonic() < deadline and p.poll() is None
    time.sleep(0.2)
  time.sleep(2)
  p.send_signal(signal.SIGTERM)
  sent = time.monotonic()
  _, err = p.communicate(timeout=60)
  assert p.returncode == 5 and time.monotonic() - sent < 15, err
  assert "stop requested, but no step finished within train.stop_grace_s=2 s" in err
  assert "Traceback" not in err


def test_sigterm_between_log_steps_then_resume_logs_the_same_losses(tmp_path):
  straight = tmp_path / "straight"
  p = start(straight, "--config.train.steps=20")
  assert p.wait(timeout=300) == 0
  stopped = tmp_path / "stopped"
  p = start(stopped, "--config.train.steps=20", env={"RANKJAX_TEST_SIGTERM_AT_STEP": "7"})
  _, err = p.communicate(timeout=300)
  assert p.returncode == 4, err
  assert sorted(d.name for d in (stopped / "checkpoints").iterdir() if d.name.isdigit()) == ["7"]
  p = start(stopped, "--config.train.steps=20")
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0 and "resuming from checkpoint step 7" in out, err
  assert events(stopped, "train") == [{**e, "examples_per_sec": s["examples_per_sec"]}
                                      for e, s in zip(events(straight, "train"), events(stopped, "train"))]
  assert events(stopped, "eval") == events(straight, "eval")


def test_a_finished_workdir_says_so_and_appends_nothing(tmp_path):
  p = start(tmp_path / "w")
  assert p.wait(timeout=300) == 0
  before = (tmp_path / "w" / "metrics.jsonl").read_text()
  p = start(tmp_path / "w")
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0 and "already trained to step 20" in out, err
  assert (tmp_path / "w" / "metrics.jsonl").read_text() == before


def test_without_a_terminal_progress_comes_as_log_lines(tmp_path):
  p = start(tmp_path / "w", "--config.train.progress_every_s=0.001", "--config.train.progress_bar=True")
  _, err = p.communicate(timeout=300)
  assert p.returncode == 0, err
  lines = [l for l in err.splitlines() if l.startswith("rankjax: step ")]
  assert lines and lines[-1].startswith("rankjax: step 20/20") and "examples/s" in lines[-1] and "ETA" in lines[-1]
  assert any("compiling the train step" in l for l in err.splitlines())


def test_two_processes_with_many_steps_in_flight_finish_and_match_one(tmp_path):
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  args = ("--config.train.steps=200", "--config.train.log_every=100", "--config.checkpoint.every_steps=100")
  one = start(tmp_path / "one", *args, devices=8)
  assert one.wait(timeout=600) == 0
  procs = [start(tmp_path / "two", *args, f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                 "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                 "--config.distributed.cpu_collectives=gloo", devices=4) for i in range(2)]
  for q in procs:
    _, err = q.communicate(timeout=600)
    assert q.returncode == 0, err
  for split in ("train", "eval"):
    a, b = events(tmp_path / "one", split), events(tmp_path / "two", split)
    assert [e["step"] for e in a] == [e["step"] for e in b]
    for x, y in zip(a, b):
      assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
