"""The fixed-width binary record layout every rankjax dataset uses, and its JSON manifest.

A dataset directory holds `manifest.json` and raw little-endian record files; a record is a numpy
structured dtype described field by field in the manifest, so the data is parsed by `np.memmap`,
never executed or unpickled.

Manifest schema (format_version 2; version 1 manifests are still read):
  fields, record_bytes          the record dtype
  splits[name]                  either one file, as in version 1:
                                  {"file", "num_records", "sha256"}
                                or shards, read as one split in shard order:
                                  {"num_records", "shards": [{"file", "num_records", "sha256"}, ...]}
  num_dense, vocab_sizes, hotness and source-specific keys (see the writers).

Checksums: `open_split(..., verify=True)` streams every shard through sha256 and raises DataError
naming a shard whose bytes differ from the manifest. A shard that verified is recorded in
`.verified.json` in the dataset directory with its size, mtime and inode; it is not hashed again
while those stay the same (the quick check make and rsync use: an edit that keeps size and mtime,
within one timestamp tick, goes unnoticed). When the directory is read-only nothing is recorded
and every open verifies again.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

FORMAT = "rankjax-fixed-width"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
VERIFIED_STAMP = ".verified.json"


class DataError(ValueError):
  """A dataset that cannot be read; the message names the file."""


def ctr_record_dtype(num_dense: int, num_sparse: int, num_labels: int = 1) -> np.dtype:
  """Criteo-shaped record: float32 label (label[num_labels] for several), float32 dense[num_dense],
  int32 ids[num_sparse]."""
  label_shape = (num_labels,) if num_labels > 1 else ()
  return np.dtype([("label", "<f4", label_shape), ("dense", "<f4", (num_dense,)), ("cat", "<i4", (num_sparse,))])


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
  """Writes one split's records as a single file; returns its (single-file) manifest entry."""
  path = directory / f"{split}.bin"
  records.tofile(path)
  return {"file": path.name, "num_records": int(records.shape[0]), "sha256": file_sha256(path)}


def _fsync_directory(directory: pathlib.Path) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_manifest(directory: pathlib.Path, dtype: np.dtype, splits: dict[str, Any], **extra: Any) -> dict:
  """Writes the manifest last and atomically: its presence marks the data complete.

  The data files must already be on disk (flushed); the manifest is fsynced before the rename so a
  crash leaves either no manifest or a whole one.
  """
  directory = pathlib.Path(directory)
  manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "fields": dtype_to_fields(dtype),
              "record_bytes": dtype.itemsize, "splits": splits, **extra}
  tmp = directory / (MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    f.write(json.dumps(manifest, indent=2) + "\n")
    f.flush()
    os.fsync(f.fileno())
  tmp.replace(directory / MANIFEST)
  _fsync_directory(directory)
  return manifest


def read_manifest(directory: pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(directory) / MANIFEST
  if not path.is_file():
    raise DataError(f"{path}: no manifest (not a rankjax dataset directory)")
  try:
    manifest = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
  if not isinstance(manifest, dict):
    raise DataError(f"{path}: a manifest is a JSON object, this holds a {type(manifest).__name__}")
  if manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_VERSIONS:
    raise DataError(f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')!r}, "
                    f"expected {FORMAT!r} v{' or v'.join(map(str, READABLE_VERSIONS))}")
  return manifest


def split_shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
  """A split's shards in order, [{"file", "num_records", "sha256"}], from either entry form."""
  entry = manifest["splits"][split]
  return list(entry["shards"]) if "shards" in entry else [entry]


class ShardedRecords:
  """One split's records over its shard memmaps, indexed by global record index.

  `records[indices]` gathers rows (any order; a sorted index array reads each shard in one
  fancy-index read), `records["field"]` is a field of every record, `len(records)` the count.
  """

  def __init__(self, shards: Sequence[np.ndarray], dtype: np.dtype):
    self.shards = list(shards)
    self.dtype = dtype
    self.offsets = np.cumsum([0] + [len(s) for s in self.shards]).astype(np.int64)

  def __len__(self) -> int:
    return int(self.offsets[-1])

  @property
  def shape(self) -> tuple[int]:
    return (len(self),)

  def __getitem__(self, key):
    if isinstance(key, str):
      if len(self.shards) == 1:
        return self.shards[0][key]
      return np.concatenate([s[key] for s in self.shards]) if self.shards else np.empty(0, self.dtype)[key]
    if isinstance(key, (int, np.integer)):
      index = int(key) + (len(self) if key < 0 else 0)
      if not 0 <= index < len(self):
        raise IndexError(f"record {key} out of range for {len(self)} records")
      shard = bisect.bisect_right(self.offsets, index) - 1
      return self.shards[shard][index - self.offsets[shard]]
    if isinstance(key, slice):
      return self.gather(np.arange(*key.indices(len(self))))
    return self.gather(np.asarray(key))

  def gather(self, indices: np.ndarray) -> np.ndarray:
    """Records at integer `indices` (negative counts from the end), as one array."""
    indices = np.asarray(indices, np.int64)
    indices = np.where(indices < 0, indices + len(self), indices)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"record index out of range for {len(self)} records")
    if len(self.shards) == 1:
      return np.asarray(self.shards[0][indices])
    out = np.empty(indices.shape, self.dtype)
    shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
    is_sorted = indices.ndim == 1 and bool(np.all(indices[1:] >= indices[:-1]))
    if is_sorted:  # Each shard's rows are one contiguous run of the output.
      bounds = np.searchsorted(shard_of, np.arange(len(self.shards) + 1))
      for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if hi > lo:
          out[lo:hi] = self.shards[shard][indices[lo:hi] - self.offsets[shard]]
      return out
    for shard in np.unique(shard_of):
      chosen = shard_of == shard
      out[chosen] = self.shards[shard][indices[chosen] - self.offsets[shard]]
    return out

  def gather_field(self, name: str, indices: np.ndarray, width: int | None = None) -> np.ndarray:
    """`self[indices][name]`, with `width` its first `width` entries along the per-record dim 0,
    reading only those bytes of each record (a strided gather from the shards' field views)."""
    indices = np.asarray(indices, np.int64)
    sub = self.dtype.fields[name][0]
    base, shape = sub.subdtype if sub.subdtype else (sub, ())
    out = np.empty((len(indices), *((min(width, shape[0]), *shape[1:]) if width is not None else shape)), base)
    shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
    for shard in np.unique(shard_of):
      chosen = shard_of == shard
      rows = indices[chosen] - self.offsets[shard]
      out[chosen] = self.shards[shard][name][rows] if width is None else self.shards[shard][name][rows, :width]
    return out


def _stamp_key(stat: os.stat_result, sha256: str) -> dict[str, Any]:
  return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino, "sha256": sha256}


def _read_stamp(directory: pathlib.Path) -> dict[str, Any]:
  try:
    stamp = json.loads((directory / VERIFIED_STAMP).read_text())
    return stamp if isinstance(stamp, dict) else {}
  except (OSError, ValueError):
    return {}


def _write_stamp(directory: pathlib.Path, stamp: dict[str, Any]) -> None:
  """Best effort: a read-only directory just means verifying again next time."""
  tmp = directory / f"{VERIFIED_STAMP}.{os.getpid()}.tmp"
  try:
    tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    tmp.replace(directory / VERIFIED_STAMP)
  except OSError:  # Read-only (EROFS, EACCES) or full: nothing is written into the dataset.
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass


def verify_shards(directory: pathlib.Path, shards: Sequence[dict[str, Any]]) -> None:
  """Raises DataError naming the first shard whose sha256 differs from the manifest."""
  directory = pathlib.Path(directory)
  stamp = _read_stamp(directory)
  changed = False
  for shard in shards:
    path = directory / shard["file"]
    stat = path.stat()
    if stamp.get(shard["file"]) == _stamp_key(stat, shard["sha256"]):
      continue
    actual = file_sha256(path)
    if actual != shard["sha256"]:
      raise DataError(f"{path}: sha256 {actual} differs from the manifest's {shard['sha256']} "
                      "(the shard is corrupt or was modified)")
    stamp[shard["file"]] = _stamp_key(stat, shard["sha256"])
    changed = True
  if changed:
    _write_stamp(directory, stamp)


def open_split(directory: pathlib.Path, manifest: dict[str, Any], split: str, verify: bool = True) -> ShardedRecords:
  """Memory-maps one split's shards, checking each size (and with `verify`, its sha256)."""
  directory = pathlib.Path(directory)
  if split not in manifest["splits"]:
    raise DataError(f"{directory / MANIFEST}: no split {split!r} (has {sorted(manifest['splits'])})")
  dtype = fields_to_dtype(manifest["fields"])
  shards = split_shards(manifest, split)
  for shard in shards:
    name = pathlib.PurePosixPath(str(shard["file"]))
    if name.is_absolute() or ".." in name.parts or not name.parts:
      raise DataError(f"{directory / MANIFEST}: shard path {shard['file']!r} of split {split!r} is not inside "
                      "the dataset directory (a manifest names its shards relative to it)")
    path = directory / shard["file"]
    expected = shard["num_records"] * dtype.itemsize
    if not path.is_file() or path.stat().st_size != expected:
      size = path.stat().st_size if path.is_file() else "missing"
      raise DataError(f"{path}: size {size} bytes, manifest says {shard['num_records']} records "
                      f"x {dtype.itemsize} B = {expected}")
  total = manifest["splits"][split]["num_records"]
  if sum(s["num_records"] for s in shards) != total:
    raise DataError(f"{directory / MANIFEST}: split {split!r} has {total} records but its shards sum to "
                    f"{sum(s['num_records'] for s in shards)}")
  if verify:
    verify_shards(directory, shards)
  # A zero-length file cannot be memory-mapped; an empty shard contributes no records.
  return ShardedRecords([np.memmap(directory / s["file"], dtype=dtype, mode="r", shape=(s["num_records"],))
                         if s["num_records"] else np.empty(0, dtype) for s in shards], dtype)
