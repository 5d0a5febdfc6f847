"""What the zoo's click models share: config checks, first-order (dim-1) tables and the field
view of an example (dense features and embeddings as [B, fields, D])."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.config import ConfigError
from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.model_inputs import InputSpec, ModelInputs


def check_positive(config: ml_collections.ConfigDict, *keys: str) -> None:
  for key in keys:
    value = config.model[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ConfigError(f"model.{key}", f"must be a positive int, got {value!r}")


def check_sizes(config: ml_collections.ConfigDict, *keys: str, allow_empty: bool = False) -> None:
  """Layer-size tuples: positive ints, non-empty unless `allow_empty`."""
  for key in keys:
    sizes = tuple(config.model[key])
    if (not sizes and not allow_empty) or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0
                                              for d in sizes):
      raise ConfigError(f"model.{key}", f"must be a {'' if allow_empty else 'non-empty '}tuple of positive "
                        f"ints, got {sizes}")


def check_choice(config: ml_collections.ConfigDict, key: str, choices: Sequence[str]) -> None:
  if config.model[key] not in choices:
    raise ConfigError(f"model.{key}", f"must be one of {tuple(choices)}, got {config.model[key]!r}")


def feature_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  """One table of model.embed_dim per categorical feature, named after it."""
  return [EmbeddingTableConfig(name=f"cat_{i}", vocab_size=int(v), dim=config.model.embed_dim,
                               feature_names=(f"cat_{i}",))
          for i, v in enumerate(vocab_sizes)]


def first_order_tables(vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  """One weight per id of each categorical feature (dim-1 tables "cat_i_w", zero-initialised):
  the linear part of LR, FM, DeepFM, xDeepFM and Wide & Deep."""
  return [EmbeddingTableConfig(name=f"cat_{i}_w", vocab_size=int(v), dim=1, feature_names=(f"cat_{i}",),
                               initializer="zeros")
          for i, v in enumerate(vocab_sizes)]


def check_field_dim(config: ml_collections.ConfigDict, inputs: InputSpec, extra_dims: Sequence[int] = ()) -> None:
  """Field models interact vectors of model.embed_dim (plus first-order weights of `extra_dims`)."""
  if set(inputs.embedding_dims) - {config.model.embed_dim, *extra_dims}:
    raise ConfigError("model.embed_dim", f"{config.model.name} interacts fields of model.embed_dim="
                      f"{config.model.embed_dim}; the tables have dims {inputs.embedding_dims}")
  if any(not f.pooled for f in inputs.embedded):
    raise ConfigError("model.name", f"{config.model.name} takes pooled features; a sequence feature "
                      "(combiner 'none') needs a sequence model (din, bst)")


def num_fields(inputs: InputSpec, dim: int) -> int:
  """Fields of an example: its dense features plus its embedded vectors of `dim`."""
  return inputs.num_dense + sum(f.length for f in inputs.embedded if f.dim == dim)


def fields(inputs: ModelInputs, dense_fields, dim: int) -> jax.Array:
  """[B, num_dense + features, dim]: the dense features as fields, then the embeddings of `dim`."""
  parts = [inputs.embedded.of_dim(dim)]
  if inputs.dense is not None and inputs.dense.shape[1]:
    parts.insert(0, dense_fields(inputs.dense))
  return jnp.concatenate(parts, axis=1)


def flat_input(inputs: ModelInputs, dim: int) -> jax.Array:
  """[B, num_dense + vectors * dim]: the dense features and every embedding of `dim`, flattened."""
  embedded = inputs.embedded.of_dim(dim)
  return jnp.concatenate([inputs.dense, embedded.reshape(embedded.shape[0], -1)], axis=1)


def flat_input_dim(inputs: InputSpec, dim: int) -> int:
  return inputs.num_dense + (num_fields(inputs, dim) - inputs.num_dense) * dim


def dense_linear(inputs: InputSpec, *, rngs: nnx.Rngs) -> nnx.Linear | None:
  """The first-order term's linear map of the dense features (None without dense features)."""
  return nnx.Linear(inputs.num_dense, 1, rngs=rngs) if inputs.num_dense else None


def first_order(inputs: ModelInputs, dense_linear) -> jax.Array:
  """[B, heads]-broadcastable linear term: the dim-1 embeddings summed plus a linear map of the dense features."""
  logit_b = inputs.embedded.of_dim(1)[:, :, 0].sum(axis=1)
  if inputs.dense is not None and inputs.dense.shape[1]:
    logit_b = logit_b + dense_linear(inputs.dense)[:, 0]
  return logit_b


def outputs(heads: Sequence[str], logits_bh: jax.Array) -> dict[str, jax.Array]:
  return {head: logits_bh[:, i] for i, head in enumerate(heads)}
