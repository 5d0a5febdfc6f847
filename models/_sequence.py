"""What the behaviour-sequence models (DIN, BST) share: the item table serving both the target
item and the history, config checks, and the split of features into target, history and the rest."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from rankjax.config import ConfigError
from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts


def add_config(c: ml_collections.ConfigDict) -> None:
  # The embedded synthetic data with data.synthetic.sequence_length > 0: cat_25 is the target
  # item, cat_26 the history of earlier items (ids of the same vocabulary, one shared table).
  c.target_feature = "cat_25"
  c.history_feature = "cat_26"
  c.use_history = True  # False: the same model without the sequence (the ablation).


def validate(config: ml_collections.ConfigDict) -> None:
  m = config.model
  if not m.target_feature or not m.history_feature or m.target_feature == m.history_feature:
    raise ConfigError("model.history_feature", "needs a target and a history feature, two different names, got "
                      f"{m.target_feature!r} and {m.history_feature!r}")


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  """One table per feature; the target item and its history share one table (combiner "none":
  positions kept, padding masked)."""
  m = config.model
  names = [f"cat_{i}" for i in range(len(vocab_sizes))]
  for key in ("target_feature", "history_feature"):
    if m[key] not in names:
      raise ConfigError(f"model.{key}", f"no feature {m[key]!r} in the data (features cat_0..cat_{len(names) - 1})")
  target_vocab, history_vocab = (int(vocab_sizes[names.index(m[k])]) for k in ("target_feature", "history_feature"))
  if target_vocab != history_vocab:  # Ids hashed into other row counts would name other items.
    raise ConfigError("model.history_feature", f"{m.history_feature!r} ({history_vocab} rows) and the target "
                      f"{m.target_feature!r} ({target_vocab} rows) share one item table: give both the same num_rows "
                      "in the `rankjax data table` spec")
  tables = [EmbeddingTableConfig(name=n, vocab_size=int(v), dim=m.embed_dim, feature_names=(n,))
            for n, v in zip(names, vocab_sizes) if n not in (m.target_feature, m.history_feature)]
  return tables + [EmbeddingTableConfig(name="item", vocab_size=target_vocab, dim=m.embed_dim,
                                        feature_names=(m.target_feature, m.history_feature), combiner="none")]


def check_inputs(config: ml_collections.ConfigDict, inputs: InputSpec) -> tuple[str, ...]:
  """The other (pooled) features' names; ConfigError unless target and history are there."""
  m = config.model
  _parts.check_positive(config, "embed_dim")
  names = {f.name: f for f in inputs.embedded}
  for key in ("target_feature", "history_feature"):
    if m[key] not in names:
      raise ConfigError(f"model.{key}", f"no embedded feature {m[key]!r} (features: {', '.join(names)})")
  if set(inputs.embedding_dims) != {m.embed_dim}:
    raise ConfigError("model.embed_dim", f"every table needs dim {m.embed_dim}, got {inputs.embedding_dims}")
  others = tuple(f.name for f in inputs.embedded if f.name not in (m.target_feature, m.history_feature))
  if any(not names[n].pooled for n in others):
    raise ConfigError("model.history_feature", "one behaviour sequence per model: the other features must be pooled")
  return others


def target_and_history(config: ml_collections.ConfigDict, inputs: ModelInputs):
  """(target [B, D], history [B, H, D], history mask [B, H]); padding positions are zero."""
  m = config.model
  target = inputs.embedded[m.target_feature]
  if target.ndim == 3:  # A sequence of one (the item table keeps positions).
    target = target[:, 0]
  return target, inputs.embedded[m.history_feature], inputs.embedded.mask(m.history_feature)


def others_flat(inputs: ModelInputs, others: tuple[str, ...]) -> jax.Array:
  """[B, num_dense + others * D]: the dense features and the other features' embeddings."""
  parts = [inputs.dense] + [inputs.embedded[n] for n in others]
  return jnp.concatenate(parts, axis=1)
