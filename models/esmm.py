"""ESMM (Ma et al. 2018, "Entire Space Multi-Task Model: An Effective Approach for Estimating
Post-Click Conversion Rate", SIGIR).

A CTR tower and a CVR tower share the embeddings; both are trained over every impression: the
first head's logit is pCTR's, the second head's is the logit of pCTCVR = pCTR x pCVR, so the
conversion label (converted after a click, over all impressions) supervises CVR through the
product and CVR is never learned from the biased clicked-only sample. Outputs also hold "cvr",
the post-click conversion logit, for serving.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.config import ConfigError
from rankjax.embedding.tables import EmbeddingTableConfig
from rankjax.layers import MLP
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts

TASKS = ("multitask",)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 16
  c.tower_mlp = (256, 128)  # Each tower's hidden layers (CTR and CVR); a linear layer gives its logit.
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "embed_dim")
  _parts.check_sizes(config, "tower_mlp")
  if len(config.task.heads) != 2:
    raise ConfigError("task.heads", "ESMM has two heads, the click and the conversion over all impressions "
                      f"(click, conversion), got {tuple(config.task.heads)}")


def embedding_tables(config: ml_collections.ConfigDict, vocab_sizes: Sequence[int]) -> list[EmbeddingTableConfig]:
  return _parts.feature_tables(config, vocab_sizes)


def product_logit(logit_a: jax.Array, logit_b: jax.Array) -> jax.Array:
  """logit(sigmoid(a) sigmoid(b)), computed in log space (no 0 * inf, no log(0))."""
  log_p = -jax.nn.softplus(-logit_a) - jax.nn.softplus(-logit_b)
  return log_p - jnp.log(-jnp.expm1(jnp.minimum(log_p, -1e-7)))


class ESMM(nnx.Module):
  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    _parts.check_field_dim(config, inputs)
    self.heads, self.dim = inputs.heads, m.embed_dim
    in_dim = _parts.flat_input_dim(inputs, m.embed_dim)
    self.ctr_tower = MLP(in_dim, (*m.tower_mlp, 1), rngs=rngs)
    self.cvr_tower = MLP(in_dim, (*m.tower_mlp, 1), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    x_bi = _parts.flat_input(inputs, self.dim)
    with jax.named_scope("ctr_tower"):
      ctr_b = self.ctr_tower(x_bi)[:, 0]
    with jax.named_scope("cvr_tower"):
      cvr_b = self.cvr_tower(x_bi)[:, 0]
    click, conversion = self.heads
    return {click: ctr_b, conversion: product_logit(ctr_b, cvr_b), "cvr": cvr_b}


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> ESMM:
  return ESMM(config, inputs, rngs=rngs)
