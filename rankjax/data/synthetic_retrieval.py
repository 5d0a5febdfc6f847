"""Synthetic retrieval data (`data.synthetic.kind = "retrieval"`): users pick items by a planted
two-tower preference, so a trained query tower and item tower can recover it.

A user has a segment and an item a category; their latent vectors are the segment's (category's)
vector plus a personal offset. User u picks item i with probability proportional to
popularity(i)^zipf_share * exp(signal_scale * <user_u, item_i>): popular items are picked more,
so the popularity baseline is a real competitor, and in-batch negatives are sampled by popularity
(what the log-Q correction accounts for).

Records: `query` [user, segment] and `item` [item, category] (int32). The manifest's `retrieval`
entry names the features of each tower, their vocabularies, the whole corpus (every item's
features), the items' counts in the train split (for the log-Q correction and the popularity
baseline), and the planted model's own recall@K on the eval split (the reference to approach).
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil

import ml_collections
import numpy as np

from rankjax.data import layout, synthetic

QUERY_FEATURES = ("user", "user_segment")
ITEM_FEATURES = ("item", "item_category")
RECALL_CUTOFFS = (10, 50, 100)


@dataclasses.dataclass(frozen=True)
class RetrievalSpec:
  seed: int
  num_train: int
  num_eval: int
  num_users: int
  num_segments: int
  num_items: int
  num_categories: int
  latent_dim: int
  zipf_exponent: float
  signal_scale: float
  num_validation: int = 0  # > 0: a validation split, drawn after the eval split.

  @classmethod
  def from_config(cls, synthetic: ml_collections.ConfigDict) -> RetrievalSpec:
    r = synthetic.retrieval
    return cls(seed=synthetic.seed, num_train=synthetic.num_train, num_eval=synthetic.num_eval,
               num_users=r.num_users, num_segments=r.num_segments, num_items=r.num_items,
               num_categories=r.num_categories, latent_dim=synthetic.latent_dim,
               zipf_exponent=synthetic.zipf_exponent, signal_scale=synthetic.signal_scale,
               num_validation=synthetic.get("num_validation", 0))

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def vocab_sizes(self) -> dict[str, int]:
    return {"user": self.num_users, "user_segment": self.num_segments, "item": self.num_items,
            "item_category": self.num_categories}


def record_dtype() -> np.dtype:
  return np.dtype([("query", "<i4", (len(QUERY_FEATURES),)), ("item", "<i4", (len(ITEM_FEATURES),))])


class _Planted:
  def __init__(self, spec: RetrievalSpec, rng: np.random.Generator):
    d = spec.latent_dim
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    self.user_segment = rng.integers(0, spec.num_segments, spec.num_users)
    self.item_category = rng.integers(0, spec.num_categories, spec.num_items)
    users = unit(unit(rng.normal(size=(spec.num_segments, d)))[self.user_segment]
                 + 0.5 * unit(rng.normal(size=(spec.num_users, d))))
    items = unit(unit(rng.normal(size=(spec.num_categories, d)))[self.item_category]
                 + 0.5 * unit(rng.normal(size=(spec.num_items, d))))
    log_popularity = -spec.zipf_exponent * np.log1p(rng.permutation(spec.num_items))
    self.logits_ui = log_popularity[None, :] + spec.signal_scale * users @ items.T

  def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    users = rng.integers(0, len(self.user_segment), n)
    items = np.empty(n, np.int64)
    for start in range(0, n, 4096):  # The Gumbel-max trick: a softmax draw per row, in bounded memory.
      logits = self.logits_ui[users[start:start + 4096]]
      items[start:start + 4096] = np.argmax(logits - np.log(-np.log(rng.uniform(1e-12, 1.0, logits.shape))), axis=1)
    return users, items


def generate(directory: str | pathlib.Path, spec: RetrievalSpec) -> dict:
  """Writes the train, eval (and validation) splits and the manifest; deterministic in `spec`."""
  directory = pathlib.Path(directory)
  tmp = directory.with_name(directory.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  rng = np.random.default_rng(spec.seed)
  planted = _Planted(spec, rng)
  dtype, splits, picks = record_dtype(), {}, {}
  for split, n in synthetic.split_sizes(spec):
    users, items = planted.sample(n, rng)
    records = np.empty(n, dtype)
    records["query"] = np.stack([users, planted.user_segment[users]], axis=1)
    records["item"] = np.stack([items, planted.item_category[items]], axis=1)
    splits[split] = layout.write_split(tmp, split, records)
    picks[split] = users, items
  users, items = picks["eval"]
  rank = np.concatenate([(planted.logits_ui[u] > planted.logits_ui[u, i][:, None]).sum(axis=1)
                         for u, i in zip(np.array_split(users, max(1, len(users) // 4096)),
                                         np.array_split(items, max(1, len(users) // 4096)))])
  manifest = layout.write_manifest(
      tmp, dtype, splits, source={"kind": "synthetic_retrieval", **spec.as_dict()},
      retrieval={
          "query_features": list(QUERY_FEATURES), "item_features": list(ITEM_FEATURES),
          "vocab_sizes": spec.vocab_sizes,
          "corpus": np.stack([np.arange(spec.num_items), planted.item_category], axis=1).tolist(),
          "item_train_counts": np.bincount(picks["train"][1], minlength=spec.num_items).tolist(),
          "oracle_eval_recall": {f"recall@{k}": float((rank < k).mean()) for k in RECALL_CUTOFFS}})
  shutil.rmtree(directory, ignore_errors=True)
  tmp.replace(directory)
  return manifest


def ensure(directory: str | pathlib.Path, spec: RetrievalSpec) -> dict:
  """The manifest of the data in `directory`, generating it if absent, incomplete or of another spec."""
  return synthetic.ensure_generated(directory, "synthetic_retrieval", spec, generate)


def data_shape(spec: RetrievalSpec) -> dict:
  """The manifest fields that shape the model, without generating data (uniform item counts)."""
  return {"source": {"kind": "synthetic_retrieval"}, "retrieval": {
      "query_features": list(QUERY_FEATURES), "item_features": list(ITEM_FEATURES), "vocab_sizes": spec.vocab_sizes,
      "corpus": [], "item_train_counts": [1] * spec.num_items}}
