"""Which pairs of categorical features interact: candidates for Wide & Deep's crosses (`model.crosses`).

For each pair (f, g) of single-id features, over a sample of the train split:
  1. an additive model without the pair's interaction: logit p(x) = l0 + a_f(x_f) + a_g(x_g), with
     a_f(v) = logit((clicks_v + A p0) / (n_v + A)) - l0, the smoothed click rate of id v of f
     against the base rate p0 = sigmoid(l0) (A = 20 pseudo-impressions);
  2. per cell (x_f, x_g) seen at least `min_count` times: its clicks c against the additive
     model's expected clicks e (the sum of its rows' p(x)), in the likelihood-ratio (G-test)
     deviance D = 2 sum_cells [c log(c / e) + (n - c) log((n - c) / (n - e))];
  3. with no interaction, D is about chi-square with one degree of freedom per cell, so the score
     z = (D - cells) / sqrt(2 cells) is the evidence, in standard deviations, that the pair's
     cells depart from additivity: an interaction (or a part of a higher-order one).
Pairs are ranked by z; `--min-z` (default 3) keeps those a cross is worth. The additive model is
fitted on the same rows, which makes z slightly conservative. On the zoo's synthetic data
(12 planted pairs, 2 planted triples), 1 M train records: the first ten pairs are planted ones,
and every pair with z > 3 is planted or part of a planted triple (BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

SMOOTHING = 20.0  # Pseudo-impressions at the base rate in the additive model's per-id rates.
MIN_COUNT = 30  # Rows a cell needs to count.
DENSE_CELLS = 1 << 23  # Pairs with at most this many possible cells count them with bincount.


@dataclasses.dataclass(frozen=True)
class PairScore:
  features: tuple[str, str]
  z: float  # Evidence of interaction, in standard deviations (see the module docstring).
  cells: int  # Cells with at least min_count rows.
  rows: int  # Sampled rows in those cells.


def _logit(p: np.ndarray) -> np.ndarray:
  return np.log(p / (1.0 - p))


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """x log(x / y), 0 where x is 0."""
  return np.where(x > 0, x * np.log(np.maximum(x, 1e-300) / np.maximum(y, 1e-300)), 0.0)


def _cells(ids_f: np.ndarray, ids_g: np.ndarray, vocab_g: int, vocab_f: int) -> tuple[np.ndarray, int]:
  """(cell index of each row, number of cells): dense when the cells fit DENSE_CELLS, else the
  distinct pairs seen."""
  if vocab_f * vocab_g <= DENSE_CELLS:
    return ids_f * vocab_g + ids_g, vocab_f * vocab_g
  distinct, cell = np.unique(ids_f * vocab_g + ids_g, return_inverse=True)
  return cell.reshape(-1), len(distinct)


def score_pairs(ids: np.ndarray, labels: np.ndarray, vocab_sizes: Sequence[int], names: Sequence[str],
                min_count: int = MIN_COUNT) -> list[PairScore]:
  """Every pair of the features (columns of `ids` [N, F], ids in [0, vocab)), by z, highest first."""
  if min_count < 1:
    raise ValueError(f"--min-count must be >= 1, got {min_count}")
  ids = ids.astype(np.int64)
  y = labels.astype(np.float64)
  p0 = min(max(float(y.mean()), 1e-6), 1 - 1e-6)
  l0 = float(_logit(np.float64(p0)))
  effect = np.empty(ids.shape)  # Each row's additive effect of each feature's id, computed once.
  for f, vocab in enumerate(vocab_sizes):
    n = np.bincount(ids[:, f], minlength=vocab)
    clicks = np.bincount(ids[:, f], weights=y, minlength=vocab)
    effect[:, f] = (_logit((clicks + SMOOTHING * p0) / (n + SMOOTHING)) - l0)[ids[:, f]]
  scores = []
  for f, g in itertools.combinations(range(len(vocab_sizes)), 2):
    cell, size = _cells(ids[:, f], ids[:, g], int(vocab_sizes[g]), int(vocab_sizes[f]))
    expected_p = 1.0 / (1.0 + np.exp(-(l0 + effect[:, f] + effect[:, g])))
    n = np.bincount(cell, minlength=size)
    keep = n >= min_count
    n = n[keep]
    clicks = np.bincount(cell, weights=y, minlength=size)[keep]
    expected = np.bincount(cell, weights=expected_p, minlength=size)[keep]
    deviance = 2.0 * float(np.sum(_xlogy(clicks, expected) + _xlogy(n - clicks, n - expected)))
    cells = int(keep.sum())
    z = (deviance - cells) / np.sqrt(2.0 * cells) if cells else 0.0
    scores.append(PairScore((names[f], names[g]), float(z), cells, int(n.sum())))
  return sorted(scores, key=lambda s: -s.z)
