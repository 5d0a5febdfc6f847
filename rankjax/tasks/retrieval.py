"""Two-tower retrieval (`retrieval`): a query tower and an item tower over their own categorical
features (through the embedding engine: the same sharded tables and sparse optimizers as the
click models), trained on (query, item picked) pairs with in-batch negatives.

Batches hold `query` [B, Q] and `item` [B, I] ids; the first item feature is the item's id. The
loss is the softmax over the batch's items of similarity / temperature, with the log-Q correction
(Yi et al. 2019): an item's logit is lowered by log of its probability of being in a batch (its
share of the train split), so popular items, which are in-batch negatives more often, are not
pushed down for it; copies of a row's positive item elsewhere in the batch are not negatives.

Eval scores the whole corpus: the item tower over every corpus item once per evaluation, then
for each eval query the exact top-K on device; recall@K (the picked item is in the top K) and
NDCG@K (one relevant item: 1 / log2(rank + 2)), beside the same recall of the popularity
baseline (the K items most picked in the train split) and the full-corpus softmax loss.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rankjax.config import ConfigError
from rankjax.data.batch import BatchSpec, Field
from rankjax.embedding.builder import build_engine
from rankjax.embedding.tables import EmbeddingTableConfig, FeatureSlots
from rankjax.model_inputs import EmbeddedFeature, InputSpec, KeyedEmbeddings, ModelInputs
from rankjax.partitioner import Partitioner
from rankjax.tasks.base import Task, cast_floating

CUTOFFS = (10, 50, 100)
_MASKED = -1e9  # A logit no softmax term survives (finite: no NaN in its gradient).


def in_batch_softmax_loss(query_bd: jax.Array, item_bd: jax.Array, temperature: jax.Array, item_ids_b: jax.Array,
                          log_q_b: jax.Array | None, extra_md: jax.Array | None = None,
                          extra_ids_m: jax.Array | None = None, log_q_m: jax.Array | None = None) -> jax.Array:
  """Per-row loss [B]: -log softmax over the batch's items (and `extra` sampled items) of row b's
  own item, with logits <q_b, i_j> / temperature - log_q_j; a copy of item b anywhere else in the
  batch or among the extra items is not a negative and is masked out."""
  items_nd, ids_n = item_bd, item_ids_b
  if extra_md is not None:
    items_nd, ids_n = jnp.concatenate([item_bd, extra_md]), jnp.concatenate([item_ids_b, extra_ids_m])
  logits_bn = (query_bd @ items_nd.T) / temperature
  if log_q_b is not None:
    logits_bn = logits_bn - (log_q_b if extra_md is None else jnp.concatenate([log_q_b, log_q_m]))[None, :]
  rows, columns = jnp.arange(len(item_ids_b)), jnp.arange(len(ids_n))
  duplicate_bn = (item_ids_b[:, None] == ids_n[None, :]) & (rows[:, None] != columns[None, :])
  logits_bn = jnp.where(duplicate_bn, _MASKED, logits_bn)
  return jax.nn.logsumexp(logits_bn, axis=1) - jnp.diagonal(logits_bn[:, :len(item_ids_b)])


class RetrievalTask(Task):
  """Query and item towers matched by similarity; the whole corpus ranked at eval."""

  LOSSES: ClassVar[dict] = {"in_batch_softmax": in_batch_softmax_loss}
  EVAL_METRICS: ClassVar[tuple[str, ...]] = tuple(f"recall@{k}" for k in CUTOFFS)
  SERVING_FIELDS: ClassVar[tuple[str, ...]] = ()  # Export serves scorers, not towers (yet).

  @classmethod
  def selection_metric(cls, config: ml_collections.ConfigDict) -> str:
    return f"recall@{CUTOFFS[-1]}"

  def __init__(self, config: ml_collections.ConfigDict, manifest: dict, partitioner: Partitioner):
    super().__init__(config, manifest)
    spec = manifest.get("retrieval")
    if not spec:
      raise ConfigError("task.name", "'retrieval' learns from (query, item) pairs with a corpus, but the data has no "
                        "`retrieval` entry in its manifest: use data.synthetic.kind='retrieval' (configs/two_tower.py)")
    self.query_features, self.item_features = tuple(spec["query_features"]), tuple(spec["item_features"])
    names = self.query_features + self.item_features
    vocab = {n: int(spec["vocab_sizes"][n]) for n in names}
    self.batch_spec = BatchSpec((
        Field("query", "int32", (len(self.query_features),), id_bounds=tuple(vocab[n] for n in self.query_features)),
        Field("item", "int32", (len(self.item_features),), id_bounds=tuple(vocab[n] for n in self.item_features)),
    ))
    self.engine = build_engine(config, self.embedding_tables(config, manifest), FeatureSlots(names, (1,) * len(names)),
                               partitioner)
    embedded = tuple(EmbeddedFeature(n, self.engine.feature_dim(n)) for n in names)
    self.inputs = InputSpec(heads=("query", "item"), embedded=embedded,
                            towers=(self.query_features, self.item_features))
    # The item's share of the train split: its probability of being any one in-batch negative.
    counts = np.asarray(spec["item_train_counts"], np.float64)
    self.num_items = len(counts)
    self.log_q = np.log(np.maximum(counts, 1.0) / max(counts.sum(), 1.0)).astype(np.float32)
    self.popularity_rank = np.empty(self.num_items, np.int32)  # 0 = the most picked item.
    self.popularity_rank[np.argsort(-counts, kind="stable")] = np.arange(self.num_items, dtype=np.int32)
    # The corpus (every item's features), padded to a multiple of the batch shards.
    corpus = np.asarray(spec["corpus"], np.int32).reshape(-1, len(self.item_features))
    if len(corpus) and (len(corpus) != self.num_items or (corpus[:, 0] != np.arange(self.num_items)).any()):
      raise ConfigError("data.path", f"the manifest's corpus must list items 0..{self.num_items - 1} in order")
    shards = partitioner.axis_size("batch")
    self.corpus = np.zeros((-(-max(len(corpus), 1) // shards) * shards, len(self.item_features)), np.int32)
    self.corpus[:len(corpus)] = corpus
    self.max_cutoff = min(max(CUTOFFS), self.num_items)
    self.uniform_negatives = config.task.uniform_negatives
    if self.uniform_negatives % shards:
      raise ConfigError("task.uniform_negatives", f"must be a multiple of the batch shards ({shards}), "
                        f"got {self.uniform_negatives}")
    if self.uniform_negatives and not len(corpus):
      raise ConfigError("task.uniform_negatives", "needs the corpus (the item features of every item) in the data")

  @classmethod
  def embedding_tables(cls, config: ml_collections.ConfigDict, manifest: dict) -> list:
    """One table per query and item feature, of model.embed_dim."""
    spec = manifest["retrieval"]
    return [EmbeddingTableConfig(name=n, vocab_size=int(spec["vocab_sizes"][n]), dim=config.model.embed_dim,
                                 feature_names=(n,)) for n in (*spec["query_features"], *spec["item_features"])]

  @classmethod
  def with_vocab_sizes(cls, manifest: dict, resize) -> dict:
    spec = manifest["retrieval"]
    vocab = {n: resize(v) for n, v in spec["vocab_sizes"].items()}
    items = vocab[spec["item_features"][0]]
    return dict(manifest, retrieval=dict(spec, vocab_sizes=vocab, corpus=[], item_train_counts=[1] * items))

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    if not config.data.path and config.data.synthetic.kind != "retrieval":
      raise ConfigError("data.synthetic.kind", "task 'retrieval' needs (query, item) data: set it to 'retrieval' "
                        "(configs/two_tower.py) or give data.path")

  # ---- Steps.

  def train_batch(self, state, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """With task.uniform_negatives = M: the batch plus M corpus items drawn uniformly (with
    replacement, from the run's key and the step) as extra rows, their query ids padding."""
    if not self.uniform_negatives:
      return batch
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    drawn = jax.random.randint(key, (self.uniform_negatives,), 0, self.num_items)
    pad_query = jnp.full((self.uniform_negatives, batch["query"].shape[1]), -1, batch["query"].dtype)
    return {"query": jnp.concatenate([batch["query"], pad_query]),
            "item": jnp.concatenate([batch["item"], jnp.asarray(self.corpus)[drawn]])}

  def sparse_ids(self, batch: dict[str, jax.Array]) -> jax.Array:
    return jnp.concatenate([batch["query"], batch["item"]], axis=1)

  def model_inputs(self, batch, rows, routing) -> ModelInputs:
    cast = cast_floating(self.compute_dtype)
    values, masks = self.engine.pool_by_dim(jax.tree.map(cast, rows), routing)
    return ModelInputs(embedded=KeyedEmbeddings(self.inputs.embedded, values, masks))

  def _log_q(self, item_ids_n: jax.Array, batch_rows: int) -> jax.Array | None:
    """log of each negative's expected count among a step's negatives: batch_rows x its share of
    the train split (in-batch) + M / items (uniform); a constant shift without uniform negatives."""
    if not self.config.task.log_q_correction:
      return None
    share = jnp.exp(jnp.asarray(self.log_q)[item_ids_n])
    return jnp.log(batch_rows * share + self.uniform_negatives / self.num_items)

  def loss(self, outputs, batch):
    item_ids = batch["item"][:, 0]
    rows = len(item_ids) - self.uniform_negatives  # The batch's own rows; the rest are uniform negatives.
    log_q = self._log_q(item_ids, rows)
    extra = {}
    if self.uniform_negatives:
      extra = {"extra_md": outputs["item"][rows:], "extra_ids_m": item_ids[rows:],
               "log_q_m": None if log_q is None else log_q[rows:]}
    per_row = in_batch_softmax_loss(outputs["query"][:rows], outputs["item"][:rows], outputs["temperature"],
                                    item_ids[:rows], None if log_q is None else log_q[:rows], **extra)
    return jnp.mean(per_row), {"temperature": outputs["temperature"]}

  def _outputs(self, state, batch):
    routing, rows = self._route_and_lookup(state, batch)
    return self.apply_model(state.params, self.model_inputs(batch, rows, routing))

  def eval_init(self):
    zeros = jnp.zeros((len(CUTOFFS),), jnp.float32)
    dim = self.config.model.tower[-1]
    return {"hits": zeros, "ndcg": zeros, "popular_hits": zeros, "loss": jnp.zeros((), jnp.float32),
            "examples": jnp.zeros((), jnp.float32), "corpus": jnp.zeros((len(self.corpus), dim), jnp.float32)}

  def eval_prepare(self, state, totals):
    """The item tower over the whole corpus, once per evaluation (the query features are unused)."""
    corpus = jnp.asarray(self.corpus)
    batch = {"query": jnp.zeros((len(corpus), len(self.query_features)), jnp.int32), "item": corpus}
    return {**totals, "corpus": self._outputs(state, batch)["item"]}

  def eval_step(self, state, batch, totals):
    outputs = self._outputs(state, batch)
    weight_b = batch["weight"]
    scores_bv = (outputs["query"] @ totals["corpus"].T)[:, :self.num_items] / outputs["temperature"]
    positive_b = batch["item"][:, 0]
    positive_score_b = jnp.take_along_axis(scores_bv, positive_b[:, None], axis=1)[:, 0]
    # Exact top-K: the positive's rank is the number of items scored above it (ties in its favour).
    top_bk = jax.lax.top_k(scores_bv, self.max_cutoff)[0]
    rank_b = jnp.sum(top_bk > positive_score_b[:, None], axis=1)
    cutoffs = jnp.asarray(CUTOFFS)
    hit_bc = rank_b[:, None] < cutoffs[None, :]
    ndcg_bc = jnp.where(hit_bc, 1.0 / jnp.log2(rank_b[:, None] + 2.0), 0.0)
    popular_bc = jnp.asarray(self.popularity_rank)[positive_b][:, None] < cutoffs[None, :]
    loss_b = jax.nn.logsumexp(scores_bv, axis=1) - positive_score_b
    w = weight_b[:, None]
    return {"hits": totals["hits"] + jnp.sum(w * hit_bc, axis=0), "ndcg": totals["ndcg"] + jnp.sum(w * ndcg_bc, axis=0),
            "popular_hits": totals["popular_hits"] + jnp.sum(w * popular_bc, axis=0),
            "loss": totals["loss"] + jnp.sum(weight_b * loss_b), "examples": totals["examples"] + jnp.sum(weight_b),
            "corpus": totals["corpus"]}

  # ---- Host side.

  def eval_metrics(self, totals) -> dict[str, Any]:
    n = float(totals["examples"])
    if not n:
      raise ValueError("no eval example to score")
    out = {"loss": float(totals["loss"]) / n}
    for c, k in enumerate(CUTOFFS):
      out[f"recall@{k}"] = float(totals["hits"][c]) / n
      out[f"ndcg@{k}"] = float(totals["ndcg"][c]) / n
      out[f"popularity_recall@{k}"] = float(totals["popular_hits"][c]) / n
    return {**out, "examples": int(n), "corpus_items": self.num_items}

  def eval_metric_names(self) -> tuple[str, ...]:
    return ("loss", *(f"{m}@{k}" for k in CUTOFFS for m in ("recall", "ndcg", "popularity_recall")), "examples",
            "corpus_items")

  def checkpoint_metrics(self, evaluation: dict[str, float]) -> dict[str, float]:
    return {k: evaluation[k] for k in self.EVAL_METRICS}

  def summary(self, evaluation: dict[str, float]) -> dict[str, Any]:
    oracle = self.manifest["retrieval"].get("oracle_eval_recall", {})
    return {**{f"eval_{k}": v for k, v in evaluation.items()}, **{f"oracle_eval_{k}": v for k, v in oracle.items()}}

  def final_line(self, summary: dict[str, Any]) -> str:
    rate = f"{summary['examples_per_sec']:,.0f}" if summary["examples_per_sec"] else "n/a"
    recall = " ".join(f"recall@{k}={summary[f'eval_recall@{k}']:.4f}" for k in CUTOFFS)
    popular = " ".join(f"{summary[f'eval_popularity_recall@{k}']:.4f}" for k in CUTOFFS)
    oracle = " ".join(f"{summary[f'oracle_eval_recall@{k}']:.4f}" for k in CUTOFFS if f"oracle_eval_recall@{k}" in summary)
    return (f"rankjax: final eval {recall} ndcg@10={summary['eval_ndcg@10']:.4f} over {summary['eval_corpus_items']:,} "
            f"items (popularity baseline {popular}" + (f"; planted model {oracle}" if oracle else "") +
            f") steps={summary['steps']} examples/s={rate}")
