"""The model contract: what a model is built from (`InputSpec`) and what it is called with
(`ModelInputs`), features addressed by name.

A zoo model is `create(config, inputs: InputSpec, *, rngs) -> nnx.Module` whose module maps
`ModelInputs` to named outputs: one logit (or score) array per head, or tower embeddings. Tasks
build the inputs from a batch; models pick what they need by name (TorchRec's KeyedTensor).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class EmbeddedFeature:
  """A categorical feature as the model sees it after the embedding engine.

  pooled: one [batch, dim] vector; otherwise a sequence of `length` vectors [batch, length, dim]
  with a mask (combiner "none": a behaviour sequence, padding zeroed and masked).
  """
  name: str
  dim: int
  length: int = 1
  pooled: bool = True


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """What a batch gives the model, statically: sizes to build layers from."""
  heads: tuple[str, ...]  # Output names the task trains (one logit/score array each).
  num_dense: int = 0  # Dense features per example.
  embedded: tuple[EmbeddedFeature, ...] = ()  # Categorical features, in batch order.
  num_document_features: int = 0  # Ranking: features per document of a list.
  list_size: int = 0  # Ranking: documents per list (padded).
  towers: tuple[tuple[str, ...], ...] = ()  # Retrieval: (query features, item features) by name.

  @property
  def num_embedded_vectors(self) -> int:
    """Vectors per example over all embedded features (a sequence feature counts its length)."""
    return sum(f.length for f in self.embedded)

  @property
  def embedding_dims(self) -> tuple[int, ...]:
    return tuple(sorted({f.dim for f in self.embedded}))


class KeyedEmbeddings:
  """Embedding vectors by feature name: `emb["cat_3"]` is [B, D] (pooled) or [B, H, D] (sequence,
  with `emb.mask("cat_3")` [B, H]); `emb.stacked()` is every vector in feature order, [B, V, D].

  Holds the engine's output arrays (one per embedding dim) and a static index into them, so
  taking all features in order is a view, not a copy.
  """

  def __init__(self, features: tuple[EmbeddedFeature, ...], values: dict[int, jax.Array],
               valid: dict[str, jax.Array]):
    self.features = features
    self._values = values  # dim -> [B, V_dim, dim]: that dim's features' vectors, in feature order.
    self._valid = valid  # sequence feature name -> [B, H] bool.
    self._where: dict[str, tuple[int, int, EmbeddedFeature]] = {}
    start_of = dict.fromkeys(values, 0)
    for f in features:
      self._where[f.name] = (f.dim, start_of[f.dim], f)
      start_of[f.dim] += f.length

  def keys(self) -> tuple[str, ...]:
    return tuple(f.name for f in self.features)

  def __getitem__(self, name: str) -> jax.Array:
    if name not in self._where:
      raise KeyError(f"no embedded feature {name!r} (features: {', '.join(self.keys())})")
    dim, start, f = self._where[name]
    block = self._values[dim][:, start:start + f.length]
    return block[:, 0] if f.pooled else block

  def of_dim(self, dim: int) -> jax.Array:
    """[B, V, dim]: every vector of embedding dim `dim`, in feature order (a view)."""
    if dim not in self._values:
      raise KeyError(f"no embedded feature of dim {dim} (dims: {sorted(self._values)})")
    return self._values[dim]

  def mask(self, name: str) -> jax.Array:
    """[B, H] True where a sequence feature has an id (padding False)."""
    if name not in self._valid:
      raise KeyError(f"{name!r} is not a sequence feature (combiner 'none')")
    return self._valid[name]

  def stacked(self, names: tuple[str, ...] | None = None) -> jax.Array:
    """[B, V, D] vectors of `names` (default: all features) in order; they must share one dim."""
    if names is None and len(self._values) == 1:
      return next(iter(self._values.values()))
    names = self.keys() if names is None else names
    dims = {self._where[n][0] for n in names}
    if len(dims) != 1:
      raise ValueError(f"features {names} have embedding dims {sorted(dims)}: stack one dim at a time")
    parts = [self[n] if not self._where[n][2].pooled else self[n][:, None] for n in names]
    return jnp.concatenate(parts, axis=1)


@dataclasses.dataclass(frozen=True)
class ModelInputs:
  """What a model is called with; fields a task does not provide are None."""
  dense: jax.Array | None = None  # [B, num_dense]
  embedded: KeyedEmbeddings | None = None
  documents: jax.Array | None = None  # Ranking: [B, L, num_document_features], normalised.
  document_mask: jax.Array | None = None  # Ranking: [B, L] True for a real document.
