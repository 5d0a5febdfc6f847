"""The mesh and the partitioner: the one place that maps logical axes to mesh axes and calls jax.jit.

Models and the train loop name logical axes ("batch", "table_rows"); the rules from config say
which mesh axes they shard over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


# The mesh axis whose indices are hosts (processes): table_row_wise keeps each table on one.
HOST_AXIS = "host"


def make_mesh(axes: Sequence[str], shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `devices` (default: all); one size of -1 takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if -1 in shape:
    fixed = int(np.prod([s for s in shape if s != -1]))
    shape[shape.index(-1)] = len(devices) // fixed
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} does not match {len(devices)} devices")
  mesh = jax.make_mesh(tuple(shape), tuple(axes), devices=devices, axis_types=(AxisType.Auto,) * len(axes))
  if HOST_AXIS in axes and jax.process_count() > 1:
    position = list(axes).index(HOST_AXIS)
    for h in range(mesh.shape[HOST_AXIS]):
      processes = sorted({d.process_index for d in np.take(mesh.devices, h, axis=position).ravel()})
      if len(processes) != 1:
        raise ValueError(f"mesh axis {HOST_AXIS!r}: index {h} holds devices of processes {processes}; each index of "
                         f"it must be one process's devices (mesh.shape: {HOST_AXIS} = the number of processes)")
  return mesh


def jit(fn: Callable, **options: Any) -> Callable:
  """jax.jit, called from here only: every compiled function in rankjax passes through this module
  (options: in_shardings, out_shardings, donate_argnums)."""
  return jax.jit(fn, **options)


class Partitioner:
  """Owns the mesh, the logical sharding rules and every jax.jit in rankjax."""

  def __init__(self, mesh: Mesh, rules: Sequence[tuple[str, Sequence[str]]]):
    self.mesh = mesh
    self.rules = {logical: tuple(mesh_axes) for logical, mesh_axes in rules}

  @classmethod
  def from_config(cls, config, devices: Sequence[jax.Device] | None = None) -> "Partitioner":
    return cls(make_mesh(config.mesh.axes, config.mesh.shape, devices), config.mesh.rules)

  def axis_size(self, logical: str) -> int:
    return int(np.prod([self.mesh.shape[a] for a in self.rules.get(logical, ())]))

  def spec(self, *logical: str | None) -> P:
    parts = []
    for name in logical:
      axes = self.rules.get(name, ()) if name is not None else ()
      axes = tuple(a for a in axes if self.mesh.shape[a] > 1) or None
      parts.append(axes[0] if axes and len(axes) == 1 else axes)
    return P(*parts)

  def sharding(self, *logical: str | None) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(*logical))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def jit(self, fn: Callable, *, in_shardings: Any, out_shardings: Any,
          donate_argnums: Sequence[int] = ()) -> Callable:
    return jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=tuple(donate_argnums))

  def place_batch(self, local_batch: dict[str, np.ndarray],
                  shardings: dict[str, NamedSharding] | None = None) -> dict[str, jax.Array]:
    """This process's share of a batch -> global arrays, sharded by `shardings` (a BatchSpec's;
    default: dim 0 over `batch`)."""
    out = {}
    for name, value in local_batch.items():
      sharding = (shardings or {}).get(name) or self.sharding("batch", *([None] * (value.ndim - 1)))
      out[name] = jax.make_array_from_process_local_data(sharding, value)
    return out
