"""`rankjax export`: a trained run as a serving artifact.

The artifact directory holds
- `model.jax_exported`: the task's inference function (feature standardisation, crossed ids,
  embedding routing and lookups, the model, each head's score) serialized by `jax.export` as
  StableHLO with a symbolic batch dimension (and list dimension for ranking), lowered for CPU and
  CUDA. It is called as `f(weights, inputs)`: `weights` the list of arrays the manifest names, in
  its order; `inputs` a dict of the manifest's input arrays. It returns a dict head -> scores.
- `weights/NNNN`: every weight as a tensorstore zarr array (the embedding tables as the
  trainer stacks them, gathered from any training mesh into one array per table group).
- `serving.json`: the manifest: inputs, heads, weights, where each embedding table's rows are,
  the feature spec and normalisation, the run's fingerprint and step.
- `config.json`, `data_manifest.json`, `data/`: the run's config, its data's manifest and side
  files (a frequency vocabulary): what `predict` converts raw rows with.

The state is restored from the run's checkpoint onto one device: digests verified, the config's
fingerprint checked against the checkpoint's, tables re-laid-out from the training mesh's layout.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging as absl_logging
import ml_collections
import numpy as np

import rankjax
from rankjax import checkpoint as checkpoint_lib
from rankjax import checkpoint_integrity
from rankjax.config import config_from_json, task_class
from rankjax.data import layout
from rankjax.experiment import Experiment, UsageError, build
from rankjax.partitioner import jit
from rankjax.data import pipeline
from rankjax.embedding.engine import DYNAMIC
from rankjax.export import weights as weights_lib
from rankjax.export.serving import FORMAT, MANIFEST, padded, read_batches
from rankjax.tasks.base import Task, TrainState
from rankjax.train import _host, _restore

FUNCTION = "model.jax_exported"
DATA_FILES = "data"  # The data's side files (a frequency vocabulary), for scoring raw rows.
PLATFORMS = ("cpu", "cuda")


def run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run recorded in WORKDIR/config.json."""
  path = workdir / "config.json"
  if not path.is_file():
    raise UsageError(f"{path}: no recorded config (a run of an older rankjax): pass the run's --config and overrides")
  return config_from_json(path.read_text(), str(path))


def single_device(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config on a one-device mesh (every axis of size 1)."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.mesh.shape = (1,) * len(config.mesh.axes)
  return config


def restore(workdir: pathlib.Path, step: int | None, config: ml_collections.ConfigDict,
            device: jax.Device) -> tuple[Experiment, TrainState, int, dict]:
  """(the experiment on `device`, the verified state of checkpoint `step` (default: the latest, or
  the best validation step of an early-stopped run) there, the step, the checkpoint's data state)."""
  data_dir = pathlib.Path(config.data.path) if config.data.path else workdir / "data" / "synthetic"
  manifest = layout.read_manifest(data_dir)
  exp = dataclasses.replace(build(single_device(config), None, devices=[device], manifest=manifest), data_dir=data_dir)
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    raise UsageError(f"{directory}: no checkpoints (is --workdir a training run?)")
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns that a read-only manager does not save.
  try:
    checkpointer = checkpoint_lib.Checkpointer(str(directory), read_only=True)
  finally:
    absl_logging.set_verbosity(verbosity)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise UsageError(f"{directory}: no committed checkpoint")
    if step is None:  # The latest, or with early stopping the best validation step it recorded.
      step = max(steps)
      best = checkpointer.restore_data(step).get("early_stopping", {}).get("best_step")
      step = best if best in steps else step
    if step not in steps:
      raise UsageError(f"--step {step}: not a checkpoint in {directory} (has {sorted(steps)})")
    data_state = checkpointer.restore_data(step)
    current = checkpoint_integrity.fingerprint(config, manifest, jax.eval_shape(exp.init_fn, config.seed).params)
    checkpoint_integrity.check_compatible(data_state.get("fingerprint"), current, step, str(workdir), False)
    with jax.set_mesh(exp.partitioner.mesh):
      state, _ = _restore(exp, checkpointer, step, config.seed, data_state)
  finally:
    checkpointer.close()
  return exp, state, step, data_state


def map_weights(task: Task, table: str) -> tuple[str, ...]:
  """A dynamic table's map as served (what dynamic.lookup reads): its key words and rows."""
  return (*task.engine.dynamic[table].spec.key_names, "rows")


def named_weights(task: Task, state: TrainState) -> list[tuple[str, jax.Array]]:
  """The arrays inference reads, in the exported function's order: the dense parameters (by
  path), then each embedding table group's stacked table."""
  params = [("params" + jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]]
  groups = [(f"embedding/{g.name}", state.embedding[g.name]["table"]) for g in (task.engine.groups if task.engine else ())]
  maps = [(f"embedding/{DYNAMIC}/{name}/{k}", state.embedding[DYNAMIC][name][k])
          for name in (task.engine.dynamic if task.engine else ()) for k in map_weights(task, name)]
  return params + groups + maps


def input_specs(task: Task) -> dict[str, dict[str, Any]]:
  """Input name -> {"shape": ["batch", ...], "dtype"}: the batch fields inference reads. Ranking
  inputs have a symbolic list dimension too ("list")."""
  fields = {f.name: f for f in task.batch_spec.fields}
  out = {}
  for name in task.SERVING_FIELDS:
    f = fields[name]
    shape = list(f.shape)
    if task.inputs.list_size:
      shape[0] = "list"
    out[name] = {"shape": ["batch", *shape], "dtype": f.dtype}
    if f.id_bounds is not None:  # Each column's ids (the last axis; per document of a list): -1 or in [0, bound).
      out[name]["id_bounds"] = [int(b) for b in f.id_bounds[:f.shape[-1]]]
  return out


def inference_function(task: Task, state: TrainState):
  """f(weights: list of arrays, inputs: dict) -> {head: scores}, for the state's structure; the
  task scores in its inference blocks (Task.set_inference_blocks)."""
  params_def = jax.tree.structure(state.params)
  num_params = params_def.num_leaves
  groups = [g.name for g in task.engine.groups] if task.engine else []
  dynamic_tables = list(task.engine.dynamic) if task.engine else []

  def infer(weights: list[jax.Array], inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    params = jax.tree.unflatten(params_def, weights[:num_params])
    embedding = {g: {"table": w} for g, w in zip(groups, weights[num_params:])}
    maps = iter(weights[num_params + len(groups):])
    if dynamic_tables:  # Each map's keys and rows: what dynamic.lookup reads.
      embedding[DYNAMIC] = {name: {k: next(maps) for k in map_weights(task, name)} for name in dynamic_tables}
    served = TrainState(step=jnp.zeros((), jnp.int32), rng=None, params=params, opt_state=None, embedding=embedding)
    return task.serving_scores(task.forward(served, inputs))

  return infer


def abstract_inputs(specs: dict[str, dict[str, Any]], block_rows: int = 0) -> dict[str, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs with the symbolic dimensions of `input_specs` (one scope for all); with
  `block_rows` the batch is a multiple of it."""
  batch = f"{block_rows}*blocks" if block_rows else "batch"
  text = {name: ", ".join(str(d) if isinstance(d, int) else (batch if d == "batch" else d) for d in s["shape"])
          for name, s in specs.items()}
  scope = jax.export.SymbolicScope()
  return {name: jax.ShapeDtypeStruct(jax.export.symbolic_shape(t, scope=scope), specs[name]["dtype"])
          for name, t in text.items()}


def table_locations(task: Task) -> dict[str, dict[str, Any]]:
  """Table -> where its rows are: the weight (group array), the first row, rows, dim, features;
  a dynamic table also its map: the weights holding its sorted ids and their rows (an id not
  among the keys reads `default_row`; rankjax.embedding.dynamic.lookup): keys are uint32, sorted by
  (keys_hi, keys) when `keys_hi` is there (64-bit ids), by keys alone otherwise (31-bit ids); a
  map in `pieces` holds piece s's ids and local rows (table row s x capacity / pieces + local) in
  its row s, an id in piece hash_words(hi, lo) mod pieces, hi = 0 for 31-bit ids
  (rankjax.embedding.dynamic_shards.lookup)."""
  if not task.engine:
    return {}
  out = {}
  for g in task.engine.groups:
    for t, offset in zip(g.tables, g.table_offsets):
      out[t.name] = {"weight": f"embedding/{g.name}", "row_offset": int(offset), "rows": int(t.vocab_size),
                     "dim": int(g.dim), "features": list(t.feature_names)}
      if t.name in task.engine.dynamic:
        out[t.name]["map"] = {**{k: f"embedding/{DYNAMIC}/{t.name}/{k}" for k in map_weights(task, t.name)},
                              "capacity": int(t.capacity), "default_row": int(t.capacity)}
        if t.map_shards > 1:  # keys / rows are [pieces, capacity / pieces]: rankjax.embedding.dynamic_shards.
          out[t.name]["map"]["pieces"] = int(t.map_shards)
  return out


def export(workdir: str | pathlib.Path, out: str | pathlib.Path, *, step: int | None = None,
           config: ml_collections.ConfigDict | None = None, quantize: str = "none", block_rows: int | None = None,
           platforms: tuple[str, ...] = PLATFORMS, log=print) -> dict[str, Any]:
  """Writes the serving artifact of `workdir`'s checkpoint `step` (default: the latest) to `out`;
  returns its manifest. `block_rows`: the batch is scored in blocks of this many rows (default:
  the block the trainer's eval scored in, which gives the trainer's scores bit for bit; 0 = the
  whole batch at once). With `quantize` (bf16 | int8) the tables are stored so, and the score
  difference against float32 tables over the first eval records is measured and recorded."""
  workdir, out = pathlib.Path(workdir), pathlib.Path(out).resolve()
  if out.exists() and not out.is_dir():
    raise UsageError(f"--out {out}: is a file, not a directory")
  if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
    raise UsageError(f"--out {out}: exists, is not empty and holds no rankjax export (not overwritten)")
  if quantize not in weights_lib.QUANTIZE:
    raise UsageError(f"--quantize {quantize}: must be one of {weights_lib.QUANTIZE}")
  config = config if config is not None else run_config(workdir)
  if not task_class(config.task.name).SERVING_FIELDS:
    raise UsageError(f"{workdir}: task {config.task.name!r} has no served scorer to export (export serves the "
                     "ctr, multitask and ranking tasks; a retrieval run's towers are not exported yet)")
  exp, state, step, data_state = restore(workdir, step, config, jax.devices()[0])
  task = exp.task
  named = named_weights(task, state)
  specs = input_specs(task)
  if block_rows is None:  # The block the trainer scored in (a run before blocks: none, a request at once).
    block_rows = int(data_state.get("inference_block") or 0)
  task.set_inference_blocks(1, block_rows, block_rows)
  infer = inference_function(task, state)
  abstract_weights = [jax.ShapeDtypeStruct(x.shape, x.dtype) for _, x in named]
  exported = jax.export.export(jit(infer), platforms=platforms)(abstract_weights,
                                                                    abstract_inputs(specs, block_rows))

  staging = out.with_name(out.name + ".tmp")
  shutil.rmtree(staging, ignore_errors=True)
  (staging / "weights").mkdir(parents=True)
  (staging / FUNCTION).write_bytes(exported.serialize())
  entries = []
  for i, (name, x) in enumerate(named):
    # Tables may be stored quantized; a dynamic table's map (id words and rows) never.
    stored_as = quantize if name.startswith("embedding/") and not name.startswith(f"embedding/{DYNAMIC}/") else "none"
    entries.append({"name": name, **weights_lib.write(staging / "weights" / f"{i:04d}", _host(x), stored_as)})
    entries[-1]["path"] = f"weights/{entries[-1]['path']}"
  manifest = {
      "format": FORMAT, "rankjax_version": rankjax.__version__, "jax_version": jax.__version__,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "workdir": str(workdir.resolve()), "step": int(step), "task": config.task.name, "model": config.model.name,
      "heads": list(task.heads), "score": "probability" if config.task.name in ("ctr", "multitask") else "score",
      "function": FUNCTION, "platforms": list(exported.platforms), "inputs": specs,
      "batch_multiple": max(block_rows, 1), "block_rows": block_rows, "weights": entries,
      "tables": table_locations(task), "quantize": quantize, "fingerprint": data_state.get("fingerprint"),
      "features": _feature_spec(exp.manifest),
  }
  (staging / "config.json").write_text((workdir / "config.json").read_text() if (workdir / "config.json").is_file()
                                       else json.dumps(config.to_dict(), indent=1, sort_keys=True))
  (staging / "data_manifest.json").write_text(json.dumps(exp.manifest, indent=1))
  for entry in exp.manifest.get("files", {}).values():
    target = staging / DATA_FILES / entry["file"]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exp.data_dir / entry["file"], target)
  if quantize != "none":
    manifest["quantization_error"] = _quantization_error(exp, state, infer, named, staging, entries)
  (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
  # The old artifact, if any, is replaced only once the new one is complete.
  old = out.with_name(out.name + ".old")
  shutil.rmtree(old, ignore_errors=True)
  if out.exists():
    out.rename(old)
  staging.rename(out)
  shutil.rmtree(old, ignore_errors=True)
  return manifest


def _feature_spec(data_manifest: dict) -> dict[str, Any]:
  """What a caller must send, as the data manifest records it: feature names, vocabularies,
  hashing, normalisation statistics."""
  keep = ("source", "num_dense", "vocab_sizes", "hotness", "labels", "dense_stats", "num_features", "feature_stats",
          "max_list_size", "feature_spec")
  return {k: data_manifest[k] for k in keep if k in data_manifest}


def _quantization_error(exp: Experiment, state: TrainState, infer, named, staging: pathlib.Path,
                        entries: list[dict], records: int = 4096) -> dict[str, float]:
  """Max and mean |score difference| of the stored (quantized) weights against float32 over the
  first `records` eval records, per head."""
  task = exp.task
  found, indices = pipeline.open_checked(exp.data_dir, exp.manifest, "eval", task.batch_spec, invalid_records="skip")
  if not len(indices):
    raise UsageError(f"{exp.data_dir}: the eval split has no record to measure the --quantize error on")
  _, batch = next(read_batches(found, indices[:records], task.batch_spec, task.SERVING_FIELDS, records))
  n = len(next(iter(batch.values())))
  block = max(task.inference_block, 1)
  batch = padded(batch, -(-n // block) * block)
  exact = jit(infer)([x for _, x in named], batch)
  stored = jit(infer)([weights_lib.read(staging, e) for e in entries], batch)
  real = np.asarray(batch["mask"])[:n] > 0 if "mask" in batch else slice(None)  # Documents of lists, not padding.
  difference = {h: np.abs(np.asarray(exact[h]) - np.asarray(stored[h]))[:n][real] for h in exact}
  return {h: {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "records": n} for h, d in difference.items()}


def serving_task(model_dir: str | pathlib.Path) -> Task:
  """The task of an exported model, rebuilt on one device from its recorded config and data
  manifest (what reads its inputs from a dataset or raw rows); no weights are touched."""
  model_dir = pathlib.Path(model_dir)
  config = config_from_json((model_dir / "config.json").read_text(), str(model_dir / "config.json"))
  data_manifest = json.loads((model_dir / "data_manifest.json").read_text())
  return build(single_device(config), None, devices=[jax.devices()[0]], manifest=data_manifest).task
