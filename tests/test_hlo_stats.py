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
