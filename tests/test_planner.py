"""The embedding planner: replicated small tables, row-wise huge ones, table-wise the rest;
overrides win; a plan that cannot fit names the table and the shortfall."""

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


def test_a_job_across_hosts_keeps_each_huge_table_on_one_hosts_devices():
  two_huge = tables() + [EmbeddingTableConfig("huge2", 3_000_000, 64, ("f",))]
  p = plan(two_huge, 8, optimizer="row_wise_adagrad", num_hosts=2)
  assert p.sharding_of()["huge"] == p.sharding_of()["huge2"] == "table_row_wise"
  by_name = {t.table: t for t in p.tables}
  huge_b, huge2_b = table_bytes(two_huge[0], "row_wise_adagrad"), table_bytes(two_huge[-1], "row_wise_adagrad")
  assert by_name["huge"].bytes_per_device == (-(-huge_b // 4),) * 4 + (0,) * 4  # Host 0: devices 0-3.
  assert by_name["huge2"].bytes_per_device == (0,) * 4 + (-(-huge2_b // 4),) * 4  # The lighter host.
  # One host's four devices cannot hold `huge` within this memory, all eight can: row-wise.
  tight = plan(tables(), 8, optimizer="row_wise_adagrad", num_hosts=2, device_memory=200_000_000)
  assert huge_b // 4 > 200_000_000 > huge_b // 8
  assert tight.sharding_of()["huge"] == "row_wise"
  with pytest.raises(PlanError, match="do not split evenly over 3 hosts"):
    plan(tables(), 8, optimizer="row_wise_adagrad", num_hosts=3)
