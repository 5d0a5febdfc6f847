"""FinalMLP (Mao et al. 2023, "FinalMLP: An Enhanced Two-Stream MLP Model for CTR Prediction", AAAI).

Two MLP streams read the same flattened fields through their own feature gates (stream-specific
feature selection: gate = 2 sigmoid(MLP(context)), the context being the embeddings of
`gate1_features` / `gate2_features`, or a learned vector when empty), and a multi-head bilinear
fusion combines them: per head h, y = b + w1.o1 + w2.o2 + o1_h^T W_h o2_h.
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
  c.stream1_mlp = (256, 128)
  c.stream2_mlp = (256, 128)
  c.gate_mlp = (64,)  # Hidden layers of each feature gate.
  c.gate1_features = ()  # Names of the features stream 1's gate reads; () = a learned context vector.
  c.gate2_features = ()
  c.fusion_heads = 8  # Bilinear fusion heads; must divide both streams' output sizes.
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  m = config.model
  _parts.check_positive(config, "embed_dim", "fusion_heads")
  _parts.check_sizes(config, "stream1_mlp", "stream2_mlp", "gate_mlp")
  for key in ("stream1_mlp", "stream2_mlp"):
    if m[key][-1] % m.fusion_heads:
      raise ConfigError(f"model.{key}", f"last size must be divisible by model.fusion_heads={m.fusion_heads}, "
                        f"got {tuple(m[key])}")


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  return _parts.feature_tables(config, vocab_sizes)


class FeatureGate(nnx.Module):
  """2 sigmoid(MLP(context)) over the flattened fields; context = named features' embeddings or a learned vector."""

  def __init__(self, features: Sequence[str], inputs: InputSpec, dim: int, hidden: Sequence[int], out_dim: int,
               *, rngs: nnx.Rngs):
    known = {f.name for f in inputs.embedded}
    missing = [f for f in features if f not in known]
    if missing:
      raise ConfigError("model.gate1_features", f"no embedded features {missing} (features: {sorted(known)})")
    self.features = tuple(features)
    self.context_d = None if features else nnx.Param(nnx.initializers.zeros(rngs.params(), (dim,)))
    self.mlp = MLP(dim * max(1, len(features)), (*hidden, out_dim), rngs=rngs)

  def __call__(self, inputs: ModelInputs, batch: int) -> jax.Array:
    if self.features:
      context = jnp.concatenate([inputs.embedded[f] for f in self.features], axis=1)
    else:
      context = jnp.broadcast_to(self.context_d[...], (batch, self.context_d.shape[0]))
    return 2.0 * jax.nn.sigmoid(self.mlp(context))


class FinalMLP(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    _parts.check_field_dim(config, inputs)
    self.heads, self.dim, self.fusion_heads = inputs.heads, m.embed_dim, m.fusion_heads
    flat = _parts.num_fields(inputs, m.embed_dim) * m.embed_dim
    self.dense_fields = DenseFields(inputs.num_dense, m.embed_dim, rngs=rngs)
    self.gate1 = FeatureGate(m.gate1_features, inputs, m.embed_dim, m.gate_mlp, flat, rngs=rngs)
    self.gate2 = FeatureGate(m.gate2_features, inputs, m.embed_dim, m.gate_mlp, flat, rngs=rngs)
    self.stream1 = MLP(flat, m.stream1_mlp, rngs=rngs, final_activation=True)
    self.stream2 = MLP(flat, m.stream2_mlp, rngs=rngs, final_activation=True)
    d1, d2, k, h = m.stream1_mlp[-1], m.stream2_mlp[-1], m.fusion_heads, len(self.heads)
    self.linear1 = nnx.Linear(d1, h, rngs=rngs)
    self.linear2 = nnx.Linear(d2, h, use_bias=False, rngs=rngs)
    init = nnx.initializers.variance_scaling(1.0, "fan_avg", "truncated_normal", in_axis=(1, 2), out_axis=-1,
                                             batch_axis=(0,))
    self.bilinear_kdeh = nnx.Param(init(rngs.params(), (k, d1 // k, d2 // k, h)))

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    fields_bfd = _parts.fields(inputs, self.dense_fields, self.dim)
    flat_bi = fields_bfd.reshape(fields_bfd.shape[0], -1)
    batch = flat_bi.shape[0]
    with jax.named_scope("stream1"):
      o1_bd = self.stream1(flat_bi * self.gate1(inputs, batch))
    with jax.named_scope("stream2"):
      o2_be = self.stream2(flat_bi * self.gate2(inputs, batch))
    with jax.named_scope("bilinear_fusion"):
      k = self.fusion_heads
      bilinear_bh = jnp.einsum("bkd,kdeh,bke->bh", o1_bd.reshape(batch, k, -1), self.bilinear_kdeh[...],
                               o2_be.reshape(batch, k, -1))
      logits_bh = self.linear1(o1_bd) + self.linear2(o2_be) + bilinear_bh
    return _parts.outputs(self.heads, logits_bh)


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> FinalMLP:
  return FinalMLP(config, inputs, rngs=rngs)
