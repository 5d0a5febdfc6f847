"""The task seam: a Task knows what a batch holds and what is learned from it.

It owns the BatchSpec (read by the pipeline, the partitioner, `profile`, `plan`, `bench`), the
model's InputSpec, the optional embedding engine, and the pure init / train_step / eval_init /
eval_step (eval metrics stream into fixed-size totals on device);
on the host, the eval metrics, the metrics a checkpoint is ranked by, and the run summary. The
trainer (rankjax/train.py) calls only this interface. Nothing here calls jax.jit: the
Partitioner does.

Data flow of a train step: ids -> engine lookup (rows per slot) -> pooling -> KeyedEmbeddings ->
model -> named outputs -> the task's loss; the gradient w.r.t. the looked-up rows goes to the
engine's fused sparse optimizer (touched rows only), the gradient w.r.t. dense params to optax.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from rankjax import layers
from rankjax.config import model_module
from rankjax.data.batch import BatchSpec
from rankjax.dense_optim import dense_optimizer
from rankjax.embedding.engine import EmbeddingEngine, Routing
from rankjax.model_inputs import InputSpec, ModelInputs


DROPOUT_STREAM = 1  # fold_in(step key, this): the dropout key, apart from a task's own draws (list sampling).


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: steps taken.
  rng: jax.Array  # uint32 PRNG key data carried for stochastic layers.
  params: Any  # nnx.State of the dense model (every variable is an optax-trained parameter).
  opt_state: Any  # optax state of the dense parameters.
  embedding: dict  # group name -> {"table": [rows, dim], optimizer state arrays}; {} without tables.


def cast_floating(dtype) -> Callable[[jax.Array], jax.Array]:
  """x -> x in `dtype` if x is floating point (ids stay ints): the mixed-precision cast."""
  return lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def non_finite_skip(loss: jax.Array, grads: Any, enabled: bool) -> jax.Array:
  """True when the step must be dropped: skipping is on and the loss or gradient norm is NaN/inf."""
  if not enabled:
    return jnp.zeros((), bool)
  return ~(jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads)))


class Task(abc.ABC):
  """A trainable task: subclasses set `batch_spec`, `inputs` and `engine` in __init__ and define
  the loss, the model inputs and the host-side metrics."""

  LOSSES: ClassVar[dict[str, Callable]]  # train.loss name -> loss function (the registry).
  EVAL_METRICS: ClassVar[tuple[str, ...]]  # Metrics checkpoint.keep_best_metric may rank by.
  LOWER_IS_BETTER: ClassVar[tuple[str, ...]] = ("logloss", "loss")
  RATE_KEY: ClassVar[str] = "examples_per_sec"  # Training speed in train events and summary.json.

  @classmethod
  def selection_metric(cls, config: ml_collections.ConfigDict) -> str:
    """The eval metric a model is selected by on the validation split (the configs' default
    train.early_stopping.metric)."""
    return cls.EVAL_METRICS[0]

  batch_spec: BatchSpec  # What a train batch holds (an eval batch adds `weight`).
  inputs: InputSpec  # What the model is built from.
  engine: EmbeddingEngine | None = None  # The embedding tables, if the task has categorical features.

  def __init__(self, config: ml_collections.ConfigDict, manifest: dict):
    self.config = config
    self.manifest = manifest
    self.model = model_module(config.model.name)
    self.dense_tx = dense_optimizer(config.train.dense_optimizer, config.train.dense_learning_rate,
                                    config.train.lr_schedule, config.train.warmup_steps, config.train.steps,
                                    config.train.weight_decay, config.train.grad_clip_norm)
    self.skip_non_finite = config.train.on_non_finite == "skip"  # Drop a step whose loss or grad is NaN/inf.
    # Mixed precision: params and tables stay float32 (the optimizers update those); the forward
    # and backward run in compute_dtype; the loss is computed in float32.
    self.compute_dtype = jnp.dtype(config.train.compute_dtype)
    self.embedding_l2 = float(config.embedding.l2)

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    """Task-specific config checks, raising ConfigError naming the key."""

  @classmethod
  def with_vocab_sizes(cls, manifest: dict, resize: Callable[[int], int]) -> dict:
    """The data shape (a manifest) with every vocabulary resized by `resize` (what `profile`
    compiles again to tell table bytes from the rest)."""
    return dict(manifest, vocab_sizes=[resize(v) for v in manifest["vocab_sizes"]])

  @classmethod
  def embedding_tables(cls, config: ml_collections.ConfigDict, manifest: dict) -> list:
    """The model's embedding tables for data of `manifest`'s shape (none by default)."""
    return []

  # ---- The model.

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return layers.set_dropout(self.model.create(self.config, self.inputs, rngs=rngs), self.config.train.dropout)

  @property
  def graphdef(self) -> nnx.GraphDef:
    if not hasattr(self, "_graphdef"):
      self._graphdef, _ = nnx.split(nnx.eval_shape(lambda: self.create_model(nnx.Rngs(0))))
    return self._graphdef

  def apply_model(self, params: Any, inputs: ModelInputs, dropout_key: jax.Array | None = None
                  ) -> dict[str, jax.Array]:
    """The model's named outputs, run in compute_dtype (inputs arrive cast), returned in float32;
    with `dropout_key` (train steps), its MLPs' dropout is drawn from it."""
    model = nnx.merge(self.graphdef, jax.tree.map(cast_floating(self.compute_dtype), params))
    if dropout_key is not None:
      layers.seed_dropout(model, dropout_key)
    return {k: v.astype(jnp.float32) for k, v in model(inputs).items()}

  # ---- Pure step functions (jitted by the Partitioner).

  @abc.abstractmethod
  def model_inputs(self, batch: dict[str, jax.Array], rows: dict[str, jax.Array] | None,
                   routing: Routing | None) -> ModelInputs:
    """A batch (and, with an engine, its looked-up rows per table group and their routing) -> what
    the model is called with, floating point arrays cast to compute_dtype."""

  @abc.abstractmethod
  def loss(self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(the scalar training loss, extra per-step metrics such as per-head losses)."""

  def sparse_ids(self, batch: dict[str, jax.Array]) -> jax.Array:
    """The batch's categorical ids [B, slots] the engine looks up (tasks with an engine)."""
    raise NotImplementedError(f"{type(self).__name__} has no embedding engine")

  def sparse_ids_hi(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    """The high words of the batch's raw 64-bit ids (`sparse_ids` holds the low words), for data
    that keeps them (`rankjax data criteo --vocab raw`); None for row ids."""
    del batch
    return None

  def init(self, seed_key: jax.Array) -> TrainState:
    model_key, table_key, state_key = jax.random.split(seed_key, 3)
    params = nnx.state(self.create_model(nnx.Rngs(params=model_key)))
    return TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(state_key), params=params,
                      opt_state=self.dense_tx.init(params),
                      embedding=self.engine.init(table_key) if self.engine else {})

  def _dense_update(self, state: TrainState, grads: Any, skip: jax.Array) -> tuple[Any, Any]:
    """(params, opt_state) after one optax step; on a skipped step the old values (dense state is small)."""
    with jax.named_scope("dense_update"):
      updates, opt_state = self.dense_tx.update(grads, state.opt_state, state.params)
      if self.skip_non_finite:
        updates = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), updates)
        opt_state = jax.tree.map(lambda new, old: jnp.where(skip, old, new), opt_state, state.opt_state)
      return optax.apply_updates(state.params, updates), opt_state

  def _route_and_lookup(self, state: TrainState, batch: dict[str, jax.Array]):
    """(routing, rows per group) of the batch's ids, routed once per step; (None, None) without
    tables. Dynamic tables' ids are looked up in their maps (eval and serving: nothing admitted)."""
    if not self.engine:
      return None, None
    routing = self.engine.route(self.engine.map_ids(state.embedding, self.sparse_ids(batch), self.sparse_ids_hi(batch)))
    return routing, self.engine.lookup_groups(state.embedding, routing)

  def _admit_route_and_lookup(self, state: TrainState, batch: dict[str, jax.Array]):
    """A train step's (embedding state, routing, rows per group, dynamic-table stats): dynamic
    tables admit the batch's new ids first (rankjax/embedding/dynamic.py)."""
    if not self.engine:
      return state.embedding, None, None, {}
    embedding, ids, stats = self.engine.admit(state.embedding, self.sparse_ids(batch), state.step,
                                              self.sparse_ids_hi(batch))
    routing = self.engine.route(ids)
    return embedding, routing, self.engine.lookup_groups(embedding, routing), stats

  def train_batch(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch a train step learns from (a task may sample it, e.g. documents of long lists)."""
    del state
    return batch

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    batch = self.train_batch(state, batch)
    embedding, routing, rows, dynamic_stats = self._admit_route_and_lookup(state, batch)
    dropout_key = (jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step),
                                      DROPOUT_STREAM) if self.config.train.dropout else None)

    def loss_fn(params, rows):
      outputs = self.apply_model(params, self.model_inputs(batch, rows, routing), dropout_key)
      with jax.named_scope("loss"):
        return self.loss(outputs, batch)

    (loss, extra), (grad_params, grad_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        state.params, rows)
    if self.embedding_l2:  # Padding lookups read zero rows: nothing added for them.
      grad_rows = jax.tree.map(lambda g, r: g + self.embedding_l2 * r.astype(g.dtype), grad_rows, rows)
    skip = non_finite_skip(loss, (grad_params, grad_rows), self.skip_non_finite)
    params, opt_state = self._dense_update(state, grad_params, skip)
    step = state.step + 1
    if self.engine:
      # A skipped step touches no table row: every id becomes padding (tables are never copied).
      routing = routing.dropped(skip) if self.skip_non_finite else routing
      embedding = self.engine.apply_gradients(embedding, routing, grad_rows, step)
    new_state = state.replace(step=step, params=params, opt_state=opt_state, embedding=embedding)
    fallback = self.engine.exchange_fallback(routing) if self.engine else None
    return new_state, {"loss": loss, "skipped": skip, **extra, **dynamic_stats,
                       **({"embedding_exchange_fallback": fallback} if fallback is not None else {})}

  # Inference in blocks (set by `set_inference_blocks`): each of `inference_shards` batch shards
  # scores its rows `inference_block` at a time; 0 = a shard's rows at once.
  inference_shards: int = 1
  inference_block: int = 0

  def set_inference_blocks(self, shards: int, device_batch: int, block_rows: int) -> int:
    """Scores an eval batch split over `shards` devices (`device_batch` rows each) in blocks of
    `block_rows` where they divide it, else whole; returns the block used (what an export of
    the model must score in to give the same results: XLA's results depend on the rows per call)."""
    block = block_rows if block_rows and device_batch % block_rows == 0 else device_batch
    self.inference_shards, self.inference_block = shards, block
    return block

  def forward(self, state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The model's named outputs for a batch (inference), block by block (see set_inference_blocks):
    the batch [shards x blocks x block] is regrouped (locally: each shard keeps its rows) into
    blocks of [shards x block] mapped over in turn, so every device computes `block` rows a call."""
    def whole(batch):
      routing, rows = self._route_and_lookup(state, batch)
      return self.apply_model(state.params, self.model_inputs(batch, rows, routing))

    rows = next(iter(batch.values())).shape[0]
    shards, block = self.inference_shards, self.inference_block
    if not block or (isinstance(rows, int) and rows == shards * block):
      return whole(batch)

    def to_blocks(x):  # [S*N*K, ...] -> [N, S*K, ...]
      x = x.reshape(shards, -1, block, *x.shape[1:]).swapaxes(0, 1)
      return x.reshape(x.shape[0], shards * block, *x.shape[3:])

    def from_blocks(y):  # [N, S*K, ...] -> [S*N*K, ...]
      y = y.reshape(y.shape[0], shards, block, *y.shape[2:]).swapaxes(0, 1)
      return y.reshape(-1, *y.shape[3:])

    return jax.tree.map(from_blocks, jax.lax.map(whole, jax.tree.map(to_blocks, batch)))

  # ---- Serving (rankjax export / predict, eval.write_scores).

  SERVING_FIELDS: ClassVar[tuple[str, ...]]  # The batch fields `forward` reads: a served request's inputs.

  def serving_scores(self, outputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Head name -> the score served for it (per example, or per document of a list)."""
    return outputs

  @abc.abstractmethod
  def eval_init(self) -> Any:
    """The eval totals before the first batch: a pytree of fixed-size arrays (zeros)."""

  def eval_prepare(self, state: TrainState, totals: Any) -> Any:
    """The totals before the first eval batch, given the state (retrieval: the corpus's item
    vectors, computed once per evaluation); by default `totals` as they are."""
    del state
    return totals

  @abc.abstractmethod
  def eval_step(self, state: TrainState, batch: dict[str, jax.Array], totals: Any) -> Any:
    """`totals` with an eval batch added (its `weight` is 0 on padding). Run on device with the
    totals replicated, so no per-example output leaves the devices."""

  # ---- Host side: metrics and summary.

  @abc.abstractmethod
  def eval_metrics(self, totals: Any) -> dict[str, Any]:
    """The eval event's fields (always `loss`) from the whole eval split's totals (NumPy arrays)."""

  @abc.abstractmethod
  def eval_metric_names(self) -> tuple[str, ...]:
    """The numeric fields of eval_metrics' result (what train.early_stopping.metric may name)."""

  @abc.abstractmethod
  def checkpoint_metrics(self, evaluation: dict[str, float]) -> dict[str, float]:
    """The eval metrics a checkpoint records (what checkpoint.keep_best_metric ranks by)."""

  @abc.abstractmethod
  def summary(self, evaluation: dict[str, float]) -> dict[str, Any]:
    """The final eval's fields of summary.json."""

  @abc.abstractmethod
  def final_line(self, summary: dict[str, Any]) -> str:
    """The last line a run prints."""
