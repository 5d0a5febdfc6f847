"""Scores inputs with a `rankjax export` artifact using jax, numpy and tensorstore only (no
rankjax): what any serving process with a JAX runtime does with the artifact.

  python scripts/score_exported.py --model DIR --inputs inputs.npz --output scores.npz

inputs.npz holds one array per input named in DIR/serving.json ("dense" [n, num_dense] float32
and "cat" [n, slots] int32 for click models); the batch is padded to the artifact's
batch_multiple. scores.npz gets one array per head.
"""

import argparse
import json
import pathlib
import sys

import jax
import numpy as np
import tensorstore as ts


def read_weight(directory: pathlib.Path, entry: dict) -> np.ndarray:
  def open_array(path):
    return ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)}}, open=True).result()
  path = directory / entry["path"]
  values = open_array(path).read().result()
  if entry["stored_as"] == "int8":  # int8 rows times a float32 scale per row.
    values = values.astype(np.float32) * open_array(f"{path}_scale").read().result()[:, None]
  return np.asarray(values).astype(entry["dtype"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--inputs", required=True)
  parser.add_argument("--output", required=True)
  args = parser.parse_args()
  model = pathlib.Path(args.model)
  manifest = json.loads((model / "serving.json").read_text())
  exported = jax.export.deserialize(bytearray((model / manifest["function"]).read_bytes()))
  weights = [read_weight(model, entry) for entry in manifest["weights"]]
  with np.load(args.inputs, allow_pickle=False) as given:
    inputs = {name: given[name].astype(spec["dtype"]) for name, spec in manifest["inputs"].items()}
  n = len(next(iter(inputs.values())))
  multiple = manifest["batch_multiple"]
  padded = -(-n // multiple) * multiple
  inputs = {k: np.concatenate([v, np.zeros((padded - n, *v.shape[1:]), v.dtype)]) for k, v in inputs.items()}
  scores = exported.call(weights, inputs)
  np.savez(args.output, **{head: np.asarray(scores[head])[:n] for head in manifest["heads"]})
  loaded = sorted(m for m in ("jax", "numpy", "tensorstore", "rankjax", "flax", "orbax") if m in sys.modules)
  print("modules:", " ".join(loaded))


if __name__ == "__main__":
  main()
