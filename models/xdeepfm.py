"""xDeepFM (Lian et al. 2018, "xDeepFM: Combining Explicit and Implicit Feature Interactions for
Recommender Systems", KDD).

logit = first order + CIN (Compressed Interaction Network: explicit vector-wise interactions of
bounded order) + DNN (implicit, bit-wise). CIN layer k: X^k[h] = sum_{i,j} W^k[h,i,j] (X^{k-1}[i] *
X^0[j]) over field vectors; each layer's maps are sum-pooled over the embedding dim into the output.
With `split_half` (the paper's default) half of a hidden layer's maps go to the output and half
feed the next layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.config import ConfigError
from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.layers import MLP, DenseFields
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts

TASKS = ("ctr", "multitask")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.cin_layers = (64, 64)  # Feature maps per CIN layer.
  c.split_half = True
  c.deep_mlp = (256, 128)
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim")
  _parts.check_sizes(config, "cin_layers", "deep_mlp")
  if config.model.split_half and any(h % 2 for h in config.model.cin_layers[:-1]):
    raise ConfigError("model.cin_layers", "with model.split_half every layer but the last needs an even size, "
                      f"got {tuple(config.model.cin_layers)}")


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  return _parts.feature_tables(config, vocab_sizes) + _parts.first_order_tables(vocab_sizes)


class CIN(nnx.Module):
  """Compressed Interaction Network over [B, m, D] fields -> [B, sum of output maps]."""

  def __init__(self, num_fields: int, layer_sizes: Sequence[int], split_half: bool, *, rngs: nnx.Rngs):
    self.split = tuple(split_half and k < len(layer_sizes) - 1 for k in range(len(layer_sizes)))
    kept = [size // 2 if split else size for size, split in zip(layer_sizes, self.split)]
    inputs = [num_fields, *kept[:-1]]  # Maps each layer reads from the previous one.
    # Each layer is a 1x1 convolution over the (previous map, field) pairs.
    self.maps = nnx.List([nnx.Linear(h * num_fields, size, rngs=rngs) for h, size in zip(inputs, layer_sizes)])
    self.output_dim = sum(size - k if split else size for size, k, split in zip(layer_sizes, kept, self.split))

  def __call__(self, x0_bmd: jax.Array) -> jax.Array:
    batch, m, dim = x0_bmd.shape
    x_bhd, pooled = x0_bmd, []
    for conv, split in zip(self.maps, self.split):
      z_bhmd = jnp.einsum("bhd,bmd->bhmd", x_bhd, x0_bmd).reshape(batch, -1, dim)
      x_bkd = jax.nn.relu(jnp.einsum("bnd,nk->bkd", z_bhmd, conv.kernel[...]) + conv.bias[...][:, None])
      if split:
        half = x_bkd.shape[1] // 2
        x_bhd, out_bkd = x_bkd[:, :half], x_bkd[:, half:]
      else:
        x_bhd, out_bkd = x_bkd, x_bkd
      pooled.append(out_bkd.sum(axis=2))
    return jnp.concatenate(pooled, axis=1)


class XDeepFM(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    _parts.check_field_dim(config, inputs, extra_dims=(1,))
    self.heads, self.dim = inputs.heads, m.embed_dim
    num_fields = _parts.num_fields(inputs, m.embed_dim)
    self.dense_linear = _parts.dense_linear(inputs, rngs=rngs)
    self.dense_fields = DenseFields(inputs.num_dense, m.embed_dim, rngs=rngs)
    self.cin = CIN(num_fields, m.cin_layers, m.split_half, rngs=rngs)
    self.cin_out = nnx.Linear(self.cin.output_dim, len(self.heads), rngs=rngs)
    self.deep = MLP(num_fields * m.embed_dim, (*m.deep_mlp, len(self.heads)), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    fields_bfd = _parts.fields(inputs, self.dense_fields, self.dim)
    with jax.named_scope("first_order"):
      linear_b = _parts.first_order(inputs, self.dense_linear)
    with jax.named_scope("cin"):
      cin_bh = self.cin_out(self.cin(fields_bfd))
    with jax.named_scope("deep"):
      deep_bh = self.deep(fields_bfd.reshape(fields_bfd.shape[0], -1))
    return _parts.outputs(self.heads, linear_b[:, None] + cin_bh + deep_bh)


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> XDeepFM:
  return XDeepFM(config, inputs, rngs=rngs)
