"""Errors a user can act on, raised anywhere in rankjax and reported by the CLI as one line."""

from __future__ import annotations


class ConfigError(ValueError):
  """A config problem, always naming the offending key."""

  def __init__(self, key: str, message: str | None = None):
    if message is None:  # Re-raised by ml_collections with the formatted text only.
      self.key, text = None, key
    else:
      self.key, text = key, f"config key '{key}': {message}"
    super().__init__(text)
