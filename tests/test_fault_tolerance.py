"""Multi-process training and failures: 2 processes x 4 CPU devices equal 1 x 8; a lost peer fails
the other fast; SIGTERM checkpoints and exits 4; SIGKILL inside a save resumes from the previous
commit; checkpoints restore onto another device count; non-finite steps can be skipped."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rankjax import train as train_lib
from rankjax.data import pipeline

from helpers import TINY_CONFIG, tiny_config

pytestmark = pytest.mark.slow


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, *args, devices=8, env=None):
  os.makedirs(workdir, exist_ok=True)
  full_env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
              **(env or {})}
  cmd = [sys.executable, "-m", "rankjax.cli", "train", "--config", TINY_CONFIG, "--workdir", str(workdir),
         "--config.train.progress_bar=False", *args]
  return subprocess.Popen(cmd, cwd=workdir, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train_losses(workdir):
  events = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {e["step"]: e["loss"] for e in events if e["split"] == "train"}, [e for e in events if e["split"] == "eval"]


def two_process_args(port, i):
  return ("--config.distributed.coordinator_address=127.0.0.1:%d" % port, "--config.distributed.num_processes=2",
          f"--config.distributed.process_id={i}", "--config.distributed.cpu_collectives=gloo")


def assert_two_processes_of_four_devices_match_one_of_eight(tmp_path, *args):
  p = launch(tmp_path / "one", "--config.train.log_every=1", *args)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err
  port = free_port()
  procs = [launch(tmp_path / "two", "--config.train.log_every=1", *args, *two_process_args(port, i), devices=4)
           for i in range(2)]
  for q in procs:
    _, err = q.communicate(timeout=300)
    assert q.returncode == 0, err
  one, one_eval = train_losses(tmp_path / "one")
  two, two_eval = train_losses(tmp_path / "two")
  assert sorted(two) == sorted(one) == list(range(1, 21))
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-6)
  assert two_eval[-1]["auc"] == pytest.approx(one_eval[-1]["auc"], rel=1e-6)


def test_two_processes_of_four_devices_match_one_process_of_eight(tmp_path):
  assert_two_processes_of_four_devices_match_one_of_eight(tmp_path)


# table_row_wise on a mesh whose first axis is the hosts: each table on one process's devices.
HOST_MESH = ("--config.mesh.axes=('host','data')", "--config.mesh.shape=(2,4)",
             "--config.mesh.rules=(('batch',('host','data')),('table_rows',('host','data')),('embed',()))",
             "--config.embedding.sharding=table_row_wise")


def test_table_row_wise_on_two_processes_of_four_devices_matches_one_process_of_eight(tmp_path):
  assert_two_processes_of_four_devices_match_one_of_eight(tmp_path, *HOST_MESH)


def test_a_host_axis_that_does_not_follow_the_processes_is_refused_in_one_line(tmp_path):
  port = free_port()
  procs = [launch(tmp_path / "two", "--config.mesh.axes=('data','host')", "--config.mesh.shape=(4,2)",
                  "--config.mesh.rules=(('batch',('data','host')),('table_rows',('data','host')),('embed',()))",
                  *two_process_args(port, i), devices=4) for i in range(2)]
  for q in procs:
    _, err = q.communicate(timeout=300)
    assert q.returncode != 0
    assert "mesh axis 'host': index 0 holds devices of processes [0, 1]" in err and "Traceback" not in err


def test_killing_one_process_makes_the_other_exit_nonzero_within_60s(tmp_path):
  port = free_port()
  args = ("--config.train.steps=100000", "--config.train.log_every=1", "--config.distributed.heartbeat_timeout_s=10")
  procs = [launch(tmp_path, *args, *two_process_args(port, i), devices=4) for i in range(2)]
  deadline = time.time() + 240
  while not (tmp_path / "metrics.jsonl").exists() or len((tmp_path / "metrics.jsonl").read_text().splitlines()) < 3:
    assert all(q.poll() is None for q in procs), procs[0].communicate()[1][-2000:]
    assert time.time() < deadline
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  try:
    procs[0].communicate(timeout=60)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail("the surviving process hung for more than 60 s")
  assert procs[0].returncode != 0
  assert time.time() - killed_at < 60


SLOW = ("--config.train.steps=300", "--config.train.batch_size=4096", "--config.train.log_every=1",
        "--config.checkpoint.every_steps=50", "--config.train.eval_every=0",  # Validation at the end only,
        "--config.train.early_stopping.metric=")  # and the test split scored at the last step.


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  p = launch(workdir, *SLOW, devices=1)
  _, err = p.communicate(timeout=300)
  assert p.returncode == 0, err
  return train_losses(workdir)


def wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert time.time() < deadline
    time.sleep(0.005)


def test_sigterm_writes_a_checkpoint_exits_4_and_resumes_exactly(tmp_path, straight_run):
  p = launch(tmp_path, *SLOW, devices=1)
  wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and len((tmp_path / "metrics.jsonl").read_text().splitlines()) >= 60, p)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 4, err
  assert "Rerun the same command to resume" in err
  stopped = max(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
  assert 60 <= stopped < 300 and stopped % 50 != 0  # a checkpoint at the stop step, not a periodic one
  p = launch(tmp_path, *SLOW, devices=1)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err
  assert f"resuming from checkpoint step {stopped}" in out
  losses, evals = train_losses(tmp_path)
  assert losses == straight_run[0]
  assert evals[-1] == straight_run[1][-1]


def test_sigkill_inside_a_save_resumes_from_the_previous_commit(tmp_path, straight_run):
  first = launch(tmp_path, *SLOW[1:], "--config.train.steps=50", devices=1)  # commits checkpoint 50
  _, err = first.communicate(timeout=300)
  assert first.returncode == 0, err
  p = launch(tmp_path, *SLOW, devices=1, env={"RANKJAX_TEST_CHECKPOINT_COMMIT_DELAY_S": "30"})
  checkpoints = tmp_path / "checkpoints"
  wait_for(lambda: any("tmp" in d.name for d in checkpoints.iterdir()), p)  # step 100's save in flight
  p.send_signal(signal.SIGKILL)
  p.communicate()
  assert (checkpoints / "50").exists() and not (checkpoints / "100").exists()
  p = launch(tmp_path, *SLOW, devices=1)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err
  assert "resuming from checkpoint step 50" in out
  assert not any("tmp" in d.name for d in checkpoints.iterdir())  # the uncommitted directory is gone
  losses, evals = train_losses(tmp_path)
  assert losses == straight_run[0]
  assert evals[-1] == straight_run[1][-1]


def resume_on_other_devices(tmp_path, config, first, second):
  """Trains 20 steps on `first` devices, and 10 then 10 more on `second`: the moved run's messages
  (after checking it resumed at step 10 and matches the straight run's losses and eval AUC)."""
  straight = train_lib.train(config(20), tmp_path / "straight", devices=jax.devices()[:first], log=lambda _: None)
  train_lib.train(config(10), tmp_path / "moved", devices=jax.devices()[:first], log=lambda _: None)
  messages = []
  moved = train_lib.train(config(20), tmp_path / "moved", devices=jax.devices()[:second], log=messages.append)
  assert any("resuming from checkpoint step 10" in m for m in messages)
  assert moved["eval_auc"] == pytest.approx(straight["eval_auc"], rel=1e-5)
  a, _ = train_losses(tmp_path / "straight")
  b, _ = train_losses(tmp_path / "moved")
  np.testing.assert_allclose([b[s] for s in range(11, 21)], [a[s] for s in range(11, 21)], rtol=1e-5)
  return messages


@pytest.mark.parametrize("sharding", ["row_wise", "table_wise"])
@pytest.mark.parametrize("first, second", [(8, 4), (4, 8)])
def test_checkpoint_restores_onto_another_device_count(tmp_path, sharding, first, second):
  def config(steps):
    c = tiny_config(steps=steps, log_every=1)
    c.embedding.sharding = sharding
    return c

  messages = resume_on_other_devices(tmp_path, config, first, second)
  assert any("re-laid-out" in m for m in messages) == (sharding == "table_wise")


def test_table_row_wise_restores_onto_hosts_of_fewer_devices(tmp_path):
  def config(steps):
    c = tiny_config(steps=steps, log_every=1)
    c.embedding.sharding = "table_row_wise"
    c.mesh.axes, c.mesh.shape = ("host", "data"), (2, -1)
    c.mesh.rules = (("batch", ("host", "data")), ("table_rows", ("host", "data")), ("embed", ()))
    return c

  resume_on_other_devices(tmp_path, config, 8, 4)


def test_skip_mode_drops_a_non_finite_step_and_touches_nothing(tmp_path):
  config = tiny_config()
  config.train.on_non_finite = "skip"
  exp = train_lib.build(config, tmp_path, jax.devices())
  with jax.set_mesh(exp.partitioner.mesh):
    state = exp.init_fn(config.seed)
    batch = next(pipeline.train_iterator(exp.data_dir, exp.manifest, global_batch_size=256, num_batches=1, seed=0))
    batch["dense"][3, 0] = np.nan
    before = jax.device_get(state)
    after, metrics = exp.train_fn(state, exp.partitioner.place_batch(batch))
    after = jax.device_get(after)
  assert bool(metrics["skipped"]) and not np.isfinite(float(metrics["loss"]))
  assert int(after.step) == 1
  for x, y in zip(jax.tree.leaves(before.params) + jax.tree.leaves(before.embedding) + jax.tree.leaves(before.opt_state),
                  jax.tree.leaves(after.params) + jax.tree.leaves(after.embedding) + jax.tree.leaves(after.opt_state)):
    np.testing.assert_array_equal(x, y)
