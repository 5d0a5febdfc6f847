"""The train state and the pure functions of one step: init, train_step, eval_step.

Data flow of a train step: ids -> stacked-table rows -> gathered embeddings -> model -> BCE loss;
the gradient w.r.t. the gathered rows feeds the sparse row-wise Adagrad (touched rows only), the
gradient w.r.t. the dense params feeds optax. Nothing here calls jax.jit: the Partitioner does.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rankjax import sparse_optim
from rankjax.embedding import StackedTables, lookup


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: steps taken.
  rng: jax.Array  # uint32 PRNG key data carried for stochastic layers.
  params: Any  # nnx.State of the dense model (every variable is an optax-trained parameter).
  opt_state: Any  # optax state of the dense parameters.
  table: jax.Array  # [rows, dim] stacked embedding tables.
  table_accum: jax.Array  # [rows] row-wise Adagrad accumulators.


class StepFunctions:
  """Builds the pure init/train/eval functions for a model, its tables and optimizers."""

  def __init__(self, graphdef: nnx.GraphDef, tables: StackedTables, dense_tx: optax.GradientTransformation,
               *, sparse_learning_rate: float, sparse_epsilon: float, sparse_initial_accumulator: float,
               create_model):
    self.graphdef = graphdef
    self.tables = tables
    self.dense_tx = dense_tx
    self.sparse_learning_rate = sparse_learning_rate
    self.sparse_epsilon = sparse_epsilon
    self.sparse_initial_accumulator = sparse_initial_accumulator
    self.create_model = create_model  # (rngs) -> nnx.Module

  def init(self, seed_key: jax.Array) -> TrainState:
    model_key, table_key, state_key = jax.random.split(seed_key, 3)
    params = nnx.state(self.create_model(nnx.Rngs(params=model_key)))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(state_key),
        params=params,
        opt_state=self.dense_tx.init(params),
        table=self.tables.init(table_key),
        table_accum=jnp.full((self.tables.padded_rows,), self.sparse_initial_accumulator, jnp.float32))

  def _logits(self, params, dense_bd: jax.Array, emb_bfd: jax.Array) -> jax.Array:
    return nnx.merge(self.graphdef, params)(dense_bd, emb_bfd)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    rows_bf = self.tables.global_ids(batch["cat"])
    emb_bfd = lookup(state.table, rows_bf)

    def loss_fn(params, emb_bfd):
      logits_b = self._logits(params, batch["dense"], emb_bfd)
      with jax.named_scope("loss"):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits_b, batch["label"]))

    loss, (grad_params, grad_emb_bfd) = jax.value_and_grad(loss_fn, argnums=(0, 1))(state.params, emb_bfd)
    with jax.named_scope("dense_update"):
      updates, opt_state = self.dense_tx.update(grad_params, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    table, table_accum = sparse_optim.row_wise_adagrad(
        state.table, state.table_accum, rows_bf.reshape(-1), grad_emb_bfd.reshape(-1, self.tables.dim),
        self.sparse_learning_rate, self.sparse_epsilon)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              table=table, table_accum=table_accum)
    return new_state, {"loss": loss}

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> jax.Array:
    emb_bfd = lookup(state.table, self.tables.global_ids(batch["cat"]))
    return self._logits(state.params, batch["dense"], emb_bfd)
