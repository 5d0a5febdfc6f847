"""Learning to rank on query lists (`ranking`): a scorer of each list's documents trained with a
listwise or pairwise loss (rankjax.losses), evaluated on device by NDCG@k, DCG@k, precision@k,
recall@k, MRR and MAP (eval.ranking_cutoffs, eval.no_relevant); dense parameters only.

Batches hold `relevance` [B, L], `features` [B, L, N] and `mask` [B, L] (0 = padding document),
and, for lists with categorical columns (`rankjax data table --lists`), `cat` [B, L, S]: each
document's ids, looked up in the embedding engine's sharded tables (trained by the sparse
optimizers like the click models'), pooled per feature and appended to its dense features.
Dense features are normalised with the train split's statistics from the manifest
(task.normalize), constants applied in float32 before the model, never trained.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from rankjax import streaming_metrics
from rankjax.config import ConfigError
from rankjax.data.batch import BatchSpec, Field
from rankjax.data.feature_stats import normalization
from rankjax.embedding.builder import build_engine
from rankjax.embedding.engine import Routing
from rankjax.embedding.tables import EmbeddingTableConfig, FeatureSlots, scale_rows
from rankjax.losses import RANKING_LOSSES, mean_of
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.partitioner import Partitioner
from rankjax.tasks.base import Task, cast_floating
from rankjax.tasks.ctr import column_aliases, id_bounds

NO_RELEVANT = ("skip", "zero", "one")  # eval.no_relevant: a query without a relevant document.


class RankingTask(Task):
  """Query lists scored document by document (or list-wise) by a model with a `score` head."""

  LOSSES: ClassVar[dict] = RANKING_LOSSES
  EVAL_METRICS: ClassVar[tuple[str, ...]] = ("ndcg",)
  SERVING_FIELDS: ClassVar[tuple[str, ...]] = ("features", "mask")
  RATE_KEY: ClassVar[str] = "lists_per_sec"  # A batch holds query lists.
  HEAD = "score"

  @classmethod
  def selection_metric(cls, config: ml_collections.ConfigDict) -> str:
    return f"ndcg@{config.train.ndcg_k}"

  def __init__(self, config: ml_collections.ConfigDict, manifest: dict, partitioner: Partitioner):
    super().__init__(config, manifest)
    if "num_features" not in manifest or "max_list_size" not in manifest:
      raise ConfigError("task.name", f"'ranking' learns from query lists, but the data holds "
                        f"{manifest.get('source', {}).get('kind')} examples: give data.path a dataset from "
                        "`rankjax data letor` or `rankjax data table --lists`, or use task.name='ctr'")
    self.loss_fn = RANKING_LOSSES[config.train.loss]
    if "topn" in inspect.signature(self.loss_fn).parameters:  # lambda_ndcg: NDCG@train.ndcg_k weights ...
      # ... scaled by the stored list width, whatever width a length-bucketed batch is cut to.
      self.loss_fn = functools.partial(self.loss_fn, topn=config.train.ndcg_k, list_size=manifest["max_list_size"])
    self.heads = (self.HEAD,)
    self.ndcg_key = f"ndcg@{config.train.ndcg_k}"
    self.cutoffs = tuple(sorted({*config.eval.ranking_cutoffs, config.train.ndcg_k}))
    list_size, num_features = manifest["max_list_size"], manifest["num_features"]
    fields = [Field("relevance", "float32", (list_size,), values="nonnegative", list_axis=True),
              Field("features", "float32", (list_size, num_features), values="finite", list_axis=True),
              Field("mask", "float32", (list_size,), values="binary", list_axis=True)]
    embedded_width = 0
    self.raw_ids = any(manifest.get("raw_ids") or ())
    if manifest.get("vocab_sizes"):
      hotness = tuple(manifest["hotness"])
      fields.append(Field("cat", "int32", (list_size, sum(hotness)), id_bounds=id_bounds(manifest, hotness) * list_size,
                          list_axis=True))
      if self.raw_ids:
        fields.append(Field("cat_hi", "int32", (list_size, sum(hotness)), list_axis=True))
      slots = FeatureSlots(tuple(f"cat_{i}" for i in range(len(hotness))), hotness)
      self.engine = build_engine(config, self.embedding_tables(config, manifest), slots, partitioner,
                                 fold_ids=config.data.row_scale != 1, aliases=column_aliases(manifest))
      if "none" in self.engine.combiners:
        raise ConfigError("embedding.overrides", "a ranking task pools each document's ids per feature: combiner "
                          "'none' (an unpooled sequence) is not supported")
      embedded_width = sum(self.engine.feature_dim(n) for n in self.engine.slots.names)
      self.SERVING_FIELDS = (*self.SERVING_FIELDS, "cat", *(("cat_hi",) if self.raw_ids else ()))
    self.batch_spec = BatchSpec(tuple(fields))
    self.inputs = InputSpec(heads=(self.HEAD,), num_document_features=num_features + embedded_width,
                            list_size=list_size)
    self.normalization = normalization(manifest["feature_stats"], num_features, config.task.normalize)

  @classmethod
  def embedding_tables(cls, config: ml_collections.ConfigDict, manifest: dict) -> list:
    """One table per categorical feature of the lists (none for LETOR lists), of model.embed_dim;
    a feature with raw 64-bit ids gets a table over them (a dynamic map by default:
    tables.raw_id_defaults)."""
    vocab_sizes = manifest.get("vocab_sizes") or []
    if config.data.row_scale != 1:
      vocab_sizes = scale_rows(vocab_sizes, config.data.row_scale)
    dim = config.model.get("embed_dim", 16)
    raw = manifest.get("raw_ids") or (False,) * len(vocab_sizes)
    return [EmbeddingTableConfig(name=f"cat_{i}", vocab_size=int(v), dim=dim, feature_names=(f"cat_{i}",),
                                 id_bits=64 if r else 31)
            for i, (v, r) in enumerate(zip(vocab_sizes, raw))]

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    if not config.data.path:
      raise ConfigError("data.path", "task 'ranking' ranks query lists, but data.path is empty (synthetic CTR "
                        "data): give it a dataset from `rankjax data letor`")
    if config.train.ndcg_k < 1:
      raise ConfigError("train.ndcg_k", "must be >= 1")
    cutoffs = tuple(config.eval.ranking_cutoffs)
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in cutoffs):
      raise ConfigError("eval.ranking_cutoffs", f"must be positive ints, got {cutoffs}")
    if config.eval.no_relevant not in NO_RELEVANT:
      raise ConfigError("eval.no_relevant", f"must be one of {NO_RELEVANT}, got {config.eval.no_relevant!r}")

  def train_batch(self, state, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Lists of at most train.list_size documents: where a list has more, a uniform sample of them
    without replacement, drawn from (the run's key, the step); shorter lists are kept whole."""
    keep = self.config.train.list_size
    if not keep or keep >= batch["mask"].shape[1]:
      return batch
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    noise_bl = jax.random.uniform(key, batch["mask"].shape)
    # Real documents rank above padding (noise - 2 < -1 <= noise), each in random order.
    _, chosen_bk = jax.lax.top_k(jnp.where(batch["mask"] > 0, noise_bl, noise_bl - 2.0), keep)
    take = lambda x: jnp.take_along_axis(x, chosen_bk.reshape(chosen_bk.shape + (1,) * (x.ndim - 2)), axis=1)
    return {**batch, **{k: take(batch[k]) for k in ("relevance", "features", "mask", "cat", "cat_hi") if k in batch}}

  def sparse_ids(self, batch: dict[str, jax.Array]) -> jax.Array:
    """Every document's ids, documents as rows: [B * L, S]."""
    return batch["cat"].reshape(-1, batch["cat"].shape[-1])

  def sparse_ids_hi(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    """The high words of raw 64-bit ids, laid out as `sparse_ids`; None for row ids."""
    return batch["cat_hi"].reshape(-1, batch["cat_hi"].shape[-1]) if self.raw_ids else None

  def model_inputs(self, batch: dict[str, jax.Array], rows: dict[str, jax.Array] | None,
                   routing: Routing | None) -> ModelInputs:
    cast = cast_floating(self.compute_dtype)
    documents_bln = cast(self.normalization(batch["features"]))
    if self.engine:  # Each document's pooled embeddings after its dense features.
      pooled, _ = self.engine.pool_by_dim(jax.tree.map(cast, rows), routing)
      lists, size = batch["mask"].shape
      documents_bln = jnp.concatenate([documents_bln, *(pooled[d].reshape(lists, size, -1) for d in sorted(pooled))],
                                      axis=-1)
    return ModelInputs(documents=documents_bln, document_mask=batch["mask"] > 0)

  def loss(self, outputs, batch):
    return mean_of(self.loss_fn(outputs[self.HEAD], batch["relevance"], batch["mask"])), {}

  def eval_init(self):
    names = self._metric_names()
    return {"sums": {n: streaming_metrics.sum_init() for n in names}, "lists": jnp.zeros((), jnp.int32),
            "skipped": jnp.zeros((), jnp.int32), "loss": streaming_metrics.sum_init(),
            "loss_count": streaming_metrics.sum_init()}

  def _metric_names(self) -> tuple[str, ...]:
    return tuple(f"{m}@{k}" for k in self.cutoffs for m in ("ndcg", "dcg", "precision", "recall")) + ("mrr", "map")

  def eval_step(self, state, batch, totals):
    """Adds the batch's lists (padding lists carry weight 0 and count nowhere; a list without a
    relevant document follows eval.no_relevant)."""
    mask_bl = batch["mask"] * (batch["weight"] > 0)[:, None]
    scores_bl = self.forward(state, batch)[self.HEAD]
    per_list, relevant_b, has_doc_b = streaming_metrics.ranking_per_list(batch["relevance"], scores_bl, mask_bl,
                                                                         self.cutoffs)
    policy = self.config.eval.no_relevant
    counted_b = has_doc_b & (relevant_b | (policy != "skip"))
    fill = 1.0 if policy == "one" else 0.0
    sums = {n: streaming_metrics.sum_add(totals["sums"][n],
                                         jnp.sum(jnp.where(counted_b, jnp.where(relevant_b, v, fill), 0.0)))
            for n, v in per_list.items()}
    loss, count = self.loss_fn(scores_bl, batch["relevance"], mask_bl)
    return {"sums": sums, "lists": totals["lists"] + jnp.sum(counted_b).astype(jnp.int32),
            "skipped": totals["skipped"] + jnp.sum(has_doc_b & ~counted_b).astype(jnp.int32),
            "loss": streaming_metrics.sum_add(totals["loss"], loss),
            "loss_count": streaming_metrics.sum_add(totals["loss_count"], count)}

  def eval_metrics(self, totals) -> dict[str, float]:
    """Each metric's mean over the counted queries, the train.loss function over the eval lists,
    and the queries counted and skipped (eval.no_relevant=skip)."""
    lists = int(totals["lists"])
    if not lists:
      raise ValueError(f"no eval query to score: {int(totals['skipped'])} had no relevant document "
                       "(eval.no_relevant=skip) and the rest no document")
    loss = streaming_metrics.sum_value(totals["loss"]) / max(streaming_metrics.sum_value(totals["loss_count"]), 1.0)
    means = {n: float(streaming_metrics.sum_value(v) / lists) for n, v in totals["sums"].items()}
    return {**means, "loss": float(loss), "queries": lists, "queries_skipped": int(totals["skipped"])}

  def eval_metric_names(self) -> tuple[str, ...]:
    return (*self._metric_names(), "loss", "queries", "queries_skipped")

  def checkpoint_metrics(self, evaluation: dict[str, float]) -> dict[str, float]:
    return {"ndcg": evaluation[self.ndcg_key], "loss": evaluation["loss"]}

  def summary(self, evaluation: dict[str, float]) -> dict[str, Any]:
    return {f"eval_{k}": v for k, v in evaluation.items()}

  def final_line(self, summary: dict[str, Any]) -> str:
    rate = f"{summary['lists_per_sec']:,.0f}" if summary["lists_per_sec"] else "n/a"
    shown = dict.fromkeys([self.ndcg_key, "ndcg@1", "ndcg@5", "ndcg@10", "mrr", "map"])
    metrics = " ".join(f"{k}={summary[f'eval_{k}']:.6f}" for k in shown if f"eval_{k}" in summary)
    return (f"rankjax: final eval {metrics} loss={summary['eval_loss']:.6f} queries={summary['eval_queries']} "
            f"(skipped {summary['eval_queries_skipped']} without a relevant document) steps={summary['steps']} "
            f"lists/s={rate}")
