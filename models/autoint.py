"""AutoInt (Song et al. 2019, "AutoInt: Automatic Feature Interaction Learning via Self-Attentive
Neural Networks", CIKM).

Every field (dense features as x_j v_j, categorical embeddings) is a token; layers of multi-head
self-attention over the fields with a residual projection and ReLU learn interactions of growing
order; the final field vectors, flattened, give the logits. With `deep_mlp` non-empty a DNN over
the embeddings is added in parallel (AutoInt+); with `use_wide` a first-order term (a dim-1 weight
per id + a linear map of the dense features, as FuxiCTR's and RecStudio's AutoInt offer) is added.
Attention scores are the paper's unscaled <W_q e_i, W_k e_j> (eq. 5) unless `scaled_attention`
divides them by sqrt(attention_dim) as transformers do.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
from flax import nnx

from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.layers import MLP, DenseFields
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts

TASKS = ("ctr", "multitask")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.attention_layers = 3
  c.num_heads = 2
  c.attention_dim = 16  # Per head.
  c.deep_mlp = (256, 128)  # AutoInt+ DNN; () = AutoInt alone.
  c.use_wide = False  # Add a first-order (logistic-regression) term.
  c.scaled_attention = False  # False: the paper's unscaled scores; True: divided by sqrt(attention_dim).
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim", "attention_layers", "num_heads", "attention_dim")
  _parts.check_sizes(config, "deep_mlp", allow_empty=True)


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  wide = _parts.first_order_tables(vocab_sizes) if config.model.use_wide else []
  return _parts.feature_tables(config, vocab_sizes) + wide


class InteractingLayer(nnx.Module):
  """Multi-head self-attention over fields with a residual projection: relu(attention(x) + W_res x)."""

  def __init__(self, in_dim: int, num_heads: int, head_dim: int, scaled: bool, *, rngs: nnx.Rngs):
    self.num_heads, self.head_dim = num_heads, head_dim
    self.scale = head_dim ** -0.5 if scaled else 1.0
    out = num_heads * head_dim
    self.query = nnx.Linear(in_dim, out, use_bias=False, rngs=rngs)
    self.key = nnx.Linear(in_dim, out, use_bias=False, rngs=rngs)
    self.value = nnx.Linear(in_dim, out, use_bias=False, rngs=rngs)
    self.residual = nnx.Linear(in_dim, out, use_bias=False, rngs=rngs)

  def __call__(self, x_bfd: jax.Array) -> jax.Array:
    batch, num_fields, _ = x_bfd.shape
    split = lambda y: y.reshape(batch, num_fields, self.num_heads, self.head_dim)
    attended = jax.nn.dot_product_attention(split(self.query(x_bfd)), split(self.key(x_bfd)),
                                            split(self.value(x_bfd)), scale=self.scale)
    return jax.nn.relu(attended.reshape(batch, num_fields, -1) + self.residual(x_bfd))


class AutoInt(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    _parts.check_field_dim(config, inputs, extra_dims=(1,) if m.use_wide else ())
    self.heads, self.dim = inputs.heads, m.embed_dim
    self.dense_linear = _parts.dense_linear(inputs, rngs=rngs) if m.use_wide else None
    num_fields = _parts.num_fields(inputs, m.embed_dim)
    self.dense_fields = DenseFields(inputs.num_dense, m.embed_dim, rngs=rngs)
    dims = [m.embed_dim] + [m.num_heads * m.attention_dim] * m.attention_layers
    self.attention = nnx.List([InteractingLayer(d, m.num_heads, m.attention_dim, m.scaled_attention, rngs=rngs) for d in dims[:-1]])
    self.attention_out = nnx.Linear(num_fields * dims[-1], len(self.heads), rngs=rngs)
    self.deep = (MLP(num_fields * m.embed_dim, (*m.deep_mlp, len(self.heads)), rngs=rngs)
                 if m.deep_mlp else None)
    self.use_wide = m.use_wide

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    fields_bfd = _parts.fields(inputs, self.dense_fields, self.dim)
    with jax.named_scope("self_attention"):
      x_bfd = fields_bfd
      for layer in self.attention:
        x_bfd = layer(x_bfd)
      logits_bh = self.attention_out(x_bfd.reshape(x_bfd.shape[0], -1))
    if self.deep is not None:
      with jax.named_scope("deep"):
        logits_bh = logits_bh + self.deep(fields_bfd.reshape(fields_bfd.shape[0], -1))
    if self.use_wide:
      with jax.named_scope("first_order"):
        logits_bh = logits_bh + _parts.first_order(inputs, self.dense_linear)[:, None]
    return _parts.outputs(self.heads, logits_bh)


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> AutoInt:
  return AutoInt(config, inputs, rngs=rngs)
