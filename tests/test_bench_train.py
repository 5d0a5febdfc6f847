"""`rankjax bench train` runs every config in configs/ and prints its JSON line (format, not
speed); scripts/gpu_bench.sh runs end to end in its CPU dry-run mode."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, TINY_CONFIG, small_overrides
from rankjax.cli import bench_train

GPU_BENCH_CONFIG = "configs/dlrm_dcnv2_mlperf.py"  # Benched by the gpu_bench.sh dry run below.
CONFIGS = sorted(str(p) for p in (REPO / "configs").glob("*.py") if not str(p).endswith(GPU_BENCH_CONFIG))


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_bench_train_prints_one_json_line_for_every_config(config_path, tmp_path, capsys):
  overrides = small_overrides(config_path, tmp_path)
  capsys.readouterr()  # Drop what converting a dataset printed.
  devices = 8 if config_path == TINY_CONFIG else 1  # One config on the whole simulated mesh.
  code = bench_train.main(["--config", config_path, "--steps", "2", "--warmup", "1", "--devices", str(devices),
                           "--workdir", str(tmp_path), *overrides])
  assert code == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  record = json.loads(lines[0])
  assert record["config"] == config_path and record["overrides"] == overrides
  batch = int(next(o for o in overrides if o.startswith("--config.train.batch_size=")).split("=")[1])
  assert record["batch"] == batch and record["devices"] == devices and record["backend"] == "cpu"
  assert record["step_ms_median"] > 0 and record["compile_s"] > 0
  assert record["samples_per_sec"] == pytest.approx(batch / record["step_ms_median"] * 1e3)


def test_bench_train_unknown_override_exits_2_naming_the_key(tmp_path, capsys):
  code = bench_train.main(["--config", TINY_CONFIG, "--workdir", str(tmp_path), "--config.train.nope=1"])
  assert code == 2
  assert "train.nope" in capsys.readouterr().err


def test_bench_train_more_devices_than_visible_exits_2(tmp_path, capsys):
  assert bench_train.main(["--config", TINY_CONFIG, "--workdir", str(tmp_path), "--devices", "9"]) == 2
  assert "--devices=9" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_bench_script_dry_run_writes_every_report_file(tmp_path):
  out = tmp_path / "out"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # One CPU device, like one GPU.
  env.update(GPU_BENCH_DRY_RUN="1", OUT=str(out), GPU_BENCH_WORKDIR=str(tmp_path / "work"), PYTHON=sys.executable)
  p = subprocess.run(["bash", str(REPO / "scripts" / "gpu_bench.sh")], env=env, capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  names = {f.name for f in out.iterdir()}
  assert {"profile.txt", "profile_report.json", "bench.jsonl", "hlo.tgz", "trace.tgz", "gpu_bench.log"} <= names
  assert all(f.is_file() for f in out.iterdir())  # $OUT comes back flat from the device machine.
  report = json.loads((out / "profile_report.json").read_text())
  bench = json.loads((out / "bench.jsonl").read_text())
  assert report["devices"] == bench["devices"] == 1
  assert bench["config"] == GPU_BENCH_CONFIG and bench["batch"] == report["batch"] == 256
  assert "roofline bound" in (out / "profile.txt").read_text()


@pytest.mark.slow
def test_gpu_bench_zoo_part_dry_run_writes_one_bench_line_per_config(tmp_path):
  out = tmp_path / "out"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(GPU_BENCH_DRY_RUN="1", GPU_BENCH_PART="zoo", ZOO_CONFIGS="deepfm din", OUT=str(out),
             GPU_BENCH_WORKDIR=str(tmp_path / "work"), PYTHON=sys.executable)
  p = subprocess.run(["bash", str(REPO / "scripts" / "gpu_bench.sh")], env=env, capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  lines = [json.loads(line) for line in (out / "zoo_bench.jsonl").read_text().splitlines()]
  assert [line["config"] for line in lines] == ["configs/deepfm.py", "configs/din.py"]
  assert all(line["batch"] == 64 and line["samples_per_sec"] > 0 for line in lines)
