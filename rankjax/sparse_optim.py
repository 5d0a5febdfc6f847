"""Fused sparse optimizers: update only the table rows looked up in a step, in place.

Ids are deduplicated deterministically (sort + segment_sum over sorted segments) so each touched
row gets its summed gradient once; the untouched rows are never read or written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dedupe(rows_n: jax.Array, grads_nd: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
  """Sums gradients of repeated rows.

  Returns (unique_rows_n, summed_nd): the first k entries hold the k distinct rows in ascending
  order with their summed gradients; the rest hold `num_rows` (out of bounds, dropped by
  scatters with mode='drop') and zeros.
  """
  with jax.named_scope("dedupe"):
    n = rows_n.shape[0]
    sorted_rows, order = jax.lax.sort((rows_n, jnp.arange(n, dtype=jnp.int32)), num_keys=1)
    is_new = jnp.concatenate([jnp.ones((1,), jnp.int32),
                              (sorted_rows[1:] != sorted_rows[:-1]).astype(jnp.int32)])
    segment = jnp.cumsum(is_new) - 1
    summed = jax.ops.segment_sum(grads_nd[order], segment, num_segments=n, indices_are_sorted=True)
    unique = jnp.full((n,), num_rows, rows_n.dtype).at[segment].set(sorted_rows)
    return unique, summed


def row_wise_adagrad(table_rd: jax.Array, accum_r: jax.Array, rows_n: jax.Array, grads_nd: jax.Array,
                     learning_rate: float, epsilon: float) -> tuple[jax.Array, jax.Array]:
  """Row-wise Adagrad on the touched rows: one accumulator per row, fed the mean squared gradient.

  accum[r] += mean(g_r ** 2);  table[r] -= lr * g_r / (sqrt(accum[r]) + eps)
  where g_r is the gradient of row r summed over every occurrence in the batch.
  """
  with jax.named_scope("sparse_update"):
    num_rows = table_rd.shape[0]
    unique_n, g_nd = dedupe(rows_n, grads_nd, num_rows)
    acc_n = accum_r.at[unique_n].get(mode="fill", fill_value=0) + jnp.mean(g_nd * g_nd, axis=-1)
    accum_r = accum_r.at[unique_n].set(acc_n, mode="drop")
    delta_nd = -learning_rate * g_nd / (jnp.sqrt(acc_n) + epsilon)[:, None]
    table_rd = table_rd.at[unique_n].add(delta_nd, mode="drop")
    return table_rd, accum_r
