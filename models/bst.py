"""BST (Chen et al. 2019, "Behavior Sequence Transformer for E-commerce Recommendation in
Alibaba", DLP-KDD).

The behaviour sequence followed by the target item, each with a learned position embedding, goes
through transformer blocks (multi-head self-attention with padding masked out, residual +
LayerNorm, a LeakyReLU feed-forward, residual + LayerNorm); the flattened outputs, the other
features and the dense features feed a LeakyReLU MLP to the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.config import ConfigError
from rankjax.layers import TransformerBlock
from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts, _sequence

TASKS = ("ctr", "multitask")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.transformer_blocks = 1
  c.num_heads = 2
  c.feed_forward_dim = 64
  c.deep_mlp = (256, 128)
  _sequence.add_config(c)
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim", "transformer_blocks", "num_heads", "feed_forward_dim")
  _parts.check_sizes(config, "deep_mlp")
  _sequence.validate(config)
  if config.model.embed_dim % config.model.num_heads:
    raise ConfigError("model.num_heads", f"must divide model.embed_dim={config.model.embed_dim}, "
                      f"got {config.model.num_heads}")


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  return _sequence.embedding_tables(config, vocab_sizes)


class BST(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    self.others = _sequence.check_inputs(config, inputs)
    self.config, self.heads, self.use_history = config, inputs.heads, m.use_history
    d = m.embed_dim
    history = next(f for f in inputs.embedded if f.name == m.history_feature)
    length = (history.length if m.use_history else 0) + 1
    self.positions_ld = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (length, d)))
    self.blocks = nnx.List([TransformerBlock(d, m.num_heads, m.feed_forward_dim, rngs=rngs)
                            for _ in range(m.transformer_blocks)])
    sizes = [inputs.num_dense + len(self.others) * d + length * d, *m.deep_mlp]
    self.deep = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.out = nnx.Linear(sizes[-1], len(self.heads), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    target_bd, history_bhd, mask_bh = _sequence.target_and_history(self.config, inputs)
    sequence_bld, mask_bl = target_bd[:, None], jnp.ones(target_bd.shape[:1] + (1,), bool)
    if self.use_history:
      sequence_bld = jnp.concatenate([history_bhd, sequence_bld], axis=1)
      mask_bl = jnp.concatenate([mask_bh, mask_bl], axis=1)
    with jax.named_scope("transformer"):
      x_bld = sequence_bld + self.positions_ld[...].astype(sequence_bld.dtype)
      for block in self.blocks:
        x_bld = block(x_bld, mask_bl)
      x_bld = x_bld * mask_bl[..., None]  # Padding contributes nothing downstream.
    with jax.named_scope("deep"):
      x = jnp.concatenate([_sequence.others_flat(inputs, self.others), x_bld.reshape(x_bld.shape[0], -1)], axis=1)
      for layer in self.deep:
        x = jax.nn.leaky_relu(layer(x))
      return _parts.outputs(self.heads, self.out(x))


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> BST:
  return BST(config, inputs, rngs=rngs)
