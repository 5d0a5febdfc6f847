"""rankjax: a JAX/XLA trainer for industrial ranking models.

Sharded sparse embeddings, a Flax NNX model zoo, Grain input, Orbax checkpoints.
"""

import os as _os

__version__ = "0.1.0"

# Installed, the model zoo is rankjax/models. In a source checkout models/ sits beside rankjax/
# (and `python -m rankjax...` from the checkout imports this copy): serve it as rankjax.models too.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (not _os.path.isdir(_os.path.join(__path__[0], "models"))
    and _os.path.isfile(_os.path.join(_checkout, "models", "__init__.py"))):
  __path__.append(_checkout)
