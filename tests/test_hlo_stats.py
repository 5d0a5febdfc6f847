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
