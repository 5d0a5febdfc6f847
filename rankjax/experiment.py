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
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from rankjax.config import RANKING_LOSSES, ConfigError, model_module
from rankjax.data import layout, pipeline, synthetic
from rankjax.dense_optim import dense_optimizer
from rankjax.embedding.builder import build_engine
from rankjax.embedding.tables import FeatureSlots, scale_rows
from rankjax.losses import RANKING_LOSSES as RANKING_LOSS_FNS
from rankjax.ltr_step import RankingStepFunctions
from rankjax.partitioner import Partitioner
from rankjax.train_step import StepFunctions, TrainState


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before the first step: mesh, data, jitted functions."""
  config: ml_collections.ConfigDict
  partitioner: Partitioner
  data_dir: pathlib.Path | None
  manifest: dict
  steps: StepFunctions
  state_shardings: TrainState
  init_fn: Any
  train_fn: Any
  eval_fn: Any
  ranking: bool = False  # LETOR query lists ranked by a listwise/pairwise loss, evaluated by NDCG.


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
  if jax.process_index() == 0:
    synthetic.ensure(directory, synthetic.SyntheticSpec.from_config(config.data.synthetic, config.data.row_scale))
  multihost_utils.sync_global_devices("synthetic data ready")
  return directory, layout.read_manifest(directory)


def build(config: ml_collections.ConfigDict, workdir: pathlib.Path | None, devices=None,
          manifest: dict | None = None) -> Experiment:
  """The experiment; with `manifest` given (num_dense, vocab_sizes), no data is read or generated."""
  partitioner = Partitioner.from_config(config, devices)
  data_dir, manifest = (None, manifest) if manifest is not None else resolve_data(config, workdir)
  model = model_module(config.model.name)
  kind = manifest.get("source", {}).get("kind")
  if kind == "letor":
    return _build_ranking(config, partitioner, data_dir, manifest, model)
  if config.train.loss != "bce":
    raise ConfigError("train.loss", f"{config.train.loss!r} ranks query lists, but {data_dir} holds {kind} "
                      "examples with one label each: use 'bce', or a dataset from `rankjax data letor`")
  num_dense, vocab_sizes = manifest["num_dense"], manifest["vocab_sizes"]
  # Synthetic data is generated at the scaled size; real data's ids fold into the scaled tables.
  fold_ids = config.data.row_scale != 1 and manifest.get("source", {}).get("kind") != "synthetic"
  if fold_ids:
    vocab_sizes = scale_rows(vocab_sizes, config.data.row_scale)
  engine = build_engine(config, model.embedding_tables(config, vocab_sizes),
                        FeatureSlots(tuple(f"cat_{i}" for i in range(len(vocab_sizes))),
                                     tuple(manifest.get("hotness", [1] * len(vocab_sizes)))),
                        partitioner, fold_ids=fold_ids)

  def create_model(rngs: nnx.Rngs):  # Sequence ("none" combiner) features add one vector per position.
    return model.create(config, num_dense, engine.num_output_vectors, rngs=rngs)

  graphdef, _ = nnx.split(nnx.eval_shape(lambda: create_model(nnx.Rngs(0))))
  steps = StepFunctions(graphdef, engine, dense_optimizer(config.train.dense_optimizer,
                                                          config.train.dense_learning_rate), create_model,
                        skip_non_finite=config.train.on_non_finite == "skip",
                        compute_dtype=jnp.dtype(config.train.compute_dtype))

  replicated = partitioner.replicated
  abstract = jax.eval_shape(steps.init, jax.random.key(0))
  state_shardings = TrainState(
      step=replicated, rng=replicated,
      params=jax.tree.map(lambda _: replicated, abstract.params),
      opt_state=jax.tree.map(lambda _: replicated, abstract.opt_state),
      embedding=engine.shardings())
  batch_shardings = {"label": partitioner.sharding("batch"), "dense": partitioner.sharding("batch", None),
                     "cat": partitioner.sharding("batch", None)}
  by_batch = partitioner.sharding("batch")

  def eval_outputs(state, batch):
    return steps.eval_step(state, batch), batch["label"], batch["weight"]

  return _jit_experiment(config, partitioner, data_dir, manifest, steps, state_shardings, batch_shardings,
                         eval_outputs, (by_batch, by_batch, by_batch))


def _jit_experiment(config: ml_collections.ConfigDict, partitioner: Partitioner, data_dir: pathlib.Path | None,
                    manifest: dict, steps, state_shardings: TrainState, batch_shardings: dict,
                    eval_outputs, eval_output_shardings: tuple, ranking: bool = False) -> Experiment:
  """The experiment with its init, train and eval functions jitted over the given shardings (an
  eval batch is a train batch plus `weight`)."""
  eval_shardings = {**batch_shardings, "weight": partitioner.sharding("batch")}
  return Experiment(
      config=config, partitioner=partitioner, data_dir=data_dir, manifest=manifest, steps=steps,
      state_shardings=state_shardings,
      init_fn=partitioner.jit(lambda seed: steps.init(jax.random.key(seed)), in_shardings=None,
                              out_shardings=state_shardings),
      train_fn=partitioner.jit(steps.train_step, in_shardings=(state_shardings, batch_shardings),
                               out_shardings=(state_shardings, partitioner.replicated), donate_argnums=(0,)),
      eval_fn=partitioner.jit(eval_outputs, in_shardings=(state_shardings, eval_shardings),
                              out_shardings=eval_output_shardings),
      ranking=ranking)


def _build_ranking(config: ml_collections.ConfigDict, partitioner: Partitioner, data_dir: pathlib.Path | None,
                   manifest: dict, model) -> Experiment:
  """The experiment for LETOR query lists: a per-document scorer, no embedding engine."""
  if config.train.loss not in RANKING_LOSSES:
    raise ConfigError("train.loss", f"{data_dir} holds LETOR query lists: must be one of {RANKING_LOSSES}, "
                      f"got {config.train.loss!r}")
  if getattr(model, "TASK", None) != "ranking":
    raise ConfigError("model.name", f"{config.model.name!r} scores CTR examples; LETOR query lists need a "
                      "ranking model (ltr_mlp)")
  feature_mean_n, feature_std_n = model.feature_normalization(config, manifest)

  def create_model(rngs: nnx.Rngs):
    return model.create(config, manifest["num_features"], rngs=rngs)

  graphdef, _ = nnx.split(nnx.eval_shape(lambda: create_model(nnx.Rngs(0))))
  steps = RankingStepFunctions(graphdef, dense_optimizer(config.train.dense_optimizer,
                                                         config.train.dense_learning_rate), create_model,
                               RANKING_LOSS_FNS[config.train.loss], feature_mean_n, feature_std_n,
                               skip_non_finite=config.train.on_non_finite == "skip",
                               compute_dtype=jnp.dtype(config.train.compute_dtype))
  replicated = partitioner.replicated
  abstract = jax.eval_shape(steps.init, jax.random.key(0))
  state_shardings = TrainState(
      step=replicated, rng=replicated, params=jax.tree.map(lambda _: replicated, abstract.params),
      opt_state=jax.tree.map(lambda _: replicated, abstract.opt_state), embedding={})
  by_list = partitioner.sharding("batch", None)
  batch_shardings = {"relevance": by_list, "features": partitioner.sharding("batch", None, None), "mask": by_list}

  def eval_outputs(state, batch):
    return steps.eval_step(state, batch), batch["relevance"], batch["mask"], batch["weight"]

  return _jit_experiment(config, partitioner, data_dir, manifest, steps, state_shardings, batch_shardings,
                         eval_outputs, (by_list, by_list, by_list, partitioner.sharding("batch")), ranking=True)



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
      process_index=jax.process_index(), process_count=jax.process_count())
  with jax.set_mesh(exp.partitioner.mesh):
    batches = [exp.partitioner.place_batch(b) for b in iterator]
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
  """The train step compiled from abstract inputs for data of `manifest`'s shape (num_dense,
  vocab_sizes, hotness, source): no data is read and no step runs."""
  exp = build(config, None, devices, manifest=manifest)
  hotness = manifest.get("hotness", [1] * len(manifest["vocab_sizes"]))
  with jax.set_mesh(exp.partitioner.mesh):
    state = abstract_state(exp, config.seed)
    b = config.train.batch_size
    by_batch = lambda *spec: exp.partitioner.sharding("batch", *spec)
    batch = {"label": jax.ShapeDtypeStruct((b,), np.float32, sharding=by_batch()),
             "dense": jax.ShapeDtypeStruct((b, manifest["num_dense"]), np.float32, sharding=by_batch(None)),
             "cat": jax.ShapeDtypeStruct((b, int(sum(hotness))), np.int32, sharding=by_batch(None))}
    lowered = exp.train_fn.lower(state, batch)
    return exp, lowered, lowered.compile()


