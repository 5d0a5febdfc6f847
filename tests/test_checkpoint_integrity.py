"""A corrupted or incomplete checkpoint is never restored: its digests or its restore fail, it is
moved aside (kept) and the previous step is restored, training on to the same numbers; a resume
onto other data or another model is refused with one line naming the difference."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import TINY_CONFIG
from rankjax import checkpoint_integrity

QUIET = ("--config.train.progress_bar=False",)


def train(workdir, *args):
  return subprocess.run([sys.executable, "-m", "rankjax.cli", "train", "--config", TINY_CONFIG, "--workdir",
                         str(workdir), *QUIET, *args], capture_output=True, text=True, timeout=300,
                        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})


def events(workdir):
  return [{k: v for k, v in e.items() if k != "examples_per_sec"}
          for e in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]


def test_digests_change_with_any_byte_and_not_with_the_sharding():
  x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
  base = checkpoint_integrity.digests({"t": jnp.asarray(x)})
  for index in [(0, 0), (63, 7), (17, 3)]:
    for byte in range(4):
      y = x.copy()
      y.view(np.uint8).reshape(64, 8, 4)[index + (byte,)] ^= 1
      assert checkpoint_integrity.digests({"t": jnp.asarray(y)}) != base
  mesh = jax.make_mesh((8,), ("d",), devices=jax.devices())
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
  assert checkpoint_integrity.digests({"t": sharded}) == base


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  assert train(workdir, "--config.train.steps=30").returncode == 0
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip_bytes", "delete_state"])
def test_a_damaged_checkpoint_is_moved_aside_and_the_previous_one_restored(tmp_path, straight, damage):
  assert train(tmp_path, "--config.train.steps=20").returncode == 0
  step20 = tmp_path / "checkpoints" / "20"
  if damage == "flip_bytes":  # 64 bytes spread over every data file: some land in array values.
    for victim in [p for p in step20.rglob("*") if p.is_file() and "state" in p.parts]:
      data = bytearray(victim.read_bytes())
      for k in range(64):
        data[(2 * k + 1) * len(data) // 128] ^= 0x10
      victim.write_bytes(bytes(data))
  else:
    import shutil
    shutil.rmtree(step20 / "state")
  p = train(tmp_path, "--config.train.steps=30")
  assert p.returncode == 0, p.stderr
  assert "checkpoint step 20 cannot be trusted" in p.stderr and "Traceback" not in p.stderr
  assert "resuming from checkpoint step 10" in p.stdout
  (aside,) = (tmp_path / "checkpoints_corrupt").iterdir()
  assert aside.name.startswith("20-") and any(aside.rglob("*"))
  assert events(tmp_path) == events(straight)  # Resumed exactly from step 10.


@pytest.mark.slow
@pytest.mark.parametrize("change, key", [("--config.data.synthetic.seed=99", "data.synthetic.seed: 1234 -> 99"),
                                         ("--config.model.embed_dim=16", "model.embed_dim: 8 -> 16")])
def test_resuming_onto_other_data_or_model_exits_2_naming_the_key(tmp_path, change, key):
  assert train(tmp_path, "--config.train.steps=10").returncode == 0
  extra = ("--config.model.bottom_mlp=(16,16)",) if "embed_dim" in change else ()
  p = train(tmp_path, "--config.train.steps=20", change, *extra)
  assert p.returncode == 2 and key in p.stderr and "Traceback" not in p.stderr, p.stderr
  assert "was trained on" in p.stderr
  p = train(tmp_path, "--config.train.steps=20")
  assert p.returncode == 0 and "resuming from checkpoint step 10" in p.stdout, p.stderr
