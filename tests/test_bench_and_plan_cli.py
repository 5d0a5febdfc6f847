"""`rankjax bench embedding` and `rankjax plan` run and print what they promise (format, not speed)."""

import json
import subprocess
import sys

import pytest

from helpers import TINY_CONFIG

pytestmark = pytest.mark.slow


def rankjax(args, tmp_path):
  return subprocess.run([sys.executable, "-m", "rankjax.cli", *args], capture_output=True, text=True,
                        cwd=tmp_path, timeout=600)


def test_bench_embedding_prints_json_lines_and_a_summary(tmp_path):
  p = rankjax(["bench", "embedding", "--rows", "1000,3000", "--steps", "2", "--warmup", "1", "--batch", "256"],
              tmp_path)
  assert p.returncode == 0, p.stderr
  lines = [json.loads(l) for l in p.stdout.splitlines()]
  sparse = [l for l in lines if l.get("engine") == "sparse"]
  naive = [l for l in lines if l.get("engine") == "naive_optax"]
  assert [l["rows_per_table"] for l in sparse] == [1000, 3000]
  assert all(l["step_ms_median"] > 0 and l["sharding"] == "row_wise" for l in sparse)
  assert [l["rows_per_table"] for l in naive] == [1000, 3000]
  summary = lines[-1]
  assert summary["summary"] and summary["rows"] == [1000, 3000]
  assert summary["sparse_ratio_largest_over_smallest"] == pytest.approx(
      sparse[1]["step_ms_median"] / sparse[0]["step_ms_median"], rel=1e-3)


def test_plan_prints_every_table_and_device(tmp_path):
  p = rankjax(["plan", "--config", TINY_CONFIG, "--devices", "8", "--config.embedding.sharding=auto"], tmp_path)
  assert p.returncode == 0, p.stderr
  for i in range(6):
    assert f"cat_{i} " in p.stdout
  assert "device   7" in p.stdout and "imbalance" in p.stdout and "compiled train step" in p.stdout


def test_plan_that_does_not_fit_exits_2_naming_the_table(tmp_path):
  p = rankjax(["plan", "--config", TINY_CONFIG, "--devices", "8", "--device-memory", "100",
               "--config.embedding.sharding=row_wise"], tmp_path)
  assert p.returncode == 2
  assert "table cat_" in p.stderr and "more than its 100 B" in p.stderr


def test_plan_predict_time_compares_candidate_plans_and_names_the_fastest(tmp_path):
  p = rankjax(["plan", "--config", TINY_CONFIG, "--devices", "4", "--predict-time", "--device-kind", "h100",
               "--config.embedding.sharding=row_wise"], tmp_path)
  assert p.returncode == 0, p.stderr
  lines = p.stdout.splitlines()
  head = next(i for i, l in enumerate(lines) if l.startswith("predicted train step on NVIDIA H100 SXM, 4 devices"))
  rows = {l.split()[0]: l for l in lines[head + 2:head + 6]}
  assert list(rows) == ["row_wise", "table_wise", "column_wise", "replicated"]
  assert "(configured)" in rows["row_wise"]
  step_ms = {name: float(row.split()[-2]) for name, row in rows.items() if "cannot" not in row}
  assert len(step_ms) >= 3 and all(ms > 0 for ms in step_ms.values())
  fastest = min(step_ms, key=step_ms.get)
  assert lines[head + 6] == f"fastest that fits: {fastest} (--config.embedding.sharding={fastest})"
