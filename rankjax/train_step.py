"""The train state and the pure functions of one step: init, train_step, eval_step.

Data flow of a train step: ids -> embedding engine lookup (rows per slot) -> pooling -> model ->
BCE loss; the gradient w.r.t. the looked-up rows goes to the engine's fused sparse optimizer
(touched rows only), the gradient w.r.t. the dense params to optax. Nothing here calls jax.jit:
the Partitioner does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rankjax.embedding.engine import EmbeddingEngine


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: steps taken.
  rng: jax.Array  # uint32 PRNG key data carried for stochastic layers.
  params: Any  # nnx.State of the dense model (every variable is an optax-trained parameter).
  opt_state: Any  # optax state of the dense parameters.
  embedding: dict  # group name -> {"table": [rows, dim], optimizer state arrays}.


def cast_floating(dtype) -> Callable[[jax.Array], jax.Array]:
  """x -> x in `dtype` if x is floating point (ids stay ints): the mixed-precision cast."""
  return lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def init_dense(create_model, dense_tx: optax.GradientTransformation, seed_key: jax.Array,
               embedding: Callable[[jax.Array], dict] = lambda key: {}) -> TrainState:
  """A fresh TrainState: model params from `create_model(rngs)`, their optax state, `embedding(key)`."""
  model_key, table_key, state_key = jax.random.split(seed_key, 3)
  params = nnx.state(create_model(nnx.Rngs(params=model_key)))
  return TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(state_key), params=params,
                    opt_state=dense_tx.init(params), embedding=embedding(table_key))


def non_finite_skip(loss: jax.Array, grads: Any, enabled: bool) -> jax.Array:
  """True when the step must be dropped: skipping is on and the loss or gradient norm is NaN/inf."""
  if not enabled:
    return jnp.zeros((), bool)
  return ~(jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads)))


def dense_update(dense_tx: optax.GradientTransformation, state: TrainState, grads: Any, skip: jax.Array,
                 skip_enabled: bool) -> tuple[Any, Any]:
  """(params, opt_state) after one optax step; on a skipped step the old values (dense state is small)."""
  with jax.named_scope("dense_update"):
    updates, opt_state = dense_tx.update(grads, state.opt_state, state.params)
    if skip_enabled:
      updates = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), updates)
      opt_state = jax.tree.map(lambda new, old: jnp.where(skip, old, new), opt_state, state.opt_state)
    return optax.apply_updates(state.params, updates), opt_state


class StepFunctions:
  """Builds the pure init/train/eval functions for a model, its embedding engine and optimizer."""

  def __init__(self, graphdef: nnx.GraphDef, engine: EmbeddingEngine, dense_tx: optax.GradientTransformation,
               create_model, skip_non_finite: bool = False, compute_dtype=jnp.float32):
    self.graphdef = graphdef
    self.engine = engine
    self.dense_tx = dense_tx
    self.create_model = create_model  # (rngs) -> nnx.Module
    self.skip_non_finite = skip_non_finite  # Drop a step whose loss or gradient norm is NaN/inf.
    # Mixed precision: params and tables stay float32 (the optimizers update those); the forward
    # and backward run in compute_dtype; the loss is computed in float32.
    self.compute_dtype = compute_dtype

  def init(self, seed_key: jax.Array) -> TrainState:
    return init_dense(self.create_model, self.dense_tx, seed_key, embedding=self.engine.init)

  def _logits(self, params, batch: dict[str, jax.Array], rows_btd: jax.Array) -> jax.Array:
    cast = cast_floating(self.compute_dtype)
    emb_bfd = self.engine.pool(cast(rows_btd), batch["cat"])
    model = nnx.merge(self.graphdef, jax.tree.map(cast, params))
    return model(cast(batch["dense"]), emb_bfd).astype(jnp.float32)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    rows_btd = self.engine.lookup(state.embedding, batch["cat"])

    def loss_fn(params, rows_btd):
      logits_b = self._logits(params, batch, rows_btd)
      with jax.named_scope("loss"):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits_b, batch["label"]))

    loss, (grad_params, grad_rows_btd) = jax.value_and_grad(loss_fn, argnums=(0, 1))(state.params, rows_btd)
    skip = non_finite_skip(loss, (grad_params, grad_rows_btd), self.skip_non_finite)
    params, opt_state = dense_update(self.dense_tx, state, grad_params, skip, self.skip_non_finite)
    step = state.step + 1
    # A skipped step touches no table row: every id becomes padding (tables are never copied).
    ids_bt = jnp.where(skip, -1, batch["cat"]) if self.skip_non_finite else batch["cat"]
    embedding = self.engine.apply_gradients(state.embedding, ids_bt, grad_rows_btd, step)
    new_state = state.replace(step=step, params=params, opt_state=opt_state, embedding=embedding)
    return new_state, {"loss": loss, "skipped": skip}

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> jax.Array:
    return self._logits(state.params, batch, self.engine.lookup(state.embedding, batch["cat"]))
