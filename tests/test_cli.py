"""The `rankjax train` command end to end: smoke run, config errors, exact SIGKILL resume,
continuing with more steps, and the non-finite-loss stop."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import TINY_CONFIG

pytestmark = pytest.mark.slow


def rankjax(*args, **popen):
  cmd = [sys.executable, "-m", "rankjax.cli", "train", "--config", TINY_CONFIG,
         "--config.train.progress_bar=False", *args]
  # cwd outside the checkout: the installed rankjax (with rankjax.models) is imported, not ./rankjax.
  return subprocess.Popen(cmd, cwd=popen.pop("cwd"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run(*args, timeout=300):
  p = rankjax(*args, cwd=_cwd(args))
  out, err = p.communicate(timeout=timeout)
  return p.returncode, out, err


def _cwd(args):
  workdir = args[list(args).index("--workdir") + 1]
  os.makedirs(workdir, exist_ok=True)
  return workdir


def events(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def final_line(out):
  return [l for l in out.splitlines() if l.startswith("rankjax: final eval")][-1]


def test_train_smoke_writes_metrics_tensorboard_checkpoints_and_summary(tmp_path):
  rc, out, err = run("--workdir", str(tmp_path))
  assert rc == 0, err
  line = final_line(out)
  for field in ("auc=", "logloss=", "steps=20", "examples/s="):
    assert field in line
  ev = events(tmp_path)
  train_ev = [e for e in ev if e["split"] == "train"]
  assert [e["step"] for e in train_ev] == [5, 10, 15, 20]
  assert all("loss" in e and "examples_per_sec" in e for e in train_ev)
  (eval_ev,) = [e for e in ev if e["split"] == "eval"]
  assert eval_ev["step"] == 20 and 0.5 < eval_ev["auc"] <= 1 and eval_ev["logloss"] > 0
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["steps"] == 20 and summary["eval_auc"] == eval_ev["auc"]
  assert (tmp_path / "training_curves.png").is_file()


@pytest.mark.parametrize("override, key", [
    ("--config.model.no_such_key=1", "model.no_such_key"),
    ("--config.train.steps=abc", "train.steps"),
    ("--config.train.batch_size=1001", "train.batch_size"),
    ("--config.model.top_mlp=(16,2)", "model.top_mlp"),
])
def test_config_errors_exit_2_with_one_line_naming_the_key(tmp_path, override, key):
  rc, out, err = run("--workdir", str(tmp_path), override)
  assert rc == 2
  assert key in err
  assert "Traceback" not in err
  assert len(err.strip().splitlines()) == 1


def test_missing_config_file_is_named(tmp_path):
  p = subprocess.run([sys.executable, "-m", "rankjax.cli", "train", "--config", "nope.py", "--workdir", str(tmp_path)],
                     capture_output=True, text=True, cwd=tmp_path)
  assert p.returncode == 2 and "nope.py" in p.stderr


KILL_ARGS = ("--config.train.steps=300", "--config.train.batch_size=4096", "--config.train.log_every=1",
             "--config.checkpoint.every_steps=50")


def test_sigkill_and_restart_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  rc, out_straight, err = run("--workdir", str(straight), *KILL_ARGS)
  assert rc == 0, err

  p = rankjax("--workdir", str(killed), *KILL_ARGS, cwd=_cwd(("--workdir", str(killed))))
  deadline = time.time() + 240
  while not (killed / "checkpoints" / "50").exists():
    assert p.poll() is None, p.communicate()[1]
    assert time.time() < deadline
    time.sleep(0.01)
  p.send_signal(signal.SIGKILL)
  p.communicate()
  assert p.returncode == -signal.SIGKILL
  assert not (killed / "summary.json").exists(), "the run finished before the kill landed"

  rc, out_resumed, err = run("--workdir", str(killed), *KILL_ARGS)
  assert rc == 0, err
  assert "resuming from checkpoint step" in out_resumed
  train_losses = lambda w: {e["step"]: e["loss"] for e in events(w) if e["split"] == "train"}
  assert train_losses(killed) == train_losses(straight)
  assert sorted(train_losses(straight)) == list(range(1, 301))
  evals = lambda w: [e for e in events(w) if e["split"] == "eval"]
  assert evals(killed)[-1]["auc"] == evals(straight)[-1]["auc"]
  assert evals(killed)[-1]["logloss"] == evals(straight)[-1]["logloss"]
  strip_rate = lambda line: line.split(" examples/s=")[0]
  assert strip_rate(final_line(out_resumed)) == strip_rate(final_line(out_straight))


def test_raising_steps_continues_training_like_a_longer_run(tmp_path):
  rc, _, err = run("--workdir", str(tmp_path / "long"), "--config.train.steps=30", "--config.train.log_every=1")
  assert rc == 0, err
  rc, _, err = run("--workdir", str(tmp_path / "cont"), "--config.train.steps=20", "--config.train.log_every=1")
  assert rc == 0, err
  rc, out, err = run("--workdir", str(tmp_path / "cont"), "--config.train.steps=30", "--config.train.log_every=1")
  assert rc == 0, err
  assert "resuming from checkpoint step 20" in out
  losses = lambda w: {e["step"]: e["loss"] for e in events(w) if e["split"] == "train"}
  assert losses(tmp_path / "cont") == losses(tmp_path / "long")


def test_non_finite_loss_stops_with_exit_3_naming_the_step(tmp_path):
  rc, out, err = run("--workdir", str(tmp_path), "--config.train.dense_learning_rate=1e30")
  assert rc == 3
  assert "at step" in err and "non-finite" not in out
  bad = [e for e in events(tmp_path) if e.get("error") == "non-finite loss"]
  assert len(bad) == 1 and bad[0]["loss"] is None


def test_plot_draws_the_train_loss_and_each_eval_metric_of_a_workdir(tmp_path, capsys):
  from rankjax import training_curves
  from rankjax.cli import main as cli_main
  events = [{"step": s, "split": "train", "loss": 1.0 / s, "examples_per_sec": 10.0} for s in (1, 2, 3)]
  events += [{"step": 3, "split": "eval", "loss": 0.5, "auc": 0.7, "auc_error_bound": 1e-5, "examples": 10,
              "reliability": [{"bin_low": 0.0}]}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
  assert cli_main.main(["rankjax", "plot", "--workdir", str(tmp_path)]) == 0
  png = tmp_path / training_curves.PLOT_FILE
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert training_curves._series(events, "eval").keys() == {"loss", "auc"}  # Counts and bounds left out.
  assert cli_main.main(["rankjax", "plot", "--workdir", str(tmp_path / "none")]) == 2
  assert "no metrics to plot" in capsys.readouterr().err
