"""MaskNet (Wang et al. 2021, "MaskNet: Introducing Feature-Wise Multiplication to CTR Ranking
Models by Instance-Guided Mask", DLP-KDD).

An instance-guided mask (two linear layers over the whole flattened embedding: aggregation, ReLU,
projection) multiplies a block's input element-wise; a MaskBlock is mask * input -> linear ->
LayerNorm -> ReLU. "serial": blocks chained, the first reading the LayerNorm'd embedding;
"parallel": blocks side by side on the embedding, concatenated, then an MLP.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.layers import MLP, DenseFields
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts

TASKS = ("ctr", "multitask")
STRUCTURES = ("serial", "parallel")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.structure = "parallel"  # serial | parallel.
  c.num_blocks = 3
  c.block_dim = 128  # Output size of each MaskBlock.
  c.mask_ratio = 2  # Aggregation layer size = mask_ratio x the flattened embedding size (the paper's r).
  c.deep_mlp = (256, 128)  # parallel: the MLP over the concatenated blocks.
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim", "num_blocks", "block_dim", "mask_ratio")
  _parts.check_choice(config, "structure", STRUCTURES)
  _parts.check_sizes(config, "deep_mlp", allow_empty=True)


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  return _parts.feature_tables(config, vocab_sizes)


class MaskBlock(nnx.Module):
  """relu(LayerNorm(W (mask(embedding) * x)))."""

  def __init__(self, embedding_dim: int, in_dim: int, out_dim: int, ratio: int, *, rngs: nnx.Rngs):
    self.aggregate = nnx.Linear(embedding_dim, ratio * embedding_dim, rngs=rngs)
    self.project = nnx.Linear(ratio * embedding_dim, in_dim, rngs=rngs)
    self.hidden = nnx.Linear(in_dim, out_dim, use_bias=False, rngs=rngs)
    self.norm = nnx.LayerNorm(out_dim, rngs=rngs)

  def __call__(self, embedding_bi: jax.Array, x_bj: jax.Array) -> jax.Array:
    mask_bj = self.project(jax.nn.relu(self.aggregate(embedding_bi)))
    return jax.nn.relu(self.norm(self.hidden(mask_bj * x_bj)))


class MaskNet(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    _parts.check_field_dim(config, inputs)
    self.heads, self.dim, self.structure = inputs.heads, m.embed_dim, m.structure
    flat = _parts.num_fields(inputs, m.embed_dim) * m.embed_dim
    self.dense_fields = DenseFields(inputs.num_dense, m.embed_dim, rngs=rngs)
    self.embedding_norm = nnx.LayerNorm(flat, rngs=rngs)
    in_dims = [flat] * m.num_blocks if m.structure == "parallel" else [flat] + [m.block_dim] * (m.num_blocks - 1)
    self.blocks = nnx.List([MaskBlock(flat, d, m.block_dim, m.mask_ratio, rngs=rngs) for d in in_dims])
    top_in = m.block_dim * (m.num_blocks if m.structure == "parallel" else 1)
    self.top = MLP(top_in, (*(m.deep_mlp if m.structure == "parallel" else ()), len(self.heads)), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    fields_bfd = _parts.fields(inputs, self.dense_fields, self.dim)
    embedding_bi = fields_bfd.reshape(fields_bfd.shape[0], -1)
    normed_bi = self.embedding_norm(embedding_bi)
    with jax.named_scope("mask_blocks"):
      if self.structure == "parallel":
        x_bj = jnp.concatenate([block(embedding_bi, normed_bi) for block in self.blocks], axis=1)
      else:
        x_bj = normed_bi
        for block in self.blocks:
          x_bj = block(embedding_bi, x_bj)
    with jax.named_scope("top"):
      return _parts.outputs(self.heads, self.top(x_bj))


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> MaskNet:
  return MaskNet(config, inputs, rngs=rngs)
