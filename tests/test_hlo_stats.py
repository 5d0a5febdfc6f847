"""Collective accounting from HLO text, checked on a compiled shard_map with known collectives."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rankjax.perf import hlo_stats
from rankjax.partitioner import make_mesh


def test_collectives_of_a_compiled_program_are_found_with_their_bytes():
  mesh = make_mesh(("x",), (8,))

  def fn(a):
    gathered = jax.lax.all_gather(a, "x", tiled=True)  # [64, 4] f32 per device
    return jax.lax.psum_scatter(gathered * 2, "x", scatter_dimension=0, tiled=True)  # [8, 4]

  f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
  text = f.lower(jnp.zeros((64, 4), jnp.float32)).compile().as_text()
  summary = hlo_stats.summarize(hlo_stats.collectives(text))
  assert summary["all-gather"] == {"count": 1, "bytes": 64 * 4 * 4}
  assert summary["reduce-scatter"] == {"count": 1, "bytes": 8 * 4 * 4}


def test_async_start_ops_count_their_result_once():
  line = "%ag = (f32[8,4]{1,0}, f32[64,4]{1,0}) all-gather-start(f32[8,4]{1,0} %p), dimensions={0}"
  (op,) = hlo_stats.collectives(line)
  assert op.kind == "all-gather" and op.bytes == int(np.prod((64, 4))) * 4


def test_row_wise_step_moves_fewer_bytes_than_table_wise_and_its_fallback_is_told_apart():
  """`rankjax bench embedding --collectives` on a small version of its model: row_wise's taken path
  is all-to-all only and moves fewer bytes than table_wise; the all-gather path is the fallback's."""
  from rankjax.cli import bench_embedding
  from rankjax.embedding.sharding.base import ShardingType

  rows = []
  bench_embedding.collectives(1024, 512, "row_wise_adagrad", 1.25, rows.append, fallback_steps=2,
                              shardings=(ShardingType.ROW_WISE, ShardingType.TABLE_WISE))
  row_wise, table_wise = rows
  assert set(row_wise["collectives"]) == {"all-to-all", "all-reduce"}
  assert set(row_wise["fallback_collectives"]) == {"all-gather", "reduce-scatter"}
  assert row_wise["collective_bytes_per_step"] < table_wise["collective_bytes_per_step"]
  assert row_wise["fallback_bytes_per_step"] > 3 * row_wise["collective_bytes_per_step"]
  assert row_wise["fallback_steps"].endswith("of 2") and "fallback_steps" not in table_wise


def test_replica_groups_and_the_bytes_from_other_hosts():
  """The three forms XLA prints replica groups in, and a permute's pairs; on hosts of 4 devices
  (partition id // 4), an all-to-all within a host takes nothing across hosts, one over pairs
  across hosts half its bytes."""
  host_of = np.arange(8) // 4
  line = "%a = (f32[4,4]{1,0}, f32[4,4]{1,0}) all-to-all(%x, %y), channel_id=1, replica_groups={{0,4},{1,5},{2,6},{3,7}}"
  (op,) = hlo_stats.collectives(line)
  assert op.groups == ((0, 4), (1, 5), (2, 6), (3, 7)) and hlo_stats.cross_host_bytes(op, host_of) == 64.0
  (op,) = hlo_stats.collectives("%a = f32[4,4]{1,0} all-to-all(%x), replica_groups=[4,2]<=[2,4]T(1,0)")
  assert op.groups == ((0, 4), (1, 5), (2, 6), (3, 7))
  (op,) = hlo_stats.collectives("%a = f32[4,4]{1,0} all-to-all(%x), replica_groups=[2,4]<=[8]")
  assert op.groups == ((0, 1, 2, 3), (4, 5, 6, 7)) and hlo_stats.cross_host_bytes(op, host_of) == 0.0
  (op,) = hlo_stats.collectives("%a = f32[4,4]{1,0} all-reduce(%x), replica_groups={}, to_apply=%add")
  assert op.groups == () and hlo_stats.cross_host_bytes(op, host_of) == 32.0  # All 8: half on the other host.
  # Shardy's mesh form: a mesh of device ids (an iota, maybe transposed), groups along the listed axes.
  (op,) = hlo_stats.collectives("%a = f32[8]{0} all-reduce(%x), replica_groups=mesh['axis_0'=4,'axis_1'=2], "
                                "device_ids=([2,4]T(1,0)) {'axis_0'}, use_global_device_ids=true")
  assert op.groups == ((0, 1, 2, 3), (4, 5, 6, 7)) and hlo_stats.cross_host_bytes(op, host_of) == 0.0
  (op,) = hlo_stats.collectives("%a = f32[8]{0} all-reduce(%x), replica_groups=mesh['a'=2,'b'=2,'c'=2] {'a','c'}")
  assert op.groups == ((0, 1, 4, 5), (2, 3, 6, 7))
  (op,) = hlo_stats.collectives("%p = f32[4]{0} collective-permute(%x), source_target_pairs={{0,1},{3,4},{4,5},{7,0}}")
  assert op.pairs == ((0, 1), (3, 4), (4, 5), (7, 0)) and hlo_stats.cross_host_bytes(op, host_of) == 8.0


def test_table_row_wise_merges_a_hosts_ids_before_they_cross_hosts():
  """`rankjax bench embedding --collectives --hosts 2`: the two-stage exchange's bytes from the other
  host are about row_wise's at the same room (host_exchange_capacity 1.25) and shrink with it, and its
  cross-host all-to-alls run over pairs of devices, one on each host."""
  from rankjax.cli import bench_embedding
  from rankjax.embedding.sharding import table_row_wise
  from rankjax.embedding.sharding.base import ShardingType

  rows = []
  for host_capacity in (1.25, 0.5):
    bench_embedding.collectives(1024, 512, "row_wise_adagrad", 1.25, rows.append, fallback_steps=2, hosts=2,
                                shardings=(ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE),
                                host_exchange_capacity=host_capacity)
  flat, two_stage, _, smaller = rows
  # The same room (stage 2 rounds up to 8 once per host, row_wise once per owner device: a little less).
  assert 0.95 * flat["cross_host_bytes_per_step"] < two_stage["cross_host_bytes_per_step"] <= flat["cross_host_bytes_per_step"]
  assert smaller["cross_host_bytes_per_step"] < 0.5 * flat["cross_host_bytes_per_step"]
  engine, step, state, sharding = bench_embedding.sparse_engine(1024, "table_row_wise", "row_wise_adagrad",
                                                                jax.devices(), 1.25, hosts=2)
  ids, labels = next(bench_embedding._batches(1024, 512, 1))
  text = step.lower(state, jax.device_put(ids, sharding), jax.device_put(labels, sharding), jnp.int32(1)).compile().as_text()
  across = [op for op in hlo_stats.collectives(text) if table_row_wise.HOST_SCOPE in op.op_name]
  assert len(across) == 4 and all(op.groups == ((0, 4), (1, 5), (2, 6), (3, 7)) for op in across)
