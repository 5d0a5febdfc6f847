"""Learning to rank on query lists (`ranking`): a scorer of each list's documents trained with a
listwise or pairwise loss (rankjax.losses), evaluated by NDCG@k; dense parameters only.

Batches hold `relevance` [B, L], `features` [B, L, N] and `mask` [B, L] (0 = padding document).
Features are standardised with the train split's statistics from the manifest (task.normalize),
constants applied in float32 before the model, never trained.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rankjax.config import ConfigError
from rankjax.data.batch import BatchSpec, Field
from rankjax.losses import RANKING_LOSSES
from rankjax.metrics import ndcg_at_k
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.partitioner import Partitioner
from rankjax.tasks.base import Task, cast_floating

STD_FLOOR = 1e-6  # A feature whose train std is below this is only centred, not scaled.


def feature_normalization(manifest: dict, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
  """(mean_n, std_n) float32 constants for (x - mean) / std; (0, 1) with normalisation off."""
  num_features = manifest["num_features"]
  if not normalize:
    return np.zeros(num_features, np.float32), np.ones(num_features, np.float32)
  stats = manifest["feature_stats"]
  std = np.asarray(stats["std"], np.float64)
  return np.asarray(stats["mean"], np.float32), np.where(std > STD_FLOOR, std, 1.0).astype(np.float32)


class RankingTask(Task):
  """Query lists scored document by document (or list-wise) by a model with a `score` head."""

  LOSSES: ClassVar[dict] = RANKING_LOSSES
  EVAL_METRICS: ClassVar[tuple[str, ...]] = ("ndcg",)
  HEAD = "score"

  def __init__(self, config: ml_collections.ConfigDict, manifest: dict, partitioner: Partitioner):
    super().__init__(config, manifest)
    if manifest.get("source", {}).get("kind") != "letor" or "num_features" not in manifest:
      raise ConfigError("task.name", f"'ranking' learns from query lists, but the data holds "
                        f"{manifest.get('source', {}).get('kind')} examples: give data.path a dataset from "
                        "`rankjax data letor`, or use task.name='ctr'")
    self.loss_fn = RANKING_LOSSES[config.train.loss]
    self.ndcg_key = f"ndcg@{config.train.ndcg_k}"
    list_size, num_features = manifest["max_list_size"], manifest["num_features"]
    self.batch_spec = BatchSpec((
        Field("relevance", "float32", (list_size,), values="nonnegative"),
        Field("features", "float32", (list_size, num_features), values="finite"),
        Field("mask", "float32", (list_size,), values="binary"),
    ))
    self.inputs = InputSpec(heads=(self.HEAD,), num_document_features=num_features, list_size=list_size)
    self.feature_mean_n, self.feature_std_n = feature_normalization(manifest, config.task.normalize)

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    if not config.data.path:
      raise ConfigError("data.path", "task 'ranking' ranks query lists, but data.path is empty (synthetic CTR "
                        "data): give it a dataset from `rankjax data letor`")
    if config.train.ndcg_k < 1:
      raise ConfigError("train.ndcg_k", "must be >= 1")

  def model_inputs(self, batch: dict[str, jax.Array], rows: None, routing: None) -> ModelInputs:
    normalized_bln = (batch["features"] - self.feature_mean_n) / self.feature_std_n
    return ModelInputs(documents=cast_floating(self.compute_dtype)(normalized_bln), document_mask=batch["mask"] > 0)

  def loss(self, outputs, batch):
    return self.loss_fn(outputs[self.HEAD], batch["relevance"], batch["mask"]), {}

  def eval_step(self, state, batch):
    return {"scores": self.forward(state, batch)[self.HEAD], "relevance": batch["relevance"],
            "mask": batch["mask"], "weight": batch["weight"]}

  def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """NDCG@train.ndcg_k and the train.loss function over the eval lists (padding lists carry
    weight 0 and are dropped)."""
    lists = outputs["weight"] > 0
    scores, relevance, mask = outputs["scores"][lists], outputs["relevance"][lists], outputs["mask"][lists]
    loss = self.loss_fn(jnp.asarray(scores), jnp.asarray(relevance), jnp.asarray(mask))
    return {self.ndcg_key: ndcg_at_k(relevance, scores, mask, self.config.train.ndcg_k), "loss": float(loss),
            "queries": int(lists.sum())}

  def checkpoint_metrics(self, evaluation: dict[str, float]) -> dict[str, float]:
    return {"ndcg": evaluation[self.ndcg_key], "loss": evaluation["loss"]}

  def summary(self, evaluation: dict[str, float]) -> dict[str, Any]:
    return {f"eval_{self.ndcg_key}": evaluation[self.ndcg_key], "eval_loss": evaluation["loss"]}

  def final_line(self, summary: dict[str, Any]) -> str:
    rate = f"{summary['examples_per_sec']:,.0f}" if summary["examples_per_sec"] else "n/a"
    return (f"rankjax: final eval {self.ndcg_key}={summary[f'eval_{self.ndcg_key}']:.6f} "
            f"loss={summary['eval_loss']:.6f} steps={summary['steps']} lists/s={rate}")
