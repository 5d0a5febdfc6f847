"""DeepFM (Guo et al. 2017, "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction", IJCAI).

logit = first order (a dim-1 weight per id + a linear map of the dense features)
      + FM (pairwise dot products of every field's vector, dense features as fields x_j v_j)
      + DNN over the flattened field vectors; the FM and the DNN share the embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
from flax import nnx

from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.layers import MLP, DenseFields, factorization_machine
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts

TASKS = ("ctr", "multitask")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.deep_mlp = (256, 128)  # Hidden layers of the DNN; a linear layer gives one logit per head.
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim")
  _parts.check_sizes(config, "deep_mlp")


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  """Per feature: its field vector (model.embed_dim) and its first-order weight (dim 1)."""
  return _parts.feature_tables(config, vocab_sizes) + _parts.first_order_tables(vocab_sizes)


class DeepFM(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    _parts.check_field_dim(config, inputs, extra_dims=(1,))
    self.heads, self.dim = inputs.heads, m.embed_dim
    self.dense_linear = _parts.dense_linear(inputs, rngs=rngs)
    self.dense_fields = DenseFields(inputs.num_dense, m.embed_dim, rngs=rngs)
    self.deep = MLP(_parts.num_fields(inputs, m.embed_dim) * m.embed_dim, (*m.deep_mlp, len(self.heads)), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    fields_bfd = _parts.fields(inputs, self.dense_fields, self.dim)
    with jax.named_scope("first_order"):
      linear_b = _parts.first_order(inputs, self.dense_linear)
    fm_b = factorization_machine(fields_bfd)
    with jax.named_scope("deep"):
      deep_bh = self.deep(fields_bfd.reshape(fields_bfd.shape[0], -1))
    return _parts.outputs(self.heads, deep_bh + (linear_b + fm_b)[:, None])


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> DeepFM:
  return DeepFM(config, inputs, rngs=rngs)
