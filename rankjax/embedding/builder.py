"""Builds the embedding engine from config: defaults, per-table overrides, the planner."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections
import numpy as np

from rankjax.dense_optim import learning_rate_schedule
from rankjax.embedding import optimizers, planner
from rankjax.errors import ConfigError
from rankjax.embedding.tables import (IDENTITY_FIELDS, EmbeddingTableConfig, FeatureSlots, check_raw_id_table,
                                     raw_id_defaults, with_rows)
from rankjax.embedding.engine import EmbeddingEngine
from rankjax.partitioner import HOST_AXIS, Partitioner


# An override's value type, by table setting ("str | None" fields take the text).
_FIELD_TYPES = {f.name: {"int": int, "float": float}.get(str(f.type), str)
                for f in dataclasses.fields(EmbeddingTableConfig)}


def configured_tables(config: ml_collections.ConfigDict, tables: Sequence[EmbeddingTableConfig],
                      num_shards: int, aliases: dict[str, str] | None = None) -> list[EmbeddingTableConfig]:
  """Tables with config defaults, `embedding.overrides` and (for sharding "auto") the planner
  applied. An override may name a table or, through `aliases`, the data's column of its feature."""
  e = config.embedding
  by_name = {t.name: t for t in tables}
  aliases = aliases or {}
  overrides: dict[str, dict] = {}
  for entry in e.overrides:
    name, _, rest = entry.partition(":")
    key, _, value = rest.partition("=")
    name = aliases.get(name, name)
    if name not in by_name:
      columns = f"; columns: {', '.join(aliases)}" if aliases else ""
      raise ConfigError("embedding.overrides", f"{entry!r}: no table {name!r} (tables: {', '.join(by_name)}{columns})")
    if key not in _FIELD_TYPES or key in IDENTITY_FIELDS:
      raise ConfigError("embedding.overrides", f"{entry!r}: {key!r} is not a table setting one can override "
                        f"({', '.join(k for k in _FIELD_TYPES if k not in IDENTITY_FIELDS)})")
    try:
      overrides.setdefault(name, {})[key] = _FIELD_TYPES[key](value)
    except ValueError:
      raise ConfigError("embedding.overrides", f"{entry!r}: {value!r} is not a{'n' if _FIELD_TYPES[key] is int else ''} "
                        f"{_FIELD_TYPES[key].__name__}") from None
  out = []
  for t in tables:
    t = dataclasses.replace(t, dtype=e.dtype if t.dtype == "float32" else t.dtype)
    if e.sharding != "auto":
      t = dataclasses.replace(t, sharding=t.sharding or e.sharding)
    try:
      # Raw 64-bit ids: dynamic, unless the overrides make the table hashed.
      t = dataclasses.replace(raw_id_defaults(t, overrides.get(t.name, {})), **overrides.get(t.name, {}))
      check_raw_id_table(t)
      out.append(t)
    except ValueError as err:
      raise ConfigError("embedding.overrides", str(err)) from None
  # Rows the tables will have: a hashed table's `rows`, a dynamic table's capacity + its default row.
  out = [with_rows(t) for t in out]
  if e.sharding == "auto":
    chosen = planner.plan(out, num_shards, optimizer=e.optimizer, num_hosts=table_hosts(config, num_shards)
                          ).sharding_of()
    out = [dataclasses.replace(t, sharding=chosen[t.name]) for t in out]
  return out


def table_hosts(config: ml_collections.ConfigDict, num_shards: int) -> int:
  """The size of the mesh's host axis where it is the first axis the tables are split over
  (mesh.rules' table_rows), else 1: the hosts table_row_wise places tables on."""
  m = config.mesh
  sizes = dict(zip(m.axes, m.shape))
  table_axes = [a for a in dict((logical, tuple(axes)) for logical, axes in m.rules).get("table_rows", ())
                if sizes.get(a, 1) != 1]  # The engine drops axes of size 1.
  if not table_axes or table_axes[0] != HOST_AXIS:  # table_row_wise needs it first (the engine refuses it).
    return 1
  if sizes[HOST_AXIS] != -1:
    return int(sizes[HOST_AXIS])
  others = int(np.prod([sizes[a] for a in table_axes if a != HOST_AXIS]))
  return max(1, num_shards // max(others, 1))


def optimizer_args(config: ml_collections.ConfigDict) -> dict[str, dict]:
  """Hyperparameters from `config.embedding` for every sparse optimizer, by the names it accepts."""
  e = config.embedding
  args = {name: {f.name: e[f.name] for f in dataclasses.fields(optimizers.optimizer_class(name)) if f.name in e}
          for name in optimizers.NAMES}
  if e.lr_schedule != "constant" or e.warmup_steps:
    schedule = learning_rate_schedule(1.0, e.lr_schedule, e.warmup_steps, config.train.steps)
    for name in optimizers.NAMES:
      if "schedule" in {f.name for f in dataclasses.fields(optimizers.optimizer_class(name))}:
        args[name]["schedule"] = schedule
  return args


def build_engine(config: ml_collections.ConfigDict, tables: Sequence[EmbeddingTableConfig], slots: FeatureSlots,
                 partitioner: Partitioner, fold_ids: bool = False, aliases: dict[str, str] | None = None
                 ) -> EmbeddingEngine:
  tables = configured_tables(config, tables, partitioner.axis_size("table_rows"), aliases)
  scheduled = config.embedding.lr_schedule != "constant" or config.embedding.warmup_steps
  ftrl = [t.name for t in tables if (t.optimizer or config.embedding.optimizer) == "ftrl"]
  if scheduled and ftrl:
    raise ConfigError("embedding.lr_schedule", f"table {ftrl[0]!r} uses ftrl, whose rate is part of its accumulator "
                      "rule: keep the schedule constant, or another optimizer for it")
  try:
    return EmbeddingEngine(tables, slots, partitioner.mesh, batch_axes=partitioner.rules.get("batch", ()),
                           shard_axes=partitioner.rules.get("table_rows", ()),
                           default_optimizer=config.embedding.optimizer, optimizer_args=optimizer_args(config),
                           fold_ids=fold_ids, exchange_capacity=config.embedding.exchange_capacity,
                           host_exchange_capacity=config.embedding.host_exchange_capacity)
  except ValueError as err:
    raise ConfigError("embedding", str(err)) from None
