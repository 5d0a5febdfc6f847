"""Early stopping on the validation split: tracks the best step by one eval metric and decides
when to stop. Its state travels in every checkpoint, so a resumed run stops where an
uninterrupted one would."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import ml_collections

from rankjax.config import ConfigError


@dataclasses.dataclass
class EarlyStopping:
  metric: str  # A key of the task's evaluation, e.g. "auc", "ndcg@10", "click/auc".
  patience: int  # Evaluations without improvement before stopping; 0 = never stop (still keep the best).
  min_delta: float  # An improvement smaller than this does not count.
  lower_is_better: bool
  best_step: int | None = None
  best_value: float | None = None
  evals_since_best: int = 0
  stopped: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, lower_is_better: tuple[str, ...]) -> EarlyStopping | None:
    c = config.train.early_stopping
    if not c.metric:
      return None
    return cls(c.metric, c.patience, c.min_delta, c.metric.rsplit("/", 1)[-1] in lower_is_better)

  @property
  def checkpoint_metric(self) -> str:
    """The name under which a new best step's value is recorded with its checkpoint (what the
    checkpoint retention keeps the best step by)."""
    return f"best_validation_{self.metric}"

  def check_metric(self, names: Iterable[str]) -> None:
    """Raises ConfigError unless the metric is one of the task's eval metric `names`."""
    if self.metric not in names:
      raise ConfigError("train.early_stopping.metric", f"{self.metric!r} is not an eval metric of this task; "
                        f"one of {sorted(names)}")

  def update(self, step: int, evaluation: dict[str, float]) -> bool:
    """Records the validation evaluation of `step`; True when it is the new best step."""
    self.check_metric([k for k, v in evaluation.items() if isinstance(v, (int, float))])
    value = evaluation[self.metric]
    if value is None or not math.isfinite(value):
      improved = False
    elif self.best_value is None:
      improved = True
    else:
      gain = self.best_value - value if self.lower_is_better else value - self.best_value
      improved = gain > self.min_delta
    if improved:
      self.best_step, self.best_value, self.evals_since_best = step, float(value), 0
    else:
      self.evals_since_best += 1
      self.stopped = bool(self.patience) and self.evals_since_best >= self.patience
    return improved

  def state(self) -> dict[str, Any]:
    return {"best_step": self.best_step, "best_value": self.best_value,
            "evals_since_best": self.evals_since_best, "stopped": self.stopped}

  def load(self, state: dict[str, Any]) -> None:
    self.best_step, self.best_value = state["best_step"], state["best_value"]
    self.evals_since_best, self.stopped = state["evals_since_best"], state["stopped"]

  def describe(self) -> str:
    """How the run ended, for the last lines."""
    if self.best_step is None:
      return f"no validation {self.metric} was finite"
    return (f"step {self.best_step} has the best validation {self.metric}={self.best_value:.6f}"
            + (f"; stopped after {self.evals_since_best} evals without improvement" if self.stopped else ""))
