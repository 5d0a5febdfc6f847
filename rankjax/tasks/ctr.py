"""Click models: one binary label (`ctr`) or several, one head each (`multitask`).

Batches hold `label` ([B], or [B, heads] for multitask), `dense` [B, num_dense] and `cat`
[B, slots] ids (-1 = padding). The model receives the dense features and the pooled embeddings
keyed by feature name and returns one logit per head; the loss is the per-head weighted sum of
binary cross-entropies. Eval (per head): AUC, log loss, NE, calibration and a reliability table,
and GAUC over eval.group_feature, accumulated on device (rankjax/streaming_metrics.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rankjax import streaming_metrics
from rankjax.config import ConfigError, model_module
from rankjax.data.batch import BatchSpec, Field
from rankjax.data.feature_stats import normalization
from rankjax.embedding.builder import build_engine
from rankjax.embedding.engine import Routing
from rankjax.embedding.tables import EmbeddingTableConfig, FeatureSlots, scale_rows
from rankjax.losses import BINARY_LOSSES
from rankjax.model_inputs import EmbeddedFeature, InputSpec, KeyedEmbeddings, ModelInputs
from rankjax.partitioner import Partitioner
from rankjax.tasks.base import Task, cast_floating
from rankjax.tasks.crossed_features import crossed_ids, plan_crosses


def _data_kind(manifest: dict) -> str | None:
  return manifest.get("source", {}).get("kind")


def _feature_names(manifest: dict) -> tuple[str, ...]:
  return tuple(f"cat_{i}" for i in range(len(manifest["vocab_sizes"])))


def column_aliases(manifest: dict) -> dict[str, str]:
  """The data's categorical column names (a table spec's, or Criteo's C1..C26) -> the feature
  (`cat_i`) holding them, so config may name a column where it names a feature's table."""
  spec = manifest.get("feature_spec") or {}
  entries = [*spec.get("categorical", []), *spec.get("sequence", [])]
  columns = [c["name"] if isinstance(c, dict) else c for c in entries]
  if not columns or len(columns) != len(manifest.get("vocab_sizes", ())):
    return {}  # Not a table or Criteo data (LETOR lists, synthetic features named cat_i).
  return {column: feature for column, feature in zip(columns, _feature_names(manifest)) if column != feature}


def id_bounds(manifest: dict, hotness: tuple[int, ...]) -> tuple[int, ...]:
  """Each `cat` slot's bound: its feature's vocabulary, or 0 (unchecked) where the feature keeps
  raw 64-bit ids (`cat` / `cat_hi` hold their low / high words: manifest `raw_ids`)."""
  raw = tuple(manifest.get("raw_ids") or (False,) * len(hotness))
  return tuple(0 if r else int(v) for v, h, r in zip(manifest["vocab_sizes"], hotness, raw) for _ in range(h))


class ClickTask(Task):
  """One binary label per example (`ctr`)."""

  LOSSES: ClassVar[dict] = BINARY_LOSSES
  EVAL_METRICS: ClassVar[tuple[str, ...]] = ("auc", "logloss")
  SERVING_FIELDS: ClassVar[tuple[str, ...]] = ("dense", "cat")

  def __init__(self, config: ml_collections.ConfigDict, manifest: dict, partitioner: Partitioner):
    super().__init__(config, manifest)
    self.check_manifest(config, manifest)
    self.heads = self.head_names(config)
    self.loss_fn = self.LOSSES[config.train.loss]  # (logits_b, labels_b) -> mean loss.
    self.loss_weights = np.asarray(config.task.loss_weights or (1.0,) * len(self.heads), np.float32)
    hotness = tuple(manifest.get("hotness", [1] * len(manifest["vocab_sizes"])))
    # Features with raw 64-bit ids: cat / cat_hi hold their low / high words (others: rows in cat,
    # checked against their vocabulary; a raw feature's words are not: bound 0).
    raw = tuple(manifest.get("raw_ids") or (False,) * len(manifest["vocab_sizes"]))
    self.raw_ids = any(raw)
    self.batch_spec = BatchSpec((
        self.label_field(config),
        Field("dense", "float32", (manifest["num_dense"],), values="finite"),
        Field("cat", "int32", (int(sum(hotness)),), id_bounds=id_bounds(manifest, hotness)),
        *((Field("cat_hi", "int32", (int(sum(hotness)),)),) if self.raw_ids else ()),
    ))
    if self.raw_ids:
      self.SERVING_FIELDS = (*self.SERVING_FIELDS, "cat_hi")
    # Synthetic data is generated at the scaled size; real data's ids fold into the scaled tables.
    fold_ids = config.data.row_scale != 1 and _data_kind(manifest) != "synthetic"
    model = model_module(config.model.name)
    self.crosses = plan_crosses(model.crossed_features(config) if hasattr(model, "crossed_features") else (),
                                config.model.get("cross_buckets", 0), _feature_names(manifest), hotness)
    self.raw_features = {n for n, r in zip(_feature_names(manifest), raw) if r}
    raw_slots = [r for r, h in zip(raw, hotness) for _ in range(h)]
    raw_crossed = [c.name for c in self.crosses if any(raw_slots[s] for s in c.slots)]
    if raw_crossed:
      raise ConfigError("model.crosses", f"crossed features hash row ids; {raw_crossed[0]} crosses one with raw "
                        "64-bit ids (--vocab raw, or \"raw\": true): convert it with rows (hash or frequency)")
    slots = FeatureSlots(_feature_names(manifest) + tuple(c.name for c in self.crosses),
                         hotness + (1,) * len(self.crosses))
    self.engine = build_engine(config, self.embedding_tables(config, manifest), slots, partitioner,
                               fold_ids=fold_ids, aliases=column_aliases(manifest))
    embedded = tuple(EmbeddedFeature(name, self.engine.feature_dim(name), length=h if c == "none" else 1,
                                     pooled=c != "none")
                     for name, h, c in zip(self.engine.slots.names, self.engine.slots.hotness, self.engine.combiners))
    self.inputs = InputSpec(heads=self.heads, num_dense=manifest["num_dense"], embedded=embedded)
    self.group_slot, self.num_groups = self._group_feature(config, manifest, hotness)
    self.normalization = normalization(manifest.get("dense_stats"), manifest["num_dense"], config.task.normalize)

  def _group_feature(self, config, manifest: dict, hotness: tuple[int, ...]) -> tuple[int | None, int]:
    """(the batch's `cat` column holding eval.group_feature's id, its vocabulary), or (None, 0) when off."""
    name = config.eval.group_feature
    if not name:
      return None, 0
    names, aliases = _feature_names(manifest), column_aliases(manifest)
    name = aliases.get(name, name)  # A data column's name (a table spec's `user`) names its feature.
    if name not in names:
      columns = f", or a column: {', '.join(aliases)}" if aliases else ""
      raise ConfigError("eval.group_feature", f"{config.eval.group_feature!r} is not a categorical feature of the "
                        f"data ({names[0]} .. {names[-1]}{columns})")
    index = names.index(name)
    if name in self.raw_features:
      raise ConfigError("eval.group_feature", f"GAUC groups by a feature's row ids; {name!r} keeps raw 64-bit ids "
                        "(--vocab raw, or \"raw\": true): convert it with rows (hash or frequency) for GAUC")
    groups = int(manifest["vocab_sizes"][index])
    size = len(self.heads) * groups * config.eval.group_bins * 8
    if size > 2**30:
      raise ConfigError("eval.group_feature", f"GAUC over {name!r} ({groups:,} groups x {config.eval.group_bins} "
                        f"eval.group_bins x {len(self.heads)} heads) needs {size / 2**30:.1f} GiB per device: lower "
                        "eval.group_bins")
    return int(sum(hotness[:index])), groups

  @staticmethod
  def check_manifest(config: ml_collections.ConfigDict, manifest: dict) -> None:
    """Raises ConfigError unless the data holds labelled examples with categorical features."""
    if _data_kind(manifest) == "letor":
      raise ConfigError("task.name", f"{config.task.name!r} learns from examples with labels, but the data "
                        "holds LETOR query lists: use task.name='ranking' with a ranking model (ltr_mlp)")
    for key in ("num_dense", "vocab_sizes"):
      if key not in manifest:
        raise ConfigError("data.path", f"the dataset's manifest has no {key!r}: not CTR data for task "
                          f"{config.task.name!r}")

  @classmethod
  def head_names(cls, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return ("click",)

  @classmethod
  def label_field(cls, config: ml_collections.ConfigDict) -> Field:
    return Field("label", "float32", (), column=config.data.label_index, values="binary")

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    if config.task.loss_weights and len(config.task.loss_weights) != len(cls.head_names(config)):
      raise ConfigError("task.loss_weights", f"needs one weight per head {cls.head_names(config)}, "
                        f"got {tuple(config.task.loss_weights)}")
    if any(not w >= 0 for w in config.task.loss_weights):
      raise ConfigError("task.loss_weights", f"weights must be >= 0, got {tuple(config.task.loss_weights)}")

  @classmethod
  def embedding_tables(cls, config: ml_collections.ConfigDict, manifest: dict) -> list:
    cls.check_manifest(config, manifest)
    vocab_sizes = manifest["vocab_sizes"]
    if config.data.row_scale != 1 and _data_kind(manifest) != "synthetic":
      vocab_sizes = scale_rows(vocab_sizes, config.data.row_scale)
    model = model_module(config.model.name)
    if hasattr(model, "embedding_tables"):
      tables = list(model.embedding_tables(config, vocab_sizes))
    else:  # Default: one table per feature, named after it, of model.embed_dim.
      tables = [EmbeddingTableConfig(name=n, vocab_size=int(v), dim=config.model.embed_dim, feature_names=(n,))
                for n, v in zip(_feature_names(manifest), vocab_sizes)]
    raw = {n for n, r in zip(_feature_names(manifest), manifest.get("raw_ids") or ()) if r}
    for i, t in enumerate(tables):  # Dynamic (or hashed) tables over the 64-bit ids: tables.raw_id_defaults.
      if raw & set(t.feature_names):
        if not set(t.feature_names) <= raw:
          raise ConfigError("model.name", f"table {t.name} serves features with raw 64-bit ids and with rows "
                            f"({sorted(t.feature_names)}): a table takes one kind")
        tables[i] = dataclasses.replace(t, id_bits=64)
    return tables

  # ---- Step functions.

  def sparse_ids_hi(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    return batch["cat_hi"] if self.raw_ids else None

  def sparse_ids(self, batch: dict[str, jax.Array]) -> jax.Array:
    if not self.crosses:
      return batch["cat"]
    return jnp.concatenate([batch["cat"], crossed_ids(batch["cat"], self.crosses)], axis=1)

  def model_inputs(self, batch: dict[str, jax.Array], rows: dict[str, jax.Array], routing: Routing) -> ModelInputs:
    cast = cast_floating(self.compute_dtype)
    values, masks = self.engine.pool_by_dim(jax.tree.map(cast, rows), routing)
    dense_bn = self.normalization(batch["dense"])
    return ModelInputs(dense=cast(dense_bn), embedded=KeyedEmbeddings(self.inputs.embedded, values, masks))

  def _labels(self, batch: dict[str, jax.Array]) -> jax.Array:
    """[B, heads] labels."""
    label = batch["label"]
    return label[:, None] if label.ndim == 1 else label

  def _logits(self, outputs: dict[str, jax.Array]) -> jax.Array:
    """[B, heads] logits."""
    return jnp.stack([outputs[h] for h in self.heads], axis=1)

  def serving_scores(self, outputs):
    """Each head's probability, sigmoid(logit), in float32."""
    return {h: jax.nn.sigmoid(outputs[h]) for h in self.heads}

  def loss(self, outputs, batch):
    if len(self.heads) == 1:
      return self.loss_fn(outputs[self.heads[0]], batch["label"]), {}
    labels_bh = self._labels(batch)
    per_head = {h: self.loss_fn(outputs[h], labels_bh[:, i]) for i, h in enumerate(self.heads)}
    total = sum(w * per_head[h] for h, w in zip(self.heads, self.loss_weights.tolist()))
    return total, {f"loss/{h}": v for h, v in per_head.items()}

  def eval_init(self):
    totals = {"binary": streaming_metrics.binary_init(len(self.heads), self.config.eval.auc_bins)}
    if self.group_slot is not None:
      totals["grouped"] = streaming_metrics.grouped_init(len(self.heads), self.num_groups,
                                                         self.config.eval.group_bins)
    return totals

  def eval_step(self, state, batch, totals):
    logits_bh, labels_bh, real_b = self._logits(self.forward(state, batch)), self._labels(batch), batch["weight"] > 0
    new = {"binary": streaming_metrics.binary_update(totals["binary"], logits_bh, labels_bh, real_b)}
    if self.group_slot is not None:
      new["grouped"] = streaming_metrics.grouped_update(totals["grouped"], logits_bh, labels_bh,
                                                        batch["cat"][:, self.group_slot], real_b)
    return new

  # ---- Host side.

  def eval_metrics(self, totals) -> dict[str, Any]:
    per_head = streaming_metrics.binary_metrics(totals["binary"])
    if "grouped" in totals:
      for head, grouped in zip(per_head, streaming_metrics.grouped_metrics(totals["grouped"])):
        head.update(grouped)
    if any(np.isnan(head["auc"]) for head in per_head):
      missing = [h for h, m in zip(self.heads, per_head) if np.isnan(m["auc"])]
      raise ValueError(f"eval AUC is undefined: the eval split has one class only for head(s) {missing}")
    examples = per_head[0]["examples"]  # The same for every head.
    per_head = [{k: v for k, v in m.items() if k != "examples"} for m in per_head]
    if len(self.heads) == 1:
      return {"loss": per_head[0]["logloss"], **per_head[0], "examples": examples}
    named = {f"{h}/{k}": v for h, m in zip(self.heads, per_head) for k, v in m.items()}
    loglosses = np.array([m["logloss"] for m in per_head])
    return {"loss": float(np.sum(loglosses * self.loss_weights)), "auc": float(np.mean([m["auc"] for m in per_head])),
            "logloss": float(loglosses.mean()), **named, "examples": examples}

  def eval_metric_names(self) -> tuple[str, ...]:
    per_head = ("auc", "auc_error_bound", "logloss", "ne", "calibration") \
        + (("gauc", "gauc_error_bound", "gauc_groups") if self.group_slot is not None else ())
    if len(self.heads) == 1:
      return ("loss", *per_head, "examples")
    return ("loss", "auc", "logloss", *(f"{h}/{k}" for h in self.heads for k in per_head), "examples")

  def checkpoint_metrics(self, evaluation: dict[str, float]) -> dict[str, float]:
    return {k: evaluation[k] for k in ("auc", "logloss")}

  def bayes_optimal_auc(self) -> dict[str, float]:
    """The data's Bayes-optimal eval AUC per head, where the manifest records it."""
    by_label = self.manifest.get("bayes_optimal_eval_auc_by_label")
    if len(self.heads) == 1 or not by_label:
      return {}
    names = self.manifest.get("labels", [])
    columns = self.batch_spec.fields[0].columns or range(len(self.heads))
    return {h: by_label[names[c]] for h, c in zip(self.heads, columns) if c < len(names) and names[c] in by_label}

  def summary(self, evaluation: dict[str, float]) -> dict[str, Any]:
    heads = {f"eval_{k}": v for k, v in evaluation.items() if "/" in k}
    single = {f"eval_{k}": evaluation[k] for k in _HEAD_FIELDS if k in evaluation}
    bayes = {f"bayes_optimal_eval_{h}/auc": v for h, v in self.bayes_optimal_auc().items()}
    return {"eval_auc": evaluation["auc"], "eval_logloss": evaluation["logloss"], **single, **heads,
            "bayes_optimal_eval_auc": self.manifest.get("bayes_optimal_eval_auc"), **bayes}

  def final_line(self, summary: dict[str, Any]) -> str:
    rate = f"{summary['examples_per_sec']:,.0f}" if summary["examples_per_sec"] else "n/a"

    def head_part(prefix: str) -> str:
      auc = summary.get(f"eval_{prefix}auc")
      if auc is None:
        return ""
      bayes = summary.get(f"bayes_optimal_eval_{prefix}auc") if prefix else None
      ratio = f" (Bayes ratio {auc / bayes:.4f})" if bayes else ""
      gauc = summary.get(f"eval_{prefix}gauc")
      return (f"auc={auc:.6f} logloss={summary[f'eval_{prefix}logloss']:.6f} ne={summary[f'eval_{prefix}ne']:.4f} "
              f"calibration={summary[f'eval_{prefix}calibration']:.4f}" + (f" gauc={gauc:.6f}" if gauc else "") + ratio)

    if len(self.heads) == 1:
      body = head_part("")
    else:
      body = (f"auc={summary['eval_auc']:.6f} logloss={summary['eval_logloss']:.6f}"
              + "".join(f" {h}: {head_part(h + '/')}" for h in self.heads))
    bayes = summary["bayes_optimal_eval_auc"]
    return (f"rankjax: final eval {body} steps={summary['steps']} examples/s={rate}"
            + (f" (Bayes-optimal auc {bayes:.6f}, ratio {summary['eval_auc'] / bayes:.4f})"
               if bayes and len(self.heads) == 1 else ""))


# Per-head eval fields beyond auc and logloss that summary.json carries.
_HEAD_FIELDS = ("ne", "calibration", "auc_error_bound", "gauc", "gauc_error_bound", "gauc_groups", "reliability")


class MultiTask(ClickTask):
  """Several binary labels, one head each (`multitask`: click + conversion, ...)."""

  @classmethod
  def head_names(cls, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return tuple(config.task.heads)

  @classmethod
  def label_field(cls, config: ml_collections.ConfigDict) -> Field:
    columns = tuple(config.task.label_columns) or tuple(range(len(config.task.heads)))
    return Field("label", "float32", (len(columns),), columns=columns, values="binary")

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    heads = tuple(config.task.heads)
    if len(heads) < 2 or len(set(heads)) != len(heads) or any(not h or "/" in h for h in heads):
      raise ConfigError("task.heads", f"multitask needs two or more distinct head names without '/', got {heads}")
    if config.task.label_columns and len(config.task.label_columns) != len(heads):
      raise ConfigError("task.label_columns", f"needs one label column per head {heads}, "
                        f"got {tuple(config.task.label_columns)}")
    super().validate_config(config)
