"""Per-feature statistics of dense features, accumulated in one pass while a split is written; a
manifest records them (`feature_stats` of LETOR data, `dense_stats` of CTR data) and tasks
standardise their inputs with them."""

from __future__ import annotations

from typing import Any

import numpy as np

STD_FLOOR = 1e-6  # A feature whose train std is below this is only centred, not scaled.


BLOCK_ROWS = 1 << 16  # Rows folded in at a time, however they arrive.


class FeatureStats:
  """Per-feature count, mean, sum of squared deviations (m2), min and max, in float64, merged one
  block of BLOCK_ROWS rows at a time (Chan, Golub and LeVeque's pairwise update). Rows are
  buffered into fixed blocks, so the result depends only on the sequence of rows, not on how they
  were handed in: one ingest worker and several give the same bits."""

  def __init__(self, num_features: int):
    self.count = 0
    self.mean = np.zeros(num_features)
    self.m2 = np.zeros(num_features)
    self.min = np.full(num_features, np.inf)
    self.max = np.full(num_features, -np.inf)
    self._pending: list[np.ndarray] = []
    self._pending_rows = 0

  def add(self, features_df: np.ndarray) -> None:
    """Adds rows of `features_df` (rows, features)."""
    start = 0
    while start < len(features_df):
      take = min(BLOCK_ROWS - self._pending_rows, len(features_df) - start)
      self._pending.append(np.asarray(features_df[start:start + take], np.float64))
      self._pending_rows += take
      start += take
      if self._pending_rows == BLOCK_ROWS:
        self._fold(np.concatenate(self._pending))
        self._pending, self._pending_rows = [], 0

  def _fold(self, x: np.ndarray) -> None:
    n = len(x)
    mean = x.mean(axis=0)
    m2 = ((x - mean) ** 2).sum(axis=0)
    total = self.count + n
    delta = mean - self.mean
    self.mean += delta * (n / total)
    self.m2 += m2 + delta ** 2 * (self.count * n / total)
    self.count = total
    np.minimum(self.min, x.min(axis=0), out=self.min)
    np.maximum(self.max, x.max(axis=0), out=self.max)

  def as_dict(self) -> dict[str, Any]:
    if self._pending_rows:
      self._fold(np.concatenate(self._pending))
      self._pending, self._pending_rows = [], 0
    return {"count": self.count, "mean": self.mean.tolist(), "std": np.sqrt(self.m2 / max(self.count, 1)).tolist(),
            "min": self.min.tolist(), "max": self.max.tolist()}


def standardization(stats: dict[str, Any] | None, num_features: int, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
  """(mean_n, std_n) float32 constants for (x - mean) / std from a manifest's stats; (0, 1) when
  disabled or without stats."""
  if not enabled or not stats:
    return np.zeros(num_features, np.float32), np.ones(num_features, np.float32)
  std = np.asarray(stats["std"], np.float64)
  return np.asarray(stats["mean"], np.float32), np.where(std > STD_FLOOR, std, 1.0).astype(np.float32)
