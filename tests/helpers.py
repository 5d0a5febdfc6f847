"""Shared test helpers."""

import pathlib

from rankjax.config import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "configs" / "tiny.py")


def tiny_config(**train):
  """configs/tiny.py without the progress bar; `train` overrides config.train fields."""
  c = load_config_file(TINY_CONFIG)
  c.train.progress_bar = False
  for k, v in train.items():
    c.train[k] = v
  return c
