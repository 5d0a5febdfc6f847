"""What a checkpoint must match before it is trusted: a digest of every array, and a fingerprint
of what the state was trained on.

The digest of an array is two position-weighted sums of its bits modulo 2**32, computed on the
devices in one jitted pass: independent of sharding and mesh (modular sums do not depend on the
order of addition), a few bytes to the host, and certain to change when any single byte changes
(a byte's change times an odd weight is never 0 modulo 2**32). The fingerprint names the data
(the manifest's fields, vocabularies, record counts and shard checksums, or the synthetic spec)
and the config sections that shape the state (model, task, embedding tables); a resume onto
something else is refused naming the first difference.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rankjax import partitioner
from rankjax.data import pipeline
from rankjax.embedding import dynamic as dynamic_lib
from rankjax.errors import ConfigError


class CorruptCheckpoint(RuntimeError):
  """A checkpoint whose arrays differ from the digests recorded when it was saved."""


def _leaf_digest(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:  # The raw bits, widened to uint32 (a 64-bit value becomes two words).
    width = x.dtype.itemsize * 8
    bits = jax.lax.bitcast_convert_type(x, {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint32}[width])
  bits = bits.reshape(-1).astype(jnp.uint32)
  index = jax.lax.iota(jnp.uint32, bits.size)
  first = jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)
  second = jnp.sum((bits ^ (index * jnp.uint32(0x9E3779B9))) * jnp.uint32(0x85EBCA6B), dtype=jnp.uint32)
  return jnp.stack([first, second])


# One compiled pass over every array; compiled once per state structure (jit's cache).
_digest_all = partitioner.jit(lambda xs: [_leaf_digest(x) for x in xs])


def digests(state: Any) -> dict[str, str]:
  """Leaf path -> hex digest of every array of `state` (sharding-independent)."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  if not leaves:
    return {}
  values = _digest_all([x for _, x in leaves])
  values = jax.device_get(values)
  return {jax.tree_util.keystr(path): f"{int(v[0]):08x}{int(v[1]):08x}" for (path, _), v in zip(leaves, values)}


def verify(state: Any, recorded: dict[str, str], step: int) -> None:
  """Raises CorruptCheckpoint naming the first array whose digest differs (or is missing)."""
  actual = digests(state)
  for name, digest in recorded.items():
    if actual.get(name) != digest:
      raise CorruptCheckpoint(f"checkpoint step {step}: array {name} does not match the digest saved with it")
  missing = sorted(set(actual) - set(recorded))
  if missing:
    raise CorruptCheckpoint(f"checkpoint step {step}: no digest recorded for {missing[0]}")


# Table overrides that decide which id owns which row: a dynamic table's map, a hashed table's
# rows, a quotient-remainder split. Re-laying out cannot carry rows across a change of these.
ROW_KEYS = ("kind", "capacity", "admit_after", "eviction", "decay", "ttl", "map_shards", "rows", "qr_buckets")


def fingerprint(config: ml_collections.ConfigDict, manifest: dict, state_shapes: Any) -> dict[str, Any]:
  """What the state was trained on (JSON-able): data identity, the shaping config, state shapes."""
  if manifest.get("source", {}).get("kind") == "synthetic":
    # Without num_validation: those records are drawn after the train and eval ones, so their
    # count changes nothing a checkpoint was trained on.
    spec = {k: v for k, v in config.data.synthetic.to_dict().items() if k != "num_validation"}
    data = {"data.synthetic": spec, "data.row_scale": config.data.row_scale}
  else:
    data = {"data.path": {"fields": manifest.get("fields"), "vocab_sizes": manifest.get("vocab_sizes"),
                          "splits": manifest.get("splits")}}
  held_out = pipeline.holdout_of(config.data, manifest)  # Records held out: not trained on.
  if held_out is not None:
    data["data.validation"] = {"fraction": held_out.fraction, "order": held_out.order, "seed": held_out.seed}
  shapes = {jax.tree_util.keystr(p): [list(x.shape), str(x.dtype)]
            for p, x in jax.tree_util.tree_flatten_with_path(state_shapes)[0]}
  # Per table and setting, the value that wins (the last override), as written.
  dynamic = {}
  for o in config.embedding.overrides:
    table, _, rest = o.partition(":")
    key, _, value = rest.partition("=")
    if key in ROW_KEYS:
      dynamic[f"{table}:{key}"] = value
  # Maps exist where an override makes a table dynamic, or on raw 64-bit ids (dynamic by default).
  has_maps = any(v == "dynamic" for k, v in dynamic.items() if k.endswith(":kind")) or any(manifest.get("raw_ids") or ())
  dynamic = [f"{k}={v}" for k, v in sorted(dynamic.items())]
  return json.loads(json.dumps({"data": data, "model": config.model.to_dict(), "task": config.task.to_dict(),
                                "dense_shapes": shapes, "dynamic_tables": dynamic, "has_maps": has_maps,
                                "map_format": dynamic_lib.MAP_FORMAT}, default=str))


def _differences(saved: Any, current: Any, where: str) -> list[str]:
  """Every leaf that differs, as `key: saved -> current`."""
  if isinstance(saved, dict) and isinstance(current, dict):
    out = []
    for key in [*current, *(k for k in saved if k not in current)]:
      if key not in saved or key not in current:
        out.append(f"{where}{key}: {'absent' if key not in saved else saved[key]!r} -> "
                   f"{'absent' if key not in current else current[key]!r}")
      else:
        out += _differences(saved[key], current[key], f"{where}{key}.")
    return out
  if saved != current:
    text = lambda v: (json.dumps(v)[:80] + "...") if len(json.dumps(v)) > 80 else json.dumps(v)
    return [f"{where.rstrip('.')}: {text(saved)} -> {text(current)}"]
  return []


def check_compatible(saved: dict | None, current: dict, step: int, workdir: str, allow_data_change: bool) -> str | None:
  """Raises ConfigError (exit 2) when the checkpoint was trained on other data or another model;
  returns a warning line for an old checkpoint without a fingerprint, else None."""
  if saved is None:
    return f"checkpoint step {step} in {workdir} records no fingerprint (written by an older rankjax): not checked"
  has_maps = saved.get("has_maps", any(entry.endswith(":kind=dynamic") for entry in saved.get("dynamic_tables") or ()))
  if has_maps and saved.get("map_format", 1) != current["map_format"]:
    raise ConfigError("embedding.overrides", f"checkpoint step {step} in {workdir} holds dynamic-table maps of "
                      f"format {saved.get('map_format', 1)} (int32 keys), which this rankjax (format "
                      f"{current['map_format']}) does not restore; point --workdir elsewhere")
  for part, key in (("data", "data.path"), ("model", "model"), ("task", "task"), ("dense_shapes", "model"),
                    ("dynamic_tables", "embedding.overrides")):
    if part == "data" and allow_data_change:
      continue
    saved_part = saved.get(part)
    if part == "dynamic_tables" and saved_part is None:  # Written before this part was recorded.
      continue
    if part == "dynamic_tables":
      differences = ([f"embedding.overrides: {saved_part} -> {current[part]}"] if saved_part != current[part] else [])
    else:
      differences = _differences(saved_part, current[part], "" if part in ("data", "dense_shapes") else f"{part}.")
    if differences:
      difference = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
      first_key = differences[0].split(":")[0]
      what = "other data" if part == "data" else "another model"
      raise ConfigError(first_key if part not in ("dense_shapes", "dynamic_tables") else key,
                        f"checkpoint step {step} in {workdir} was trained on {what}: {difference}"
                        + ("; point --workdir elsewhere, or set checkpoint.allow_data_change=true to continue "
                           "on the new data" if part == "data" else "; point --workdir elsewhere"))
  return None
