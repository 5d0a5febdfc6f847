"""A serving artifact loaded for scoring (`rankjax predict`, `serve`, `bench serve`).

`ServingModel` reads `serving.json`, deserializes the exported function and places the weights
on one device once; `score` checks a request's inputs against the manifest (a ValueError naming
the input), pads the batch to a power of two times the artifact's batch_multiple (so a stream of
batch sizes compiles a handful of times, not once per size) and returns each head's scores for
the real rows.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from rankjax.export import weights as weights_lib
from rankjax.partitioner import jit

FORMAT = "rankjax-serving/1"
MANIFEST = "serving.json"


class ServingModel:
  """An exported ranker on one device."""

  def __init__(self, directory: str | pathlib.Path, device: jax.Device | None = None):
    self.directory = pathlib.Path(directory)
    path = self.directory / MANIFEST
    if not path.is_file():
      raise ValueError(f"{path}: no serving manifest (is --model a directory written by `rankjax export`?)")
    self.manifest = json.loads(path.read_text())
    if self.manifest.get("format") != FORMAT:
      raise ValueError(f"{path}: format {self.manifest.get('format')!r}, this rankjax reads {FORMAT!r}")
    self.exported = jax.export.deserialize(bytearray((self.directory / self.manifest["function"]).read_bytes()))
    self.device = device or jax.devices()[0]
    self.weights = [jax.device_put(weights_lib.read(self.directory, e), self.device) for e in self.manifest["weights"]]
    self.heads: list[str] = self.manifest["heads"]
    self.inputs: dict[str, dict[str, Any]] = self.manifest["inputs"]
    self._call = jit(self.exported.call)
    self.batch_multiple: int = self.manifest.get("batch_multiple", 1)

  def aligned(self, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the artifact's blocks: consecutive calls over a
    split then put each record at the place in its block the trainer's device did, which is what
    makes predict's scores equal the trainer's bit for bit."""
    return -(-batch_size // self.batch_multiple) * self.batch_multiple

  def check(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The request's inputs as arrays of the manifest's dtypes and shapes; ValueError naming the
    first input that is unknown, missing, of the wrong type or shape, or of unequal batch."""
    unknown = sorted(set(inputs) - set(self.inputs))
    if unknown:
      raise ValueError(f"unknown input {unknown[0]!r} (the model takes {sorted(self.inputs)})")
    out, sizes = {}, {}
    for name, spec in self.inputs.items():
      if name not in inputs:
        raise ValueError(f"missing input {name!r} (the model takes {sorted(self.inputs)})")
      try:
        x = np.asarray(inputs[name])
      except (ValueError, TypeError) as e:
        raise ValueError(f"input {name!r}: not a {len(spec['shape'])}-d array ({e})") from None
      kind = np.dtype(spec["dtype"]).kind
      allowed = {"i", "u"} if kind in "iu" else {"i", "u", "f", "b"}  # Float inputs take true/false (a mask).
      if x.dtype.kind not in allowed:
        raise ValueError(f"input {name!r}: {spec['dtype']} values expected, got {x.dtype} "
                         f"({'integer ids' if kind in 'iu' else 'numbers'})")
      if x.ndim != len(spec["shape"]) or any(isinstance(d, int) and d != s for d, s in zip(spec["shape"], x.shape)):
        raise ValueError(f"input {name!r}: shape {list(x.shape)}, expected {spec['shape']}")
      for dim, size in zip(spec["shape"], x.shape):  # Named dims ("batch", "list") agree across inputs.
        if isinstance(dim, str):
          if dim != "batch" and size < 1:
            raise ValueError(f"input {name!r}: its {dim} dimension is empty")
          if sizes.setdefault(dim, (size, name))[0] != size:
            raise ValueError(f"input {name!r}: {dim} {size}, input {sizes[dim][1]!r} has {sizes[dim][0]}")
      if kind in "iu" and "id_bounds" in spec and x.size:
        bounds = np.asarray(spec["id_bounds"])
        bad = (bounds > 0) & ((x < -1) | (x >= bounds))  # 0: a raw 64-bit id's word, any value
        if bad.any():
          where = tuple(int(i) for i in np.argwhere(bad)[0])
          document = f" document {where[1]}" if len(where) == 3 else ""  # A list's [batch, list, column].
          raise ValueError(f"input {name!r}: row {where[0]}{document} column {where[-1]}: id {int(x[where])} "
                           f"outside [0, {int(bounds[where[-1]])}) and not -1 (missing)")
      if kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"input {name!r}: values must be finite")
      out[name] = x.astype(spec["dtype"])
    return out

  def score(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Head -> scores of the batch's rows (probabilities for click heads)."""
    arrays = self.check(inputs)
    n = len(next(iter(arrays.values())))
    multiple = self.batch_multiple
    arrays = padded(arrays, multiple * max(1, 1 << (-(-n // multiple) - 1).bit_length()))
    scores = self._call(self.weights, jax.device_put(arrays, self.device))
    return {h: np.asarray(scores[h])[:n] for h in self.heads}


def padded(arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """The arrays with zero rows appended up to `rows` (rows are scored independently)."""
  n = len(next(iter(arrays.values())))
  if n == rows:
    return arrays
  return {k: np.concatenate([v, np.zeros((rows - n, *v.shape[1:]), v.dtype)]) for k, v in arrays.items()}


def read_batches(records, indices: np.ndarray, spec, fields: tuple[str, ...], batch_size: int
                 ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """(each record's index in the split, the `fields` of the records) in order, `batch_size` at a time."""
  for start in range(0, len(indices), batch_size):
    positions = np.arange(start, min(start + batch_size, len(indices)))
    batch = spec.read(records[positions])
    yield indices[positions], {k: batch[k] for k in fields}
