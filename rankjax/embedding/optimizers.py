"""Fused sparse optimizers for embedding tables: update only the rows looked up in a step, in place.

Ids are deduplicated deterministically (sort + segment_sum over sorted segments) so each touched
row gets its summed gradient once; untouched rows of the table and of the state are never written.
"""

from __future__ import annotations

import abc
import functools
import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

RowSum = Callable[[jax.Array], jax.Array]


def segment_sum_by_scan(values_nd: jax.Array, segment_n: jax.Array, is_start_n: jax.Array) -> jax.Array:
  """Sums of sorted, contiguous segments without atomics: an inclusive segmented scan, then each
  segment's last element written once to slot `segment`. Bitwise repeatable on any backend."""
  n = values_nd.shape[0]

  def combine(a, b):
    start_a, sum_a = a
    start_b, sum_b = b
    return start_a | start_b, jnp.where(start_b[:, None], sum_b, sum_a + sum_b)

  _, running = jax.lax.associative_scan(combine, (is_start_n.astype(bool), values_nd))
  is_end = jnp.concatenate([is_start_n[1:].astype(bool), jnp.ones((1,), bool)])
  target = jnp.where(is_end, segment_n, n)  # Non-final elements write nowhere.
  return jnp.zeros_like(values_nd).at[target].set(running, mode="drop", unique_indices=True)


def dedupe(rows_n: jax.Array, grads_nd: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
  """Sums gradients of repeated rows.

  Returns (unique_rows_n, summed_nd): the first k entries hold the k distinct rows in ascending
  order with their summed gradients; the rest hold `num_rows` (out of bounds, dropped by
  scatters with mode='drop') and zeros. Ids outside [0, num_rows) belong to no row of this table
  (padding, or rows of another shard): they are mapped to `num_rows` with a zero gradient.
  """
  with jax.named_scope("dedupe"):
    rows_n = jnp.where((rows_n >= 0) & (rows_n < num_rows), rows_n, num_rows)
    return jax.lax.platform_dependent(rows_n, grads_nd, cpu=functools.partial(_dedupe_cpu, num_rows=num_rows),
                                      default=functools.partial(_dedupe_sorted, num_rows=num_rows))


def _dedupe_cpu(rows_n: jax.Array, grads_nd: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
  """XLA:CPU: sort the row ids alone (a keys-only sort is ~6x faster there than sorting a payload
  with them), find each occurrence's segment by binary search, and scatter-add the gradients in
  batch order (XLA:CPU applies a scatter in order: deterministic)."""
  n = rows_n.shape[0]
  sorted_rows = jnp.sort(rows_n)
  is_new = jnp.concatenate([jnp.ones((1,), jnp.int32), (sorted_rows[1:] != sorted_rows[:-1]).astype(jnp.int32)])
  segment_sorted = jnp.cumsum(is_new) - 1
  segment = segment_sorted[jnp.searchsorted(sorted_rows, rows_n, side="left")]
  summed = jax.ops.segment_sum(grads_nd, segment, num_segments=n)
  return _unique_and_sums(sorted_rows, segment_sorted, summed, num_rows)


def _dedupe_sorted(rows_n: jax.Array, grads_nd: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
  """Other backends: a stable sort keyed on the row keeps each row's occurrences in batch order;
  a segmented scan sums them with one write per row (no atomics: bitwise repeatable)."""
  n = rows_n.shape[0]
  sorted_rows, order = jax.lax.sort((rows_n, jnp.arange(n, dtype=rows_n.dtype)), num_keys=1, is_stable=True)
  is_new = jnp.concatenate([jnp.ones((1,), jnp.int32), (sorted_rows[1:] != sorted_rows[:-1]).astype(jnp.int32)])
  segment = jnp.cumsum(is_new) - 1
  return _unique_and_sums(sorted_rows, segment, segment_sum_by_scan(grads_nd[order], segment, is_new), num_rows)


def _unique_and_sums(sorted_rows: jax.Array, segment: jax.Array, summed: jax.Array, num_rows: int):
  """The distinct rows in ascending order (then `num_rows` padding) and their sums (0 for padding)."""
  n = sorted_rows.shape[0]
  unique = jnp.full((n,), num_rows, sorted_rows.dtype).at[segment].set(sorted_rows)
  return unique, jnp.where((unique < num_rows)[:, None], summed, 0)


class SparseOptimizer(abc.ABC):
  """An optimizer that updates only the looked-up rows of one embedding table.

  Subclasses give the per-row rule in `_update_rows`; `update` gathers the touched rows of the
  table (as float32) and of each state array, applies the rule once per distinct row to the summed
  gradient, and scatters the results back. State is float32 whatever the table's dtype.
  """

  name: ClassVar[str]

  @abc.abstractmethod
  def init(self, num_rows: int, dim: int) -> dict[str, jax.Array]:
    """Per-row state: float32 arrays [num_rows] or [num_rows, dim], keyed by checkpointed names."""

  @abc.abstractmethod
  def state_is_per_row(self) -> dict[str, bool]:
    """State key -> True if its array is [num_rows] (a scalar per row), False if [num_rows, dim]."""

  @abc.abstractmethod
  def _update_rows(self, w_nd: jax.Array, state_n: dict[str, jax.Array], g_nd: jax.Array,
                   step: jax.Array, row_sum: RowSum | None, full_dim: int | None
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """New float32 values of the gathered rows and their state, given each row's summed gradient."""

  def update(self, table_rd: jax.Array, state: dict[str, jax.Array], rows_n: jax.Array,
             grads_nd: jax.Array, step: jax.Array | int, *, row_sum: RowSum | None = None,
             full_dim: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Applies one step to the rows in `rows_n`; returns the new (table, state).

    rows_n: int [n], may repeat; ids < 0 or >= num_rows are ignored (they change nothing).
    grads_nd: [n, dim], the loss gradient w.r.t. each looked-up occurrence.
    step: the 1-based step number (Adam's bias correction).
    row_sum, full_dim: for a column-sharded table, a reduction over the shards of a per-row sum
      (e.g. a psum) and the unsharded dim; only row-wise Adagrad, which needs the whole row's
      mean squared gradient, uses them. Every shard must see the same `rows_n`.
    """
    with jax.named_scope("sparse_update"):
      num_rows = table_rd.shape[0]
      unique_n, g_nd = dedupe(rows_n, grads_nd.astype(jnp.float32), num_rows)
      # Padding slots (id num_rows) read a real row via clip, so they compute finite values, and
      # their writes are dropped.
      w_nd = table_rd.at[unique_n].get(mode="clip", indices_are_sorted=True).astype(jnp.float32)
      state_n = {key: value.at[unique_n].get(mode="clip", indices_are_sorted=True)
                 for key, value in state.items()}
      new_w_nd, new_state_n = self._update_rows(w_nd, state_n, g_nd, jnp.asarray(step), row_sum,
                                                full_dim)
      table_rd = table_rd.at[unique_n].set(new_w_nd.astype(table_rd.dtype), mode="drop",
                                           indices_are_sorted=True)
      state = {key: state[key].at[unique_n].set(new_state_n[key], mode="drop",
                                                indices_are_sorted=True)
               for key in state}
      return table_rd, state


def _full(num_rows: int, dim: int | None, value: float) -> jax.Array:
  shape = (num_rows,) if dim is None else (num_rows, dim)
  return jnp.full(shape, value, jnp.float32)


@dataclasses.dataclass(frozen=True)
class SGD(SparseOptimizer):
  """table[r] -= lr * (sum of the gradients of r's occurrences); no state.

  On a float32 (or wider) table this is one scatter-add of every occurrence, without dedupe:
  the sum over repeats is exact up to float rounding order. A bfloat16 table takes the dedupe
  path instead, because a bf16 scatter-add rounds after each repeated occurrence.
  Off CPU (XLA:GPU implements scatter-add with atomics, whose rounding order varies between
  runs) the dedupe path is taken as well, so every backend is bitwise repeatable.
  """

  name: ClassVar[str] = "sgd"
  learning_rate: float

  # The learning rate's multiplier at step t (0 = the first update), or None for a constant rate.
  schedule: Callable[[jax.Array], jax.Array] | None = dataclasses.field(default=None, compare=False, repr=False)

  def init(self, num_rows: int, dim: int) -> dict[str, jax.Array]:
    return {}

  def state_is_per_row(self) -> dict[str, bool]:
    return {}

  def update(self, table_rd: jax.Array, state: dict[str, jax.Array], rows_n: jax.Array,
             grads_nd: jax.Array, step: jax.Array | int, *, row_sum: RowSum | None = None,
             full_dim: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    if jnp.finfo(table_rd.dtype).bits < 32:
      return super().update(table_rd, state, rows_n, grads_nd, step)

    def scatter_add(table_rd, rows_n, grads_nd):
      with jax.named_scope("sparse_update"):
        num_rows = table_rd.shape[0]
        # Negative ids would wrap around in .at[]; send every foreign id out of bounds instead.
        rows_n = jnp.where((rows_n >= 0) & (rows_n < num_rows), rows_n, num_rows)
        delta_nd = (-self.learning_rate * grads_nd.astype(jnp.float32)).astype(table_rd.dtype)
        return table_rd.at[rows_n].add(delta_nd, mode="drop")

    def deduped(table_rd, rows_n, grads_nd):
      return SparseOptimizer.update(self, table_rd, {}, rows_n, grads_nd, step)[0]

    # XLA:CPU scatters in order (exact, deterministic); elsewhere repeats would hit atomics.
    return jax.lax.platform_dependent(table_rd, rows_n, grads_nd, cpu=scatter_add, default=deduped), state

  def _update_rows(self, w_nd, state_n, g_nd, step, row_sum, full_dim):
    return w_nd - self.learning_rate * g_nd, state_n


@dataclasses.dataclass(frozen=True)
class Adagrad(SparseOptimizer):
  """Per-coordinate Adagrad: accum[r] += g_r**2; table[r] -= lr * g_r / (sqrt(accum[r]) + eps)."""

  name: ClassVar[str] = "adagrad"
  learning_rate: float
  initial_accumulator: float = 0.0
  epsilon: float = 1e-8

  # The learning rate's multiplier at step t (0 = the first update), or None for a constant rate.
  schedule: Callable[[jax.Array], jax.Array] | None = dataclasses.field(default=None, compare=False, repr=False)

  def init(self, num_rows: int, dim: int) -> dict[str, jax.Array]:
    return {"accumulator": _full(num_rows, dim, self.initial_accumulator)}

  def state_is_per_row(self) -> dict[str, bool]:
    return {"accumulator": False}

  def _update_rows(self, w_nd, state_n, g_nd, step, row_sum, full_dim):
    accum_nd = state_n["accumulator"] + g_nd * g_nd
    w_nd = w_nd - self.learning_rate * g_nd / (jnp.sqrt(accum_nd) + self.epsilon)
    return w_nd, {"accumulator": accum_nd}


@dataclasses.dataclass(frozen=True)
class RowWiseAdagrad(SparseOptimizer):
  """One accumulator per row, fed the row's mean squared gradient (FBGEMM's row-wise Adagrad).

  accum[r] += mean(g_r**2);  table[r] -= lr * g_r / (sqrt(accum[r]) + eps).
  With a column-sharded table the mean is over the full row: sum(g**2) over this shard's columns,
  reduced across shards by `row_sum`, divided by `full_dim`.
  """

  name: ClassVar[str] = "row_wise_adagrad"
  learning_rate: float
  initial_accumulator: float = 0.0
  epsilon: float = 1e-8

  # The learning rate's multiplier at step t (0 = the first update), or None for a constant rate.
  schedule: Callable[[jax.Array], jax.Array] | None = dataclasses.field(default=None, compare=False, repr=False)

  def init(self, num_rows: int, dim: int) -> dict[str, jax.Array]:
    return {"accumulator": _full(num_rows, None, self.initial_accumulator)}

  def state_is_per_row(self) -> dict[str, bool]:
    return {"accumulator": True}

  def _update_rows(self, w_nd, state_n, g_nd, step, row_sum, full_dim):
    square_sum_n = jnp.sum(g_nd * g_nd, axis=-1)
    if row_sum is not None:
      square_sum_n = row_sum(square_sum_n)
    accum_n = state_n["accumulator"] + square_sum_n / (full_dim or g_nd.shape[-1])
    w_nd = w_nd - self.learning_rate * g_nd / (jnp.sqrt(accum_n) + self.epsilon)[:, None]
    return w_nd, {"accumulator": accum_n}


@dataclasses.dataclass(frozen=True)
class Adam(SparseOptimizer):
  """Adam with lazy moments (as TF's LazyAdam): only the touched rows' moments decay and update.

  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g**2;  lr_t = lr * sqrt(1 - b2**t) / (1 - b1**t);
  table[r] -= lr_t * m / (sqrt(v) + eps), with t the global step, not the row's update count.
  """

  name: ClassVar[str] = "adam"
  learning_rate: float
  beta1: float = 0.9
  beta2: float = 0.999
  epsilon: float = 1e-8

  # The learning rate's multiplier at step t (0 = the first update), or None for a constant rate.
  schedule: Callable[[jax.Array], jax.Array] | None = dataclasses.field(default=None, compare=False, repr=False)

  def init(self, num_rows: int, dim: int) -> dict[str, jax.Array]:
    return {"first_moment": _full(num_rows, dim, 0.0), "second_moment": _full(num_rows, dim, 0.0)}

  def state_is_per_row(self) -> dict[str, bool]:
    return {"first_moment": False, "second_moment": False}

  def _update_rows(self, w_nd, state_n, g_nd, step, row_sum, full_dim):
    m_nd = self.beta1 * state_n["first_moment"] + (1 - self.beta1) * g_nd
    v_nd = self.beta2 * state_n["second_moment"] + (1 - self.beta2) * g_nd * g_nd
    t = step.astype(jnp.float32)
    lr_t = self.learning_rate * jnp.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
    w_nd = w_nd - lr_t * m_nd / (jnp.sqrt(v_nd) + self.epsilon)
    return w_nd, {"first_moment": m_nd, "second_moment": v_nd}


@dataclasses.dataclass(frozen=True)
class FTRL(SparseOptimizer):
  """Per-coordinate FTRL-Proximal (McMahan et al. 2013), exactly TF's ApplyFtrl kernel.

  With p = learning_rate_power, n the accumulator and z the linear term:
    new_n = n + g**2
    z += g - (new_n**(-p) - n**(-p)) / lr * w
    w = (sign(z)*l1 - z) / (new_n**(-p) / lr + 2*l2)  if |z| > l1  else 0
  (for p = -0.5 the powers are square roots, as in TF). TF's l2_shrinkage and Keras's beta are
  not supported.
  """

  name: ClassVar[str] = "ftrl"
  learning_rate: float
  learning_rate_power: float = -0.5
  l1: float = 0.0
  l2: float = 0.0
  initial_accumulator: float = 0.1

  def __post_init__(self):
    if self.learning_rate_power > 0:
      raise ValueError(f"ftrl: learning_rate_power must be <= 0, got {self.learning_rate_power}")
    if self.initial_accumulator < 0 or self.l1 < 0 or self.l2 < 0:
      raise ValueError("ftrl: initial_accumulator, l1 and l2 must be >= 0")

  def init(self, num_rows: int, dim: int) -> dict[str, jax.Array]:
    return {"accumulator": _full(num_rows, dim, self.initial_accumulator),
            "linear": _full(num_rows, dim, 0.0)}

  def state_is_per_row(self) -> dict[str, bool]:
    return {"accumulator": False, "linear": False}

  def _power(self, accum_nd: jax.Array) -> jax.Array:
    if self.learning_rate_power == -0.5:
      return jnp.sqrt(accum_nd)
    return accum_nd ** -self.learning_rate_power

  def _update_rows(self, w_nd, state_n, g_nd, step, row_sum, full_dim):
    accum_nd = state_n["accumulator"]
    new_accum_nd = accum_nd + g_nd * g_nd
    new_accum_pow_nd = self._power(new_accum_nd)
    sigma_nd = (new_accum_pow_nd - self._power(accum_nd)) / self.learning_rate
    linear_nd = state_n["linear"] + g_nd - sigma_nd * w_nd
    quadratic_nd = new_accum_pow_nd / self.learning_rate + 2 * self.l2
    w_nd = jnp.where(jnp.abs(linear_nd) > self.l1,
                     (jnp.sign(linear_nd) * self.l1 - linear_nd) / quadratic_nd, 0.0)
    return w_nd, {"accumulator": new_accum_nd, "linear": linear_nd}


_OPTIMIZERS: dict[str, type[SparseOptimizer]] = {
    cls.name: cls for cls in (SGD, Adagrad, RowWiseAdagrad, Adam, FTRL)}
NAMES: tuple[str, ...] = tuple(_OPTIMIZERS)


def optimizer_class(name: str) -> type[SparseOptimizer]:
  """The class of the sparse optimizer called `name`; its dataclass fields are its hparams."""
  if name not in _OPTIMIZERS:
    raise ValueError(f"unknown sparse optimizer {name!r}; expected one of {NAMES}")
  return _OPTIMIZERS[name]


def make(name: str, **hparams: float) -> SparseOptimizer:
  """The sparse optimizer called `name` (one of NAMES) with the given hyperparameters."""
  return optimizer_class(name)(**hparams)
