"""rankjax: a JAX/XLA trainer for industrial ranking models.

Sharded sparse embeddings, a Flax NNX model zoo, Grain input, Orbax checkpoints.
"""

__version__ = "0.1.0"
