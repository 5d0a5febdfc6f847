"""Tests for rankjax/streaming_metrics.py: eval totals accumulated batch by batch on 8 simulated
devices equal scikit-learn (AUC, log loss), the NumPy references (NE, calibration, the
reliability table, GAUC) and rax (NDCG, DCG, precision, recall, MRR, MAP per list), AUC and GAUC
within the error bound they report."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax
from jax.sharding import NamedSharding, PartitionSpec as P
from sklearn.metrics import log_loss, roc_auc_score

from rankjax import metrics, streaming_metrics
from rankjax.partitioner import make_mesh

HEADS, BATCH, BATCHES = 2, 512, 5


@pytest.fixture(scope="module")
def mesh():
  return make_mesh(("batch",), (8,))


def _sharded(mesh, x):
  return jax.device_put(x, NamedSharding(mesh, P("batch", *([None] * (x.ndim - 1)))))


def _examples(seed: int, quantum: float = 0.0):
  """Logits [N, HEADS] (rounded to `quantum` if given), labels drawn from them, groups, and a
  padding flag on the last batch's tail."""
  rng = np.random.default_rng(seed)
  n = BATCH * BATCHES
  logits = rng.normal(-1.0, 1.5, (n, HEADS)).astype(np.float32)
  if quantum:
    logits = (np.round(logits / quantum) * quantum).astype(np.float32)
  labels = (rng.random((n, HEADS)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
  groups = rng.integers(0, 40, n).astype(np.int32)
  real = np.ones(n, bool)
  real[-100:] = False
  return logits, labels, groups, real


def _stream(mesh, logits, labels, groups, real, bins: int, group_bins: int):
  binary = streaming_metrics.binary_init(HEADS, bins)
  grouped = streaming_metrics.grouped_init(HEADS, 40, group_bins)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(binary, grouped, logits, labels, groups, real):
    return (streaming_metrics.binary_update(binary, logits, labels, real),
            streaming_metrics.grouped_update(grouped, logits, labels, groups, real))

  for start in range(0, len(logits), BATCH):
    part = slice(start, start + BATCH)
    binary, grouped = step(binary, grouped, *(_sharded(mesh, a[part]) for a in (logits, labels, groups, real)))
  return (streaming_metrics.binary_metrics(jax.device_get(binary)),
          streaming_metrics.grouped_metrics(jax.device_get(grouped)))


def test_binned_auc_is_within_its_reported_bound_of_sklearn_and_the_other_metrics_are_exact(mesh):
  logits, labels, groups, real = _examples(0)
  per_head, _ = _stream(mesh, logits, labels, groups, real, bins=2**18, group_bins=64)
  for h, m in enumerate(per_head):
    y, s = labels[real, h], logits[real, h].astype(np.float64)
    exact = roc_auc_score(y, s)
    assert 0 < m["auc_error_bound"] < 1e-4
    assert abs(m["auc"] - exact) <= m["auc_error_bound"] + 1e-12
    assert m["logloss"] == pytest.approx(log_loss(y, 1 / (1 + np.exp(-s))), rel=1e-6)
    assert m["ne"] == pytest.approx(metrics.normalized_entropy(y, s), rel=1e-6)
    assert m["calibration"] == pytest.approx(metrics.calibration(y, s), rel=1e-6)
    assert m["examples"] == real.sum()
    oracle = metrics.reliability_table(y, s, bins=streaming_metrics.RELIABILITY_BINS)
    assert [r["examples"] for r in m["reliability"]] == [r["examples"] for r in oracle]
    for ours, theirs in zip(m["reliability"], oracle):
      assert ours["mean_prediction"] == pytest.approx(theirs["mean_prediction"], rel=1e-5)
      assert ours["observed_rate"] == pytest.approx(theirs["observed_rate"], rel=1e-12)


def test_binned_auc_and_gauc_are_exact_when_each_bin_holds_one_distinct_score(mesh):
  # Scores on a grid coarser than the bins: ties are true ties, counted one half like sklearn.
  logits, labels, groups, real = _examples(1, quantum=0.25)
  per_head, grouped = _stream(mesh, logits, labels, groups, real, bins=1024, group_bins=256)
  for h in range(HEADS):
    assert per_head[h]["auc"] == pytest.approx(roc_auc_score(labels[real, h], logits[real, h]), abs=1e-12)
    gauc, counted = metrics.grouped_auc(labels[real, h], logits[real, h], groups[real])
    assert grouped[h]["gauc"] == pytest.approx(gauc, abs=1e-12)
    assert grouped[h]["gauc_groups"] == counted


def test_gauc_is_within_its_reported_bound_of_the_numpy_reference(mesh):
  logits, labels, groups, real = _examples(2)
  _, grouped = _stream(mesh, logits, labels, groups, real, bins=1024, group_bins=2048)
  for h in range(HEADS):
    gauc, counted = metrics.grouped_auc(labels[real, h], logits[real, h], groups[real])
    assert grouped[h]["gauc_groups"] == counted == 40
    assert 0 < grouped[h]["gauc_error_bound"] < 2e-3
    assert abs(grouped[h]["gauc"] - gauc) <= grouped[h]["gauc_error_bound"] + 1e-12


def test_a_missing_group_id_counts_nowhere_and_one_class_gives_nan():
  totals = streaming_metrics.grouped_update(
      streaming_metrics.grouped_init(1, 3, 8), jnp.zeros((4, 1)), jnp.array([[1.0], [0.0], [1.0], [0.0]]),
      jnp.array([0, 0, -1, 1]), jnp.ones(4, bool))
  assert int(totals["positives_hgb"].sum() + totals["negatives_hgb"].sum()) == 3
  (only,) = streaming_metrics.binary_metrics(streaming_metrics.binary_update(
      streaming_metrics.binary_init(1, 8), jnp.zeros((3, 1)), jnp.ones((3, 1)), jnp.ones(3, bool)))
  assert np.isnan(only["auc"]) and np.isnan(only["ne"]) and only["calibration"] == pytest.approx(0.5)


def test_compensated_sum_keeps_what_a_float32_sum_loses():
  total, plain = streaming_metrics.sum_init(), jnp.zeros((), jnp.float32)
  add = jax.jit(streaming_metrics.sum_add)
  total, plain = add(total, jnp.float32(1.0)), plain + 1.0
  for _ in range(1000):
    total, plain = add(total, jnp.float32(1e-8)), plain + jnp.float32(1e-8)
  assert float(plain) == 1.0  # Each 1e-8 is below float32's resolution at 1.0 ...
  assert streaming_metrics.sum_value(jax.device_get(total)) == pytest.approx(1.0 + 1e-5, rel=1e-9)  # ... kept here.


@pytest.mark.parametrize("k", (1, 3, 5, 10))
def test_ranking_metrics_per_list_equal_rax_with_ties_padding_and_irrelevant_lists(mesh, k):
  rng = np.random.default_rng(3)
  relevance = rng.integers(0, 4, (64, 12)).astype(np.float32)
  relevance[:5] = 0.0  # Lists without a relevant document: 0 on every metric, as in rax.
  scores = np.round(rng.normal(size=(64, 12)), 1).astype(np.float32)  # Ties.
  mask = rng.random((64, 12)) < 0.8
  mask[7] = False  # A padding-only list.
  mask[9, 1:] = False  # A single-document list.
  per_list, relevant_b, has_doc_b = jax.jit(streaming_metrics.ranking_per_list, static_argnums=3)(
      *(_sharded(mesh, a) for a in (relevance, scores, mask.astype(np.float32))), (k,))
  has_doc_b = np.asarray(has_doc_b)
  assert has_doc_b.sum() == 63 and not np.asarray(relevant_b)[:5].any()
  args = (jnp.asarray(scores), jnp.asarray(relevance))
  oracles = {f"ndcg@{k}": rax.ndcg_metric(*args, where=jnp.asarray(mask), topn=k, reduce_fn=None),
             f"dcg@{k}": rax.dcg_metric(*args, where=jnp.asarray(mask), topn=k, reduce_fn=None),
             f"precision@{k}": rax.precision_metric(*args, where=jnp.asarray(mask), topn=k, reduce_fn=None),
             f"recall@{k}": rax.recall_metric(*args, where=jnp.asarray(mask), topn=k, reduce_fn=None),
             "mrr": rax.mrr_metric(*args, where=jnp.asarray(mask), reduce_fn=None),
             "map": rax.ap_metric(*args, where=jnp.asarray(mask), reduce_fn=None)}
  for name, oracle in oracles.items():
    np.testing.assert_allclose(np.asarray(per_list[name])[has_doc_b], np.asarray(oracle)[has_doc_b], atol=1e-5,
                               err_msg=name)
  ndcg = float(np.sum(np.asarray(per_list[f"ndcg@{k}"])[has_doc_b]) / has_doc_b.sum())
  assert ndcg == pytest.approx(metrics.ndcg_at_k(relevance, scores, mask, k), abs=1e-6)
