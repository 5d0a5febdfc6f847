"""The pure step functions for learning to rank: a per-document scorer trained on batches of
query lists with a listwise or pairwise loss (rankjax.losses); dense parameters only.

The train state is the CTR TrainState with an empty `embedding` dict, so checkpointing and
restore are shared with the CTR path. Nothing here calls jax.jit: the Partitioner does.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rankjax.train_step import TrainState, cast_floating, dense_update, init_dense, non_finite_skip


class RankingStepFunctions:
  """init/train/eval for a ranking model; batches hold relevance [b, L], features [b, L, N], mask [b, L]."""

  engine = None  # No embedding tables: checkpoints record no embedding layout.

  def __init__(self, graphdef: nnx.GraphDef, dense_tx: optax.GradientTransformation, create_model,
               loss_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
               feature_mean_n: np.ndarray, feature_std_n: np.ndarray, skip_non_finite: bool = False,
               compute_dtype=jnp.float32):
    self.graphdef = graphdef
    self.dense_tx = dense_tx
    self.create_model = create_model  # (rngs) -> nnx.Module
    self.loss_fn = loss_fn  # (scores_bl, relevance_bl, mask_bl) -> scalar
    # Feature standardisation constants (data statistics, not parameters), applied in float32.
    self.feature_mean_n, self.feature_std_n = feature_mean_n, feature_std_n
    self.skip_non_finite = skip_non_finite  # Drop a step whose loss or gradient norm is NaN/inf.
    self.compute_dtype = compute_dtype  # Forward/backward precision; params and the loss stay float32.

  def init(self, seed_key: jax.Array) -> TrainState:
    return init_dense(self.create_model, self.dense_tx, seed_key)

  def _scores(self, params, features_bln: jax.Array) -> jax.Array:
    cast = cast_floating(self.compute_dtype)
    model = nnx.merge(self.graphdef, jax.tree.map(cast, params))
    normalized_bln = (features_bln - self.feature_mean_n) / self.feature_std_n
    return model(cast(normalized_bln)).astype(jnp.float32)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    def loss_fn(params):
      scores_bl = self._scores(params, batch["features"])
      with jax.named_scope("loss"):
        return self.loss_fn(scores_bl, batch["relevance"], batch["mask"])

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    skip = non_finite_skip(loss, grads, self.skip_non_finite)
    params, opt_state = dense_update(self.dense_tx, state, grads, skip, self.skip_non_finite)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {"loss": loss, "skipped": skip}

  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> jax.Array:
    return self._scores(state.params, batch["features"])
