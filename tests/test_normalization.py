"""task.normalize: each mode's transform equals its NumPy definition from the train statistics and
`auto` takes log1p exactly for the heavy-tailed features. (End to end: a trained table model records
its log1p columns, tests/test_table_data.py; an exported LTR scorer with a log1p feature scores bit
for bit as the trainer, tests/test_export.py.)"""

import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.data.feature_stats import FeatureStats, normalization
from rankjax.errors import ConfigError


@pytest.fixture(scope="module")
def train_features():
  rng = np.random.default_rng(0)
  return np.stack([
      rng.normal(5.0, 2.0, 20_000),  # Gaussian: standardised.
      rng.lognormal(2.0, 1.5, 20_000),  # Counts with a long tail: log1p under auto.
      rng.integers(0, 2, 20_000).astype(np.float64),  # Binary: standardised.
      np.full(20_000, 3.0),  # Constant: centred, not scaled.
      -rng.pareto(1.5, 20_000) * 100,  # A negative heavy tail: signed log1p.
  ], axis=1)


def _stats(x):
  stats = FeatureStats(x.shape[1])
  stats.add(x[:7000])
  stats.add(x[7000:])
  return stats.as_dict()


def _apply(norm, x):
  return np.asarray(norm(jnp.asarray(x, jnp.float32)))


def test_standardize_and_min_max_and_none_equal_numpy(train_features):
  stats, x = _stats(train_features), train_features[:500]
  std = np.where(train_features.std(0) > 1e-6, train_features.std(0), 1.0)
  np.testing.assert_allclose(_apply(normalization(stats, 5, "standardize"), x), (x - train_features.mean(0)) / std,
                             rtol=2e-5, atol=2e-5)
  low, span = train_features.min(0), np.ptp(train_features, axis=0)
  np.testing.assert_allclose(_apply(normalization(stats, 5, "min_max"), x),
                             (x - low) / np.where(span > 1e-6, span, 1.0), rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(_apply(normalization(stats, 5, "none"), x), x.astype(np.float32))


def test_log1p_standardises_the_signed_log_of_every_feature(train_features):
  stats, x = _stats(train_features), train_features[:500]
  logs = np.sign(train_features) * np.log1p(np.abs(train_features))
  std = np.where(logs.std(0) > 1e-6, logs.std(0), 1.0)
  expect = (np.sign(x) * np.log1p(np.abs(x)) - logs.mean(0)) / std
  np.testing.assert_allclose(_apply(normalization(stats, 5, "log1p"), x), expect, rtol=2e-5, atol=2e-5)


def test_auto_takes_log1p_for_the_heavy_tailed_features_only(train_features):
  stats, x = _stats(train_features), train_features[:500]
  auto = normalization(stats, 5, "auto")
  assert auto.record() == {"mode": "auto", "log1p_features": [1, 4]}
  standardized, logged = _apply(normalization(stats, 5, "standardize"), x), _apply(normalization(stats, 5, "log1p"), x)
  np.testing.assert_allclose(_apply(auto, x), np.where([False, True, False, False, True], logged, standardized),
                             rtol=1e-6, atol=1e-6)
  # Without log1p statistics (a manifest of an older rankjax): auto standardises, log1p is refused.
  old = {k: v for k, v in stats.items() if k != "log1p"}
  assert not normalization(old, 5, "auto").log1p.any()
  with pytest.raises(ConfigError, match="task.normalize.*convert it again"):
    normalization(old, 5, "log1p")
  with pytest.raises(ConfigError, match="task.normalize"):
    normalization(stats, 5, "zscore")

