"""The batch description (`BatchSpec`): the one statement of what a batch holds.

A task declares its BatchSpec; the Grain pipeline reads records into it, the partitioner shards
it, and `profile`, `plan` and `bench` compile the step from its abstract shapes. A field is
[batch, *shape] of one dtype, read from a record field (optionally some of its label columns);
dim 0 is sharded over the logical axis "batch", the others by the field's `axes`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from rankjax.data.layout import DataError


@dataclasses.dataclass(frozen=True)
class Field:
  """One array of a batch.

  name: the key in the batch dict.
  dtype: numpy dtype name of the batch array (records are cast to it).
  shape: per-example shape (the batch dim excluded).
  source: the record field it is read from ("" = `name`).
  column: read one column of a record field with a trailing dim (a multi-label table) and drop
    that dim; on a field without one, column must be 0.
  columns: read these columns of the record field's trailing dim (kept as a dim).
  axes: logical sharding axes of the per-example dims (None = not sharded); default none.
  values: what a valid value is, checked when a split is opened (rankjax.data.validation):
    "binary" (0 or 1), "finite", "nonnegative" (finite and >= 0), or "" (anything).
  id_bounds: for id fields, column c holds -1 (padding) or an id in [0, id_bounds[c]); a bound of 0
    marks a word of a raw 64-bit id (any int32: not checked).
  list_axis: per-example dim 0 is a query list's documents (padded; the `mask` field marks them):
    length-bucketed batches (rankjax.data.pipeline) cut it to the batch's bucket width.
  """
  name: str
  dtype: str
  shape: tuple[int, ...] = ()
  source: str = ""
  column: int | None = None
  columns: tuple[int, ...] | None = None
  axes: tuple[str | None, ...] | None = None
  values: str = ""
  id_bounds: tuple[int, ...] | None = None
  list_axis: bool = False

  @property
  def record_field(self) -> str:
    return self.source or self.name

  @property
  def logical_axes(self) -> tuple[str | None, ...]:
    return ("batch", *(self.axes if self.axes is not None else (None,) * len(self.shape)))


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """The fields of a batch, in order."""
  fields: tuple[Field, ...]

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(f.name for f in self.fields)

  def __getitem__(self, name: str) -> Field:
    for f in self.fields:
      if f.name == name:
        return f
    raise KeyError(name)

  def with_weight(self) -> BatchSpec:
    """The eval batch: these fields plus `weight` [batch] float32 (0 marks padding)."""
    return BatchSpec((*self.fields, Field("weight", "float32")))

  @classmethod
  def of_records(cls, dtype: np.dtype) -> BatchSpec:
    """Every record field as stored (the data layer's default view)."""
    fields = []
    for name in dtype.names:
      sub = dtype.fields[name][0]
      base, shape = sub.subdtype if sub.subdtype else (sub, ())
      fields.append(Field(name, base.name, tuple(shape)))
    return cls(tuple(fields))

  def check(self, dtype: np.dtype, where: str) -> None:
    """Raises DataError naming the field when records of `dtype` cannot fill this batch."""
    for f in self.fields:
      if f.name == "weight" and f.record_field not in dtype.names:
        continue  # Added by the eval reader.
      if f.record_field not in dtype.names:
        raise DataError(f"{where}: records have no field {f.record_field!r} (fields: {', '.join(dtype.names)}) "
                        f"for batch field {f.name!r}")
      sub = dtype.fields[f.record_field][0]
      stored = tuple(sub.shape)
      if f.column is not None:
        count = stored[-1] if stored else 1
        if not 0 <= f.column < count:
          what = "label_index" if f.name == "label" else f"column of {f.name!r}"
          raise DataError(f"{what} {f.column} is out of range: the records have {count} {f.record_field}(s)")
        stored = stored[:-1]
      if f.columns is not None:
        count = stored[-1] if stored else 1
        bad = [c for c in f.columns if not 0 <= c < count]
        if bad:
          raise DataError(f"{where}: columns {bad} of {f.record_field!r} are out of range: the records have {count}")
        stored = (*stored[:-1], len(f.columns))
      if stored != tuple(f.shape):
        raise DataError(f"{where}: record field {f.record_field!r} has per-record shape {stored}, "
                        f"batch field {f.name!r} needs {tuple(f.shape)}")

  def read(self, records: np.ndarray) -> dict[str, np.ndarray]:
    """Structured records [n] -> {name: [n, *shape] array}, contiguous (no copy when nothing changes)."""
    return {f.name: self._columns(f, records[f.record_field]) for f in self.fields
            if f.record_field in records.dtype.names}  # `weight`: the eval reader sets it.

  def read_lists(self, records, rows: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """`read(records[rows])` with every list-axis field cut to its first `width` documents (padding
    only, when `width` is at least the longest list), reading only those bytes of each record from
    the shards (`records`: layout.ShardedRecords or validation.SelectedRecords)."""
    return {f.name: self._columns(f, records.gather_field(f.record_field, rows, width if f.list_axis else None))
            for f in self.fields if f.record_field in records.dtype.names}

  @staticmethod
  def _columns(f: Field, x: np.ndarray) -> np.ndarray:
    """A record field's values [n, ...] as batch field `f` (its label column(s), its dtype)."""
    if f.column is not None and x.ndim > 1:
      x = x[:, f.column]
    elif f.columns is not None:
      x = x.reshape(len(x), -1)[:, list(f.columns)]
    return np.ascontiguousarray(x, dtype=f.dtype)

  @property
  def has_lists(self) -> bool:
    """Whether the batch holds padded query lists (fields with a list axis and their `mask`)."""
    return any(f.list_axis for f in self.fields)

  def shardings(self, partitioner) -> dict[str, jax.sharding.NamedSharding]:
    return {f.name: partitioner.sharding(*f.logical_axes) for f in self.fields}

  def abstract(self, batch_size: int, partitioner) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes, dtypes and shardings of a global batch, for compiling without data."""
    shardings = self.shardings(partitioner)
    return {f.name: jax.ShapeDtypeStruct((batch_size, *f.shape), np.dtype(f.dtype), sharding=shardings[f.name])
            for f in self.fields}


