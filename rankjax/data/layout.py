"""The fixed-width binary record layout every rankjax dataset uses, and its JSON manifest.

A dataset directory holds `manifest.json` and one raw little-endian file per split; a record is
a numpy structured dtype described field by field in the manifest, so the data is parsed by
`np.memmap`, never executed or unpickled.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import numpy as np

FORMAT = "rankjax-fixed-width"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class DataError(ValueError):
  """A dataset that cannot be read; the message names the file."""


def ctr_record_dtype(num_dense: int, num_sparse: int) -> np.dtype:
  """Criteo-shaped record: float32 label, float32 dense[num_dense], int32 ids[num_sparse]."""
  return np.dtype([("label", "<f4"), ("dense", "<f4", (num_dense,)), ("cat", "<i4", (num_sparse,))])


def dtype_to_fields(dtype: np.dtype) -> list[dict[str, Any]]:
  out = []
  for name in dtype.names:
    sub = dtype.fields[name][0]
    base, shape = (sub.subdtype if sub.subdtype else (sub, ()))
    out.append({"name": name, "dtype": base.str, "shape": list(shape)})
  return out


def fields_to_dtype(fields: list[dict[str, Any]]) -> np.dtype:
  return np.dtype([(f["name"], f["dtype"], tuple(f["shape"])) for f in fields])


def file_sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def write_split(directory: pathlib.Path, split: str, records: np.ndarray) -> dict[str, Any]:
  """Writes one split's records; returns its manifest entry."""
  path = directory / f"{split}.bin"
  records.tofile(path)
  return {"file": path.name, "num_records": int(records.shape[0]), "sha256": file_sha256(path)}


def write_manifest(directory: pathlib.Path, dtype: np.dtype, splits: dict[str, Any], **extra: Any) -> dict:
  manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "fields": dtype_to_fields(dtype),
              "record_bytes": dtype.itemsize, "splits": splits, **extra}
  tmp = directory / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=2) + "\n")
  tmp.replace(directory / MANIFEST)  # The manifest appears last and atomically: it marks the data complete.
  return manifest


def read_manifest(directory: pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(directory) / MANIFEST
  if not path.is_file():
    raise DataError(f"{path}: no manifest (not a rankjax dataset directory)")
  try:
    manifest = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
  if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')!r}, "
                    f"expected {FORMAT!r} v{FORMAT_VERSION}")
  return manifest


def open_split(directory: pathlib.Path, manifest: dict[str, Any], split: str) -> np.memmap:
  """Memory-maps one split, checking its size against the manifest."""
  if split not in manifest["splits"]:
    raise DataError(f"{pathlib.Path(directory) / MANIFEST}: no split {split!r} (has {sorted(manifest['splits'])})")
  entry = manifest["splits"][split]
  dtype = fields_to_dtype(manifest["fields"])
  path = pathlib.Path(directory) / entry["file"]
  expected = entry["num_records"] * dtype.itemsize
  if not path.is_file() or path.stat().st_size != expected:
    size = path.stat().st_size if path.is_file() else "missing"
    raise DataError(f"{path}: size {size} bytes, manifest says {entry['num_records']} records "
                    f"x {dtype.itemsize} B = {expected}")
  return np.memmap(path, dtype=dtype, mode="r", shape=(entry["num_records"],))
