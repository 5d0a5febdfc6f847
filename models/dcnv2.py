"""DCNv2 (Wang et al. 2021, "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems", WWW).

x0 = [dense features, every embedding] flattened; a cross network of explicit bounded-degree
interactions, x_{l+1} = x0 * (W x_l + b) + x_l, with W full rank (`cross_type="full"`), low rank
U V (`"low_rank"`) or a gated mixture of low-rank experts (`"mixture"`, DCN-Mix). `structure`:
"stacked" (cross network, then the deep network) or "parallel" (both on x0, outputs concatenated).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.layers import MLP, FullCrossNet, LowRankCrossNet, MixtureCrossNet
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts

TASKS = ("ctr", "multitask")
CROSS_TYPES = ("full", "low_rank", "mixture")
STRUCTURES = ("stacked", "parallel")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.cross_layers = 3
  c.cross_type = "mixture"  # full | low_rank | mixture (of low-rank experts).
  c.cross_rank = 64  # low_rank and mixture: rank of each expert's U V.
  c.num_experts = 4  # mixture: experts per layer.
  c.structure = "parallel"  # stacked | parallel.
  c.deep_mlp = (256, 128)  # Hidden layers of the deep network (ReLU after each).
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim", "cross_layers", "cross_rank", "num_experts")
  _parts.check_choice(config, "cross_type", CROSS_TYPES)
  _parts.check_choice(config, "structure", STRUCTURES)
  _parts.check_sizes(config, "deep_mlp")


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  return _parts.feature_tables(config, vocab_sizes)


class DCNv2(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    _parts.check_field_dim(config, inputs)
    self.heads, self.structure, self.dim = inputs.heads, m.structure, m.embed_dim
    in_dim = _parts.flat_input_dim(inputs, m.embed_dim)
    if m.cross_type == "full":
      self.cross_net = FullCrossNet(in_dim, m.cross_layers, rngs=rngs)
    elif m.cross_type == "low_rank":
      self.cross_net = LowRankCrossNet(in_dim, m.cross_layers, m.cross_rank, rngs=rngs)
    else:
      self.cross_net = MixtureCrossNet(in_dim, m.cross_layers, m.cross_rank, m.num_experts, rngs=rngs)
    self.deep = MLP(in_dim, m.deep_mlp, rngs=rngs, final_activation=True)
    out_dim = m.deep_mlp[-1] + (in_dim if m.structure == "parallel" else 0)
    self.output = nnx.Linear(out_dim, len(self.heads), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    x0_bi = _parts.flat_input(inputs, self.dim)
    with jax.named_scope("cross_net"):
      cross_bi = self.cross_net(x0_bi)
    with jax.named_scope("deep"):
      if self.structure == "stacked":
        top_bi = self.deep(cross_bi)
      else:
        top_bi = jnp.concatenate([cross_bi, self.deep(x0_bi)], axis=1)
    return _parts.outputs(self.heads, self.output(top_bi))


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> DCNv2:
  return DCNv2(config, inputs, rngs=rngs)
