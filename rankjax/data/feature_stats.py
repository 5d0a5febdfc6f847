"""Per-feature statistics of dense features, accumulated in one pass while a split is written; a
manifest records them (`feature_stats` of LETOR data, `dense_stats` of CTR data), with the same
statistics of signed_log1p(x) under "log1p", and tasks normalise their inputs with them
(`Normalization`, chosen by `task.normalize`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from rankjax.errors import ConfigError

STD_FLOOR = 1e-6  # A feature whose train std is below this is only centred, not scaled.


BLOCK_ROWS = 1 << 16  # Rows folded in at a time, however they arrive.


class FeatureStats:
  """Per-feature count, mean, sum of squared deviations (m2), min and max, in float64, merged one
  block of BLOCK_ROWS rows at a time (Chan, Golub and LeVeque's pairwise update). Rows are
  buffered into fixed blocks, so the result depends only on the sequence of rows, not on how they
  were handed in: one ingest worker and several give the same bits."""

  def __init__(self, num_features: int, log1p: bool = True):
    self.count = 0
    # The same statistics of signed_log1p(x), for the log1p transform of heavy-tailed features.
    self._log1p = FeatureStats(num_features, log1p=False) if log1p else None
    self.mean = np.zeros(num_features)
    self.m2 = np.zeros(num_features)
    self.min = np.full(num_features, np.inf)
    self.max = np.full(num_features, -np.inf)
    self._pending: list[np.ndarray] = []
    self._pending_rows = 0

  def add(self, features_df: np.ndarray) -> None:
    """Adds rows of `features_df` (rows, features)."""
    if self._log1p is not None:
      self._log1p.add(signed_log1p(np.asarray(features_df, np.float64)))
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
    stats = {"count": self.count, "mean": self.mean.tolist(), "std": np.sqrt(self.m2 / max(self.count, 1)).tolist(),
             "min": self.min.tolist(), "max": self.max.tolist()}
    if self._log1p is not None:
      stats["log1p"] = {k: v for k, v in self._log1p.as_dict().items() if k != "count"}
    return stats


NORMALIZATIONS = ("auto", "standardize", "log1p", "min_max", "none")
# auto: a feature is heavy-tailed (log1p, then standardised) when its train values reach more than
# HEAVY_REACH standard deviations from the mean and signed_log1p at least halves that reach.
HEAVY_REACH = 8.0


def signed_log1p(x, xp=np):
  """sign(x) * log(1 + |x|): log1p for counts, odd and monotone, so negative values keep their order."""
  return xp.sign(x) * xp.log1p(xp.abs(x))


def _reach(stats: dict[str, Any]) -> np.ndarray:
  """How many standard deviations the farthest train value lies from the mean, per feature."""
  mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
  far = np.maximum(np.asarray(stats["max"]) - mean, mean - np.asarray(stats["min"]))
  return np.where(std > STD_FLOOR, far / np.where(std > STD_FLOOR, std, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class Normalization:
  """x -> (t(x) - shift) / scale per feature, t = signed_log1p where `log1p` is set, else identity:
  constants from the train split's statistics, so train, eval and an exported model apply the same."""

  mode: str
  log1p: np.ndarray  # bool [features]
  shift: np.ndarray  # float32 [features]
  scale: np.ndarray  # float32 [features]

  def __call__(self, x_nf: jnp.ndarray) -> jnp.ndarray:
    """Normalises the last axis of x (features)."""
    if self.log1p.any():
      x_nf = jnp.where(self.log1p, signed_log1p(x_nf, jnp), x_nf)
    return (x_nf - self.shift) / self.scale

  def record(self) -> dict[str, Any]:
    """What a run records (summary.json): the mode and which features went through log1p."""
    return {"mode": self.mode, "log1p_features": np.flatnonzero(self.log1p).tolist()}


def normalization(stats: dict[str, Any] | None, num_features: int, mode: str) -> Normalization:
  """The Normalization of `task.normalize`=mode from a manifest's stats: standardize ((x - mean) /
  std), min_max ((x - min) / (max - min)), log1p (signed_log1p, then standardised), auto (log1p for
  the heavy-tailed features, see HEAVY_REACH; standardize for the rest), none. Without stats
  (synthetic data of an older manifest) every mode but log1p is the identity or standardisation."""
  identity = Normalization("none", np.zeros(num_features, bool), np.zeros(num_features, np.float32),
                           np.ones(num_features, np.float32))
  if mode not in NORMALIZATIONS:
    raise ConfigError("task.normalize", f"must be one of {NORMALIZATIONS}, got {mode!r}")
  if mode == "none" or not stats:
    return identity
  log_stats = stats.get("log1p")
  if mode == "log1p" and log_stats is None:
    raise ConfigError("task.normalize", "'log1p' needs the log1p statistics of the features, which this "
                      "dataset's manifest lacks (converted by an older rankjax): convert it again")
  if mode == "min_max":
    low, high = np.asarray(stats["min"], np.float64), np.asarray(stats["max"], np.float64)
    span = high - low
    return dataclasses.replace(identity, mode=mode, shift=low.astype(np.float32),
                               scale=np.where(span > STD_FLOOR, span, 1.0).astype(np.float32))
  if mode == "log1p":
    log1p = np.ones(num_features, bool)
  elif mode == "auto" and log_stats is not None:
    raw_reach, log_reach = _reach(stats), _reach(log_stats)
    log1p = (raw_reach > HEAVY_REACH) & (2.0 * log_reach <= raw_reach)
  else:
    log1p = np.zeros(num_features, bool)
  pick = lambda key: np.where(log1p, np.asarray(log_stats[key]) if log1p.any() else 0.0, np.asarray(stats[key]))
  std = pick("std")
  return Normalization(mode, log1p, pick("mean").astype(np.float32),
                       np.where(std > STD_FLOOR, std, 1.0).astype(np.float32))
