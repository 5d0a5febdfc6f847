"""The embedded default data: a Criteo-like synthetic CTR set with a planted, known model.

13 dense features (log-transformed counts), 26 categorical features with Zipf-distributed ids,
and labels drawn from a logistic model with per-id effects, low-rank pairwise feature
interactions (and, when asked, order-3 ones) and a dense nonlinearity. With `conversion`, a second
label: a conversion follows a click with a probability that depends on other features (the
click -> conversion structure ESMM models), its Bayes-optimal AUC over all impressions recorded
per label. The true click probabilities are known, so the manifest
records the Bayes-optimal eval AUC: the ceiling any model can reach on the eval split.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np

from rankjax.data import layout
from rankjax.data.feature_stats import FeatureStats
from rankjax.embedding.tables import scale_rows
from rankjax.metrics import log_loss_from_logits, roc_auc


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  seed: int
  num_train: int
  num_eval: int
  num_dense: int
  vocab_sizes: tuple[int, ...]
  zipf_exponent: float
  latent_dim: int
  num_interacting_pairs: int
  signal_scale: float
  hotness: tuple[int, ...] = ()  # Max ids per feature (multi-hot); () = one id per feature.
  num_interacting_triples: int = 0  # Planted order-3 crosses (sum_k u_f[k] u_g[k] u_h[k]).
  conversion: bool = False  # A second label: conversion, only after a click (click -> conversion).
  # > 0: a behaviour sequence, an extra feature of up to this many earlier items (ids of the last
  # feature, the target item's vocabulary); the click depends on how close the target is to them.
  sequence_length: int = 0
  # > 0: a validation split of this many records, drawn after the eval split (so the train and eval
  # records are the same with or without it).
  num_validation: int = 0

  @classmethod
  def from_config(cls, c, row_scale: float = 1.0) -> "SyntheticSpec":
    """From `config.data.synthetic`; `row_scale` shrinks every vocabulary (config.data.row_scale)."""
    return cls(seed=c.seed, num_train=c.num_train, num_eval=c.num_eval, num_dense=c.num_dense,
               vocab_sizes=scale_rows(c.vocab_sizes, row_scale), zipf_exponent=float(c.zipf_exponent),
               latent_dim=c.latent_dim, num_interacting_pairs=c.num_interacting_pairs,
               signal_scale=float(c.signal_scale), hotness=tuple(int(h) for h in c.get("hotness", ())),
               num_interacting_triples=int(c.get("num_interacting_triples", 0)),
               conversion=bool(c.get("conversion", False)), sequence_length=int(c.get("sequence_length", 0)),
               num_validation=int(c.get("num_validation", 0)))

  @property
  def feature_hotness(self) -> tuple[int, ...]:
    return self.hotness or (1,) * len(self.vocab_sizes)

  @property
  def data_vocab_sizes(self) -> tuple[int, ...]:
    """Every feature's vocabulary as written, the behaviour sequence (if any) last."""
    return self.vocab_sizes + ((self.vocab_sizes[-1],) if self.sequence_length else ())

  @property
  def data_hotness(self) -> tuple[int, ...]:
    return self.feature_hotness + ((self.sequence_length,) if self.sequence_length else ())

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["vocab_sizes"] = list(self.vocab_sizes)
    d["hotness"] = list(self.hotness)
    return d


class _PlantedModel:
  """The true click model, drawn once from the seed."""

  def __init__(self, spec: SyntheticSpec, rng: np.random.Generator):
    s = spec.signal_scale
    num_sparse = len(spec.vocab_sizes)
    self.id_permutation = [rng.permutation(v) for v in spec.vocab_sizes]
    ranks = [np.arange(1, v + 1, dtype=np.float64) for v in spec.vocab_sizes]
    pmf = [r ** -spec.zipf_exponent for r in ranks]
    self.id_cdf = [np.cumsum(p / p.sum()) for p in pmf]
    self.main_effect = [s * rng.normal(0.0, 0.35, v) for v in spec.vocab_sizes]
    self.latent = [s * rng.normal(0.0, 0.6 / np.sqrt(spec.latent_dim), (v, spec.latent_dim))
                   for v in spec.vocab_sizes]
    all_pairs = [(f, g) for f in range(num_sparse) for g in range(f + 1, num_sparse)]
    chosen = rng.choice(len(all_pairs), size=min(spec.num_interacting_pairs, len(all_pairs)), replace=False)
    self.pairs = [all_pairs[i] for i in sorted(chosen)]
    self.dense_log_mean = rng.uniform(0.0, 4.0, spec.num_dense)
    self.dense_log_std = rng.uniform(0.5, 1.5, spec.num_dense)
    self.dense_weight = s * rng.normal(0.0, 0.25, spec.num_dense)
    self.bias = -1.2
    # Fixed standardisation (from a calibration draw), so a record's true logit depends on its
    # own features only, never on the rest of its split.
    calibration = self._dense(rng, 100_000, spec.num_dense)
    self.dense_mean, self.dense_std = calibration.mean(axis=0), calibration.std(axis=0) + 1e-6
    self.triples, self.triple_latent = [], []
    if spec.num_interacting_triples:  # Drawn last: data without triples is unchanged.
      all_triples = [(f, g, h) for f in range(num_sparse) for g in range(f + 1, num_sparse)
                     for h in range(g + 1, num_sparse)]
      chosen = rng.choice(len(all_triples), size=min(spec.num_interacting_triples, len(all_triples)), replace=False)
      self.triples = [all_triples[i] for i in sorted(chosen)]
      scale = s ** (1 / 3) * (0.3 / spec.latent_dim ** 0.5) ** (1 / 3)  # Each triple's term has std 0.3 s.
      self.triple_latent = [rng.normal(0.0, scale, (v, spec.latent_dim)) for v in spec.vocab_sizes]
    if spec.conversion:
      # Conversion given a click depends on the second half of the features (and the last dense
      # ones), which barely move the click: a CVR model must learn what CTR's does not.
      self.cvr_features = list(range(num_sparse // 2, num_sparse))
      self.cvr_effect = {f: s * rng.normal(0.0, 0.6, spec.vocab_sizes[f]) for f in self.cvr_features}
      cvr_pairs = [(f, g) for f in self.cvr_features for g in self.cvr_features if f < g]
      chosen = rng.choice(len(cvr_pairs), size=min(4, len(cvr_pairs)), replace=False)
      self.cvr_pairs = [cvr_pairs[i] for i in sorted(chosen)]
      self.cvr_dense_weight = s * rng.normal(0.0, 0.4, spec.num_dense) * (np.arange(spec.num_dense) >= spec.num_dense // 2)
      self.cvr_bias = -0.8
    if spec.sequence_length:
      # Items live in a latent taste space; a user's history is drawn around a taste vector and
      # the click grows with the target's mean similarity to the history.
      item_vocab = spec.vocab_sizes[-1]
      self.item_vectors = rng.normal(0.0, 1.0, (item_vocab, spec.latent_dim)) / np.sqrt(spec.latent_dim)
      self.sequence_weight = 2.0 * s

  def _dense(self, rng: np.random.Generator, n: int, num_dense: int) -> np.ndarray:
    raw = np.floor(np.exp(rng.normal(self.dense_log_mean, self.dense_log_std, (n, num_dense))))
    return np.log1p(raw).astype(np.float32)  # The Criteo transform: log(1 + max(x, 0)).

  def sample(self, n: int, spec: SyntheticSpec, rng: np.random.Generator):
    """(label, dense, cat [n, slots] with -1 padding, true logit) for n records."""
    dense = self._dense(rng, n, spec.num_dense)
    hotness = spec.feature_hotness
    starts = np.concatenate([[0], np.cumsum(hotness)[:-1]])
    cat = np.full((n, int(sum(hotness))), -1, np.int32)
    for f, cdf in enumerate(self.id_cdf):
      h, start = hotness[f], starts[f]
      if h == 1:
        rank = np.minimum(np.searchsorted(cdf, rng.random(n)), len(cdf) - 1)
        cat[:, start] = self.id_permutation[f][rank]
      else:  # 1..h ids per record, the rest padding.
        count = rng.integers(1, h + 1, n)
        rank = np.minimum(np.searchsorted(cdf, rng.random((n, h))), len(cdf) - 1)
        cat[:, start:start + h] = np.where(np.arange(h) < count[:, None], self.id_permutation[f][rank], -1)

    def pooled(values, f):  # A multi-hot feature's effect is the mean over its ids.
      ids = cat[:, starts[f]:starts[f] + hotness[f]]
      if hotness[f] == 1:
        return values[ids[:, 0]]
      valid = (ids >= 0).astype(np.float64)
      valid = valid.reshape(valid.shape + (1,) * (values.ndim - 1))
      return np.sum(values[np.maximum(ids, 0)] * valid, axis=1) / np.sum(valid, axis=1)

    z = (dense - self.dense_mean) / self.dense_std
    logit = self.bias + z @ self.dense_weight + 0.3 * spec.signal_scale * np.tanh(z[:, 0] * z[:, 1])
    for f in range(len(hotness)):
      logit += pooled(self.main_effect[f], f)
    for f, g in self.pairs:
      logit += np.sum(pooled(self.latent[f], f) * pooled(self.latent[g], g), axis=1)
    for f, g, h in self.triples:
      u = self.triple_latent
      logit += np.sum(pooled(u[f], f) * pooled(u[g], g) * pooled(u[h], h), axis=1)
    if spec.sequence_length:
      history, similarity = self._history(cat[:, -1], spec, rng)
      cat = np.concatenate([cat, history], axis=1)
      logit += self.sequence_weight * similarity
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    if not spec.conversion:
      return label, dense, cat, logit
    cvr_logit = self.cvr_bias + z @ self.cvr_dense_weight
    for f in self.cvr_features:
      cvr_logit += pooled(self.cvr_effect[f], f)
    for f, g in self.cvr_pairs:
      cvr_logit += np.sum(pooled(self.latent[f], f) * pooled(self.latent[g], g), axis=1)
    conversion = label * (rng.random(n) < 1.0 / (1.0 + np.exp(-cvr_logit)))
    # The true logit of a conversion over all impressions: pCTCVR = pCTR x pCVR.
    log_p = -np.logaddexp(0.0, -logit) - np.logaddexp(0.0, -cvr_logit)
    ctcvr_logit = log_p - np.log(-np.expm1(log_p))
    return (np.stack([label, conversion], axis=1).astype(np.float32), dense, cat,
            np.stack([logit, ctcvr_logit], axis=1))


  def _history(self, target: np.ndarray, spec: SyntheticSpec, rng: np.random.Generator):
    """([n, H] earlier items, -1 padded; [n] the target's mean cosine similarity to them).

    Each user has a taste (a random item's vector plus noise); history items are the nearest of
    a few random candidates to that taste, so histories are coherent and the target's similarity
    to them varies from user to user."""
    n, h = len(target), spec.sequence_length
    vectors = self.item_vectors
    taste = vectors[rng.integers(0, len(vectors), n)] + rng.normal(0.0, 0.3, (n, vectors.shape[1]))
    candidates = rng.integers(0, len(vectors), (n, h, 8))
    scores = np.einsum("nhcd,nd->nhc", vectors[candidates], taste)
    history = np.take_along_axis(candidates, scores.argmax(axis=2)[:, :, None], axis=2)[:, :, 0]
    length = rng.integers(1, h + 1, n)
    valid = np.arange(h) < length[:, None]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = np.einsum("nd,nhd->nh", unit[target], unit[history])
    similarity = np.sum(cosine * valid, axis=1) / length
    return np.where(valid, history, -1).astype(np.int32), similarity


def split_sizes(spec) -> list[tuple[str, int]]:
  """(split, records) in the order they are drawn: the validation split last, so it changes nothing
  else."""
  return [("train", spec.num_train), ("eval", spec.num_eval)] + \
      ([("validation", spec.num_validation)] if spec.num_validation else [])


def generate(directory: str | pathlib.Path, spec: SyntheticSpec) -> dict:
  """Writes the train, eval (and validation) splits and the manifest; deterministic in `spec`."""
  directory = pathlib.Path(directory)
  tmp = directory.with_name(directory.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  rng = np.random.default_rng(spec.seed)
  planted = _PlantedModel(spec, rng)
  dtype = layout.ctr_record_dtype(spec.num_dense, int(sum(spec.data_hotness)), num_labels=2 if spec.conversion else 1)
  splits, stats = {}, {}
  for split, n in split_sizes(spec):
    label, dense, cat, logit = planted.sample(n, spec, rng)
    records = np.empty(n, dtype)
    records["label"], records["dense"], records["cat"] = label, dense, cat
    splits[split] = layout.write_split(tmp, split, records)
    stats[split] = (label, logit)
    if split == "train":
      dense_stats = FeatureStats(spec.num_dense)
      dense_stats.add(dense)
  eval_label, eval_logit = stats["eval"]
  by_label = {}
  if spec.conversion:
    by_label = {"labels": ["click", "conversion"], "bayes_optimal_eval_auc_by_label": {
        name: roc_auc(eval_label[:, k], eval_logit[:, k]) for k, name in enumerate(("click", "conversion"))}}
    eval_label, eval_logit = eval_label[:, 0], eval_logit[:, 0]
  manifest = layout.write_manifest(
      tmp, dtype, splits,
      num_dense=spec.num_dense, vocab_sizes=list(spec.data_vocab_sizes), hotness=list(spec.data_hotness),
      dense_stats=dense_stats.as_dict(), source={"kind": "synthetic", **spec.as_dict()},
      eval_positive_rate=float(eval_label.mean()),
      bayes_optimal_eval_auc=roc_auc(eval_label, eval_logit),
      bayes_optimal_eval_logloss=log_loss_from_logits(eval_label, eval_logit), **by_label)
  shutil.rmtree(directory, ignore_errors=True)
  tmp.replace(directory)
  return manifest


def ensure(directory: str | pathlib.Path, spec: SyntheticSpec) -> dict:
  """Returns the manifest of the data in `directory`, generating it if absent, incomplete or
  made from another spec."""
  return ensure_generated(directory, "synthetic", spec, generate)


def ensure_generated(directory: str | pathlib.Path, kind: str, spec: Any, generate_fn: Callable) -> dict:
  """The manifest in `directory` if its source is (`kind`, `spec`) and every split is whole,
  else that of `generate_fn(directory, spec)`."""
  directory = pathlib.Path(directory)
  try:
    manifest = layout.read_manifest(directory)
    source = dict(manifest.get("source", {}))
    if source.pop("kind", None) == kind and source == spec.as_dict():
      for split in manifest["splits"]:
        layout.open_split(directory, manifest, split)  # DataError on a missing or truncated file.
      return manifest
  except layout.DataError:
    pass
  return generate_fn(directory, spec)
