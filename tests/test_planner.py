"""The embedding planner: replicated small tables, row-wise huge ones, table-wise the rest;
overrides win; a plan that cannot fit names the table and the shortfall."""

import numpy as np
import pytest

from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.embedding.planner import PlanError, plan, table_bytes


def tables():
  return [EmbeddingTableConfig("huge", 4_000_000, 64, ("a",)),
          EmbeddingTableConfig("mid1", 200_000, 64, ("b",)),
          EmbeddingTableConfig("mid2", 150_000, 64, ("c",)),
          EmbeddingTableConfig("tiny", 100, 64, ("d",)),
          EmbeddingTableConfig("pinned", 300_000, 64, ("e",), sharding="column_wise")]


def test_planner_chooses_by_size_and_keeps_explicit_shardings():
  result = plan(tables(), 8, optimizer="row_wise_adagrad").sharding_of()
  assert result == {"huge": "row_wise", "mid1": "table_wise", "mid2": "table_wise", "tiny": "replicated",
                    "pinned": "column_wise"}


def test_bytes_count_params_and_optimizer_state():
  t = EmbeddingTableConfig("t", 1000, 16, ("f",))
  assert table_bytes(t, "row_wise_adagrad") == 1000 * (16 * 4 + 4)
  assert table_bytes(t, "adam") == 1000 * (16 * 4 + 2 * 16 * 4)
  assert table_bytes(EmbeddingTableConfig("b", 1000, 16, ("f",), dtype="bfloat16"), "sgd") == 1000 * 16 * 2


def test_device_totals_add_up_to_table_bytes():
  p = plan(tables(), 8, optimizer="row_wise_adagrad")
  for t in p.tables:
    spread = sum(t.bytes_per_device)
    if t.sharding == "replicated":
      assert spread == 8 * t.bytes_total
    elif t.sharding == "table_wise":
      assert spread == t.bytes_total and sum(b > 0 for b in t.bytes_per_device) == 1
    else:
      assert t.bytes_total <= spread < t.bytes_total + 8
  assert p.imbalance >= 1.0


def test_plan_that_cannot_fit_names_table_and_shortfall():
  with pytest.raises(PlanError, match=r"more than its 1,000,000 B; largest there: table huge"):
    plan(tables(), 8, optimizer="row_wise_adagrad", device_memory=1_000_000)


def test_a_job_across_hosts_keeps_each_huge_table_on_one_hosts_devices_where_the_hosts_balance():
  two_huge = tables() + [EmbeddingTableConfig("huge2", 3_800_000, 64, ("f",))]
  p = plan(two_huge, 8, optimizer="row_wise_adagrad", num_hosts=2)
  assert p.sharding_of()["huge"] == p.sharding_of()["huge2"] == "table_row_wise"
  by_name = {t.table: t for t in p.tables}
  row = 64 * 4 + 4
  # Host 0 (devices 0-3) holds huge; host 1 huge2 and the padding up to huge's block (on huge).
  assert by_name["huge"].bytes_per_device == (1_000_000 * row,) * 4 + (50_000 * row,) * 4
  assert by_name["huge2"].bytes_per_device == (0,) * 4 + (950_000 * row,) * 4
  # Alone, huge would leave host 1 a block of padding as large: row-wise instead.
  assert plan(tables(), 8, optimizer="row_wise_adagrad", num_hosts=2).sharding_of()["huge"] == "row_wise"
  with pytest.raises(PlanError, match="do not split evenly over 3 hosts"):
    plan(tables(), 8, optimizer="row_wise_adagrad", num_hosts=3)


@pytest.mark.parametrize("vocab", [(5000, 3000, 900, 20), (9000, 700, 600)])
def test_table_row_wise_bytes_are_what_the_engine_allocates(vocab):
  import jax
  from rankjax.embedding.engine import EmbeddingEngine
  from rankjax.embedding.tables import FeatureSlots
  from rankjax.partitioner import make_mesh
  ts = [EmbeddingTableConfig(f"t{i}", v, 8, (f"f{i}",), sharding="table_row_wise") for i, v in enumerate(vocab)]
  mesh = make_mesh(("host", "data"), (2, 4), jax.devices()[:8])
  engine = EmbeddingEngine(ts, FeatureSlots(tuple(f"f{i}" for i in range(len(ts))), (1,) * len(ts)), mesh,
                           batch_axes=("host", "data"), shard_axes=("host", "data"),
                           optimizer_args={"row_wise_adagrad": {"learning_rate": 0.1}})
  (group,) = engine.groups
  got = plan(ts, 8, optimizer="row_wise_adagrad", num_hosts=2).device_bytes
  np.testing.assert_array_equal(got, [group.rows_per_shard * (8 * 4 + 4)] * 8)


@pytest.mark.parametrize("axes, shape, rules, hosts", [
    (("host", "data"), (2, 4), ("host", "data"), 2),
    (("host", "data"), (-1, 4), ("host", "data"), 2),
    (("data", "host"), (4, 2), ("data", "host"), 1),  # Not first: the engine would refuse table_row_wise.
    (("host", "data"), (1, 8), ("host", "data"), 1),  # A host axis of size 1 is dropped.
    (("host", "data"), (2, 4), ("data",), 1),  # Tables not split over hosts.
])
def test_table_hosts_reads_the_host_axis_the_tables_split_over_first(axes, shape, rules, hosts):
  from rankjax.config import base_config
  from rankjax.embedding.builder import table_hosts
  c = base_config()
  c.mesh.axes, c.mesh.shape = axes, shape
  c.mesh.rules = (("batch", axes), ("table_rows", rules), ("embed", ()))
  assert table_hosts(c, 8) == hosts
