"""Everything built from a config before the first step: the mesh, the data, the task's jitted
functions (`build`), and a step compiled on device-resident batches (`prepare`) or from
abstract shapes (`compile_abstract`) for `bench`, `profile` and `plan`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils

from rankjax.config import task_class
from rankjax.data import layout, pipeline, synthetic, synthetic_retrieval
from rankjax.partitioner import Partitioner
from rankjax.tasks.base import Task, TrainState


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before the first step: mesh, data, the task and its jitted
  functions. `eval_fn(state, eval_batch, totals)` adds a batch to the task's eval totals
  (replicated; `eval_init_fn()` makes the first)."""
  config: ml_collections.ConfigDict
  partitioner: Partitioner
  data_dir: pathlib.Path | None
  manifest: dict
  task: Task
  state_shardings: TrainState
  batch_shardings: dict[str, jax.sharding.NamedSharding]
  init_fn: Any
  train_fn: Any
  eval_init_fn: Any
  eval_fn: Any
  eval_prepare_fn: Any


def enable_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """JAX's persistent compilation cache, so a restart (or another run of the model) does not recompile."""
  directory = config.train.compilation_cache_dir
  if directory == "none":
    return
  directory = directory or str(pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
                               / "rankjax" / "jax_compilation_cache")
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def resolve_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> tuple[pathlib.Path, dict]:
  """The dataset directory and manifest: `data.path`, or the synthetic default under the workdir."""
  if config.data.path:
    directory = pathlib.Path(config.data.path)
    return directory, layout.read_manifest(directory)
  directory = workdir / "data" / "synthetic"
  if jax.process_index() == 0 and config.data.synthetic.kind == "retrieval":
    synthetic_retrieval.ensure(directory, synthetic_retrieval.RetrievalSpec.from_config(config.data.synthetic))
  elif jax.process_index() == 0:
    synthetic.ensure(directory, synthetic.SyntheticSpec.from_config(config.data.synthetic, config.data.row_scale))
  multihost_utils.sync_global_devices("synthetic data ready")
  return directory, layout.read_manifest(directory)


def data_shape(config: ml_collections.ConfigDict) -> dict:
  """The manifest of `data.path`, or for the synthetic default the manifest fields that shape the
  model (no data is generated): what `plan` and abstract compilation need."""
  if config.data.path:
    return layout.read_manifest(config.data.path)
  if config.data.synthetic.kind == "retrieval":
    return synthetic_retrieval.data_shape(synthetic_retrieval.RetrievalSpec.from_config(config.data.synthetic))
  spec = synthetic.SyntheticSpec.from_config(config.data.synthetic, config.data.row_scale)
  return {"num_dense": spec.num_dense, "vocab_sizes": list(spec.data_vocab_sizes),
          "hotness": list(spec.data_hotness), "source": {"kind": "synthetic"}}


def build(config: ml_collections.ConfigDict, workdir: pathlib.Path | None, devices=None,
          manifest: dict | None = None) -> Experiment:
  """The experiment; with `manifest` given (see data_shape), no data is read or generated."""
  partitioner = Partitioner.from_config(config, devices)
  data_dir, manifest = (None, manifest) if manifest is not None else resolve_data(config, workdir)
  task = task_class(config.task.name)(config, manifest, partitioner)
  shards = partitioner.axis_size("batch")
  task.set_inference_blocks(shards, config.train.eval_batch_size // shards, config.eval.block_rows)
  replicated = partitioner.replicated
  abstract = jax.eval_shape(task.init, jax.random.key(0))
  state_shardings = TrainState(
      step=replicated, rng=replicated,
      params=jax.tree.map(lambda _: replicated, abstract.params),
      opt_state=jax.tree.map(lambda _: replicated, abstract.opt_state),
      embedding=task.engine.shardings() if task.engine else {})
  batch_shardings = task.batch_spec.shardings(partitioner)
  eval_shardings = task.batch_spec.with_weight().shardings(partitioner)
  return Experiment(
      config=config, partitioner=partitioner, data_dir=data_dir, manifest=manifest, task=task,
      state_shardings=state_shardings, batch_shardings=batch_shardings,
      init_fn=partitioner.jit(lambda seed: task.init(jax.random.key(seed)), in_shardings=None,
                              out_shardings=state_shardings),
      train_fn=partitioner.jit(task.train_step, in_shardings=(state_shardings, batch_shardings),
                               out_shardings=(state_shardings, replicated), donate_argnums=(0,)),
      eval_init_fn=partitioner.jit(task.eval_init, in_shardings=None, out_shardings=replicated),
      eval_fn=partitioner.jit(task.eval_step, in_shardings=(state_shardings, eval_shardings, replicated),
                              out_shardings=replicated, donate_argnums=(2,)),
      eval_prepare_fn=partitioner.jit(task.eval_prepare, in_shardings=(state_shardings, replicated),
                                      out_shardings=replicated, donate_argnums=(1,)))


DISTINCT_BATCHES = 8  # Batches kept on the devices and cycled through while timing.


class UsageError(ValueError):
  """A command-line value that cannot work (exit 2)."""


@dataclasses.dataclass
class CompiledStep:
  """A config's train step compiled for its first batch, with its state and device-resident batches."""
  exp: Experiment
  lowered: jax.stages.Lowered
  compiled: jax.stages.Compiled
  compile_s: float  # Lowering + compilation.
  state: TrainState
  batches: list[dict[str, jax.Array]]
  steps_done: int = 0
  last_loss: jax.Array | None = None  # The loss of the last step run.

  @property
  def devices(self) -> list[jax.Device]:
    return list(self.exp.partitioner.mesh.devices.flat)

  def run(self, steps: int) -> list[float]:
    """Runs `steps` steps; returns each one's seconds, dispatch to completion."""
    seconds = []
    with jax.set_mesh(self.exp.partitioner.mesh):
      for _ in range(steps):
        batch = self.batches[self.steps_done % len(self.batches)]
        start = time.perf_counter()
        with jax.profiler.StepTraceAnnotation("train", step_num=self.steps_done):
          self.state, metrics = self.compiled(self.state, batch)
          jax.block_until_ready((self.state, metrics))
        seconds.append(time.perf_counter() - start)
        self.steps_done += 1
        self.last_loss = metrics["loss"]
    return seconds


def prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path, devices: Sequence[jax.Device] | None = None,
            num_batches: int = DISTINCT_BATCHES) -> CompiledStep:
  """Builds the experiment (generating synthetic data under `workdir` if needed), initialises the
  state, places `num_batches` training batches on the mesh and compiles the step."""
  exp = build(config, workdir, devices)
  iterator = pipeline.train_iterator(
      exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size, num_batches=num_batches,
      seed=config.data.shuffle_seed, read_threads=config.data.read_threads, prefetch=config.data.prefetch_batches,
      process_index=jax.process_index(), process_count=jax.process_count(), spec=exp.task.batch_spec,
      invalid_records=config.data.invalid_records)
  with jax.set_mesh(exp.partitioner.mesh):
    batches = [exp.partitioner.place_batch(b, exp.batch_shardings) for b in iterator]
    state = exp.init_fn(config.seed)
    start = time.perf_counter()
    lowered = exp.train_fn.lower(state, batches[0])
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
  return CompiledStep(exp, lowered, compiled, compile_s, state, batches)


def selected_devices(count: int | None) -> list[jax.Device]:
  """The first `count` devices (all when None)."""
  devices = jax.devices()
  if count is not None and not 0 < count <= len(devices):
    raise UsageError(f"--devices={count}: {len(devices)} devices are visible")
  return devices[:count] if count else devices


def abstract_state(exp: Experiment, seed: int):
  """The train state's shapes, dtypes and shardings, without allocating it."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      jax.eval_shape(exp.init_fn, seed), exp.state_shardings)


def compile_abstract(config: ml_collections.ConfigDict, manifest: dict, devices: list[jax.Device]
                     ) -> tuple[Experiment, jax.stages.Lowered, jax.stages.Compiled]:
  """The train step compiled from abstract inputs for data of `manifest`'s shape (see data_shape):
  the batch is the task's BatchSpec; no data is read and no step runs."""
  exp = build(config, None, devices, manifest=manifest)
  with jax.set_mesh(exp.partitioner.mesh):
    state = abstract_state(exp, config.seed)
    batch = exp.task.batch_spec.abstract(config.train.batch_size, exp.partitioner)
    lowered = exp.train_fn.lower(state, batch)
    return exp, lowered, lowered.compile()


