"""A listwise-context ranking scorer: each document is scored in the context of its whole list
(Pang et al. 2020, "SetRank: Learning a Permutation-Invariant Ranking Model for Information
Retrieval", SIGIR; Pobrotyn et al. 2020, "Context-Aware Learning to Rank with Self-Attention").

Each document's (normalised) features go through an MLP to a vector; transformer blocks of
multi-head self-attention across the list's documents (padding documents are never attended to;
no positions, so the scores are permutation-equivariant) give each document its context; an MLP
over [document vector, context vector] gives its score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rankjax.config import ConfigError
from rankjax.layers import MLP, TransformerBlock
from rankjax.model_inputs import InputSpec, ModelInputs
from rankjax.models import _parts

TASKS = ("ranking",)  # Trained on LETOR query lists (rankjax.tasks.ranking).


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.document_mlp = (128, 64)  # Per-document layers; the last size is the attention dim.
  c.attention_layers = 2
  c.num_heads = 4
  c.feed_forward_dim = 128
  c.score_mlp = (64,)  # Hidden layers over [document, context]; a final linear layer gives the score.
  # Lists with categorical columns (`rankjax data table --lists`): each feature's table dim; its
  # pooled embedding joins the document's dense features.
  c.embed_dim = 16
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  _parts.check_positive(config, "attention_layers", "num_heads", "feed_forward_dim")
  _parts.check_sizes(config, "document_mlp")
  _parts.check_sizes(config, "score_mlp", allow_empty=True)
  if config.model.document_mlp[-1] % config.model.num_heads:
    raise ConfigError("model.num_heads", f"must divide the attention dim model.document_mlp[-1]="
                      f"{config.model.document_mlp[-1]}, got {config.model.num_heads}")


class ListwiseAttentionScorer(nnx.Module):
  """Documents [batch, list, features] and their mask -> {head: scores [batch, list]}."""

  def __init__(self, config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs):
    m = config.model
    (self.head,) = inputs.heads
    dim = m.document_mlp[-1]
    self.document = MLP(inputs.num_document_features, m.document_mlp, rngs=rngs, final_activation=True)
    self.blocks = nnx.List([TransformerBlock(dim, m.num_heads, m.feed_forward_dim, rngs=rngs)
                            for _ in range(m.attention_layers)])
    self.score = MLP(2 * dim, (*m.score_mlp, 1), rngs=rngs)

  def __call__(self, inputs: ModelInputs) -> dict[str, jax.Array]:
    with jax.named_scope("documents"):
      documents_bld = self.document(inputs.documents)
    context_bld = documents_bld
    with jax.named_scope("list_attention"):
      for block in self.blocks:
        context_bld = block(context_bld, inputs.document_mask)
    with jax.named_scope("score"):
      return {self.head: self.score(jnp.concatenate([documents_bld, context_bld], axis=-1))[..., 0]}


def create(config: ml_collections.ConfigDict, inputs: InputSpec, *, rngs: nnx.Rngs) -> ListwiseAttentionScorer:
  return ListwiseAttentionScorer(config, inputs, rngs=rngs)
