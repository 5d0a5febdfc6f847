"""Serving weights on disk: one tensorstore zarr array per weight, float32, bfloat16 or int8 rows
with a float32 scale per row. Read back with tensorstore alone (no JAX, no rankjax), so a
key-value serving tier can load embedding rows directly.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorstore as ts

QUANTIZE = ("none", "bf16", "int8")  # How `rankjax export --quantize` stores the embedding tables.


def _spec(path: pathlib.Path) -> dict:
  return {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)}}


def write(path: pathlib.Path, array: np.ndarray, stored_as: str = "none") -> dict:
  """Writes `array` at `path` (a zarr directory) as `stored_as`; returns its manifest entry."""
  array = np.asarray(array)
  if stored_as == "int8":
    if array.ndim != 2:
      raise ValueError(f"int8 storage is per row of a 2-d table, got shape {array.shape}")
    scale = np.abs(array).max(axis=1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    codes = np.clip(np.rint(array / safe), -127, 127).astype(np.int8)
    _write_array(path, codes)
    _write_array(path.with_name(path.name + "_scale"), scale.astype(np.float32))
  elif stored_as == "bf16":
    _write_array(path, array.astype(ts.bfloat16.numpy_dtype))
  elif stored_as == "none":
    _write_array(path, array)
  else:
    raise ValueError(f"storage {stored_as!r} not in {QUANTIZE}")
  return {"path": path.name, "shape": list(array.shape), "dtype": str(array.dtype), "stored_as": stored_as}


def _write_array(path: pathlib.Path, array: np.ndarray) -> None:
  store = ts.open(_spec(path), create=True, delete_existing=True, dtype=ts.dtype(array.dtype.name),
                  shape=array.shape).result()
  store.write(array).result()


def read(directory: pathlib.Path, entry: dict) -> np.ndarray:
  """A weight as written by `write`, back in its exported dtype (int8 rows times their scale)."""
  path = pathlib.Path(directory) / entry["path"]
  stored = ts.open(_spec(path), open=True).result().read().result()
  if entry["stored_as"] == "int8":
    scale = ts.open(_spec(path.with_name(path.name + "_scale")), open=True).result().read().result()
    stored = stored.astype(np.float32) * scale[:, None]
  array = np.asarray(stored).astype(entry["dtype"])
  if list(array.shape) != entry["shape"]:
    raise ValueError(f"{path}: shape {array.shape}, the manifest says {entry['shape']}")
  return array
