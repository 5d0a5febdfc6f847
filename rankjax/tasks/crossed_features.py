"""Crossed categorical features (Wide & Deep's cross-product transformations), computed on device.

A model declares crosses of single-id features, `(("cat_0", "cat_1"), ...)`; the task hashes each
pair of ids into `buckets` rows (a fixed 32-bit mix, the same on every device and run) and appends
the crossed ids as extra features the engine looks up like any other. A pair with a padding id
(-1) crosses to padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from rankjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Cross:
  name: str  # "cat_0_x_cat_1"
  slots: tuple[int, int]  # The crossed features' id slots in the batch.
  buckets: int


def cross_name(features: Sequence[str]) -> str:
  return "_x_".join(features)


def plan_crosses(crosses: Sequence[Sequence[str]], buckets: int, names: Sequence[str],
                 hotness: Sequence[int]) -> tuple[Cross, ...]:
  """Resolves crossed feature names to batch slots; ConfigError naming model.crosses otherwise."""
  start = {n: int(sum(hotness[:i])) for i, n in enumerate(names)}
  single = {n for n, h in zip(names, hotness) if h == 1}
  planned = []
  for pair in crosses:
    if len(pair) != 2 or any(f not in single for f in pair):
      raise ConfigError("model.crosses", f"each cross is two single-id features of {tuple(sorted(single))}, "
                        f"got {tuple(pair)}")
    planned.append(Cross(cross_name(pair), (start[pair[0]], start[pair[1]]), int(buckets)))
  return tuple(planned)


def _mix(h: jax.Array) -> jax.Array:
  """murmur3's 32-bit finaliser."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def crossed_ids(ids_bs: jax.Array, crosses: Sequence[Cross]) -> jax.Array:
  """[B, len(crosses)] int32 crossed ids in [0, buckets), -1 where either id is padding."""
  columns = []
  for cross in crosses:
    a, b = ids_bs[:, cross.slots[0]], ids_bs[:, cross.slots[1]]
    h = _mix(_mix(a.astype(jnp.uint32) + jnp.uint32(0x9E3779B9)) ^ b.astype(jnp.uint32))
    row = (h % jnp.uint32(cross.buckets)).astype(jnp.int32)
    columns.append(jnp.where((a >= 0) & (b >= 0), row, -1))
  return jnp.stack(columns, axis=1)
