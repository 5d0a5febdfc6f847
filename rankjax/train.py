"""The training loop: data -> mesh -> step -> metrics, with evaluation and resumable checkpoints.

Host syncs happen only on log, eval and checkpoint steps; in between, steps are dispatched
asynchronously while the next batch is read and placed on the mesh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from rankjax import checkpoint as checkpoint_lib
from rankjax.config import RANKING_LOSSES, ConfigError, model_module, validate
from rankjax.data import layout, pipeline, synthetic
from rankjax.embedding import FeatureSlots, scale_rows
from rankjax.embedding_builder import build_engine
from rankjax.losses import RANKING_LOSSES as RANKING_LOSS_FNS
from rankjax.ltr_step import RankingStepFunctions
from rankjax.metric_writers import MetricWriter
from rankjax.metrics import log_loss_from_logits, ndcg_at_k, roc_auc
from rankjax.optim import dense_optimizer
from rankjax.partitioner import Partitioner
from rankjax.train_step import StepFunctions, TrainState


class NonFiniteLossError(RuntimeError):
  """Training stopped because the loss became NaN or infinite."""


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


def _evaluate_ranking(exp: Experiment, state: TrainState) -> dict[str, float]:
  """NDCG@train.ndcg_k and the train.loss function over the eval split's query lists (padding lists carry
  weight 0 and are dropped)."""
  c = exp.config
  it = pipeline.eval_iterator(exp.data_dir, exp.manifest, global_batch_size=c.train.eval_batch_size,
                              read_threads=c.data.read_threads, prefetch=c.data.prefetch_batches,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              verify=c.data.verify_checksums)
  outputs = [exp.eval_fn(state, exp.partitioner.place_batch(batch)) for batch in it]
  scores, relevance, mask, weights = (
      np.concatenate([np.asarray(multihost_utils.process_allgather(o[i], tiled=True)) for o in outputs])
      for i in range(4))
  lists = weights > 0
  scores, relevance, mask = scores[lists], relevance[lists], mask[lists]
  loss = RANKING_LOSS_FNS[c.train.loss](jnp.asarray(scores), jnp.asarray(relevance), jnp.asarray(mask))
  return {f"ndcg@{c.train.ndcg_k}": ndcg_at_k(relevance, scores, mask, c.train.ndcg_k), "loss": float(loss),
          "queries": int(lists.sum())}


def _eval_event(evaluation: dict[str, float]) -> dict[str, float]:
  """An eval event's fields: every metric, and `loss` (for CTR data, the log loss)."""
  return {"loss": evaluation["logloss"], **evaluation} if "logloss" in evaluation else evaluation


def _checkpoint_metrics(exp: Experiment, evaluation: dict[str, float]) -> dict[str, float]:
  """The eval metrics a checkpoint records (what checkpoint.keep_best_metric ranks by)."""
  if exp.ranking:
    return {"ndcg": evaluation[f"ndcg@{exp.config.train.ndcg_k}"], "loss": evaluation["loss"]}
  return {k: evaluation[k] for k in ("auc", "logloss")}


def evaluate(exp: Experiment, state: TrainState) -> dict[str, float]:
  """AUC and log loss over the whole eval split (padding examples carry weight 0); for query
  lists, NDCG and the loss (see _evaluate_ranking)."""
  if exp.ranking:
    return _evaluate_ranking(exp, state)
  c = exp.config
  it = pipeline.eval_iterator(exp.data_dir, exp.manifest, global_batch_size=c.train.eval_batch_size,
                              read_threads=c.data.read_threads, prefetch=c.data.prefetch_batches,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              label_index=c.data.label_index, verify=c.data.verify_checksums)
  outputs = [exp.eval_fn(state, exp.partitioner.place_batch(batch)) for batch in it]
  logits, labels, weights = (np.concatenate([np.asarray(multihost_utils.process_allgather(o[i], tiled=True))
                                             for o in outputs]) for i in range(3))
  return {"auc": roc_auc(labels, logits, weights), "logloss": log_loss_from_logits(labels, logits, weights),
          "examples": int(weights.sum())}


class _DeviceBatches:
  """Reads the next batch and places it on the mesh (one step ahead of the step that uses it);
  returns it with the Grain state just after it, which a checkpoint taken after it must record."""

  def __init__(self, iterator, partitioner: Partitioner):
    self.iterator, self.partitioner = iterator, partitioner

  def __next__(self):
    batch = self.partitioner.place_batch(next(self.iterator))
    return batch, self.iterator.get_state()


def _host(x: jax.Array) -> np.ndarray:
  """A replicated array's value on this host (works when other processes hold other devices)."""
  return np.asarray(x.addressable_data(0))


class Preempted(RuntimeError):
  """Training stopped on SIGTERM/SIGINT after writing a checkpoint; rerun the command to resume."""


class _StopSignals:
  """SIGTERM/SIGINT -> a flag the loop reads between steps (one process). With several processes
  JAX's coordination service owns SIGTERM and agrees on a common stop step."""

  def __init__(self):
    self.requested = threading.Event()
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, lambda *_: self.requested.set())
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested.is_set()


def _restore(exp: Experiment, checkpointer: checkpoint_lib.Checkpointer, step: int, seed: int):
  """The train state and data state of a checkpoint, re-laid-out if it was saved with another
  embedding layout (another device count or sharding plan)."""
  engine = exp.steps.engine
  data_state = checkpointer.restore_data(step)
  abstract = checkpoint_lib.abstract_like(jax.eval_shape(exp.init_fn, seed), exp.state_shardings)
  saved_layout = data_state.get("embedding_layout")
  if saved_layout is None or saved_layout == json.loads(json.dumps(engine.layout_descriptor())):
    state, _ = checkpointer.restore(step, abstract)
    return state, data_state, False
  state, _ = checkpointer.restore(step, abstract.replace(embedding=engine.abstract_state_for(saved_layout)))
  relayout = exp.partitioner.jit(lambda e: engine.relayout(e, saved_layout), in_shardings=None,
                                 out_shardings=exp.state_shardings.embedding)
  return state.replace(embedding=relayout(state.embedding)), data_state, True


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, devices=None,
          log=print) -> dict[str, Any]:
  """Trains (or resumes) the experiment in `workdir`; returns the final summary."""
  # ---- Set-up: validate, build the mesh, data and jitted step.
  validate(config, len(devices) if devices is not None else jax.device_count())
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  enable_compilation_cache(config)
  exp = build(config, workdir, devices)
  c = config.train
  is_chief = jax.process_index() == 0
  writer = MetricWriter(workdir, enabled=is_chief)
  checkpointer = checkpoint_lib.Checkpointer(
      str(workdir / "checkpoints"), max_to_keep=config.checkpoint.max_to_keep,
      keep_best_metric=config.checkpoint.keep_best_metric, async_save=config.checkpoint.async_save)
  layout = exp.steps.engine.layout_descriptor() if exp.steps.engine else None
  with jax.set_mesh(exp.partitioner.mesh), _StopSignals() as stop:
    # ---- Initialise or resume.
    latest = checkpointer.latest_step()
    data_state = None
    if latest is not None:
      state, data_state, relaid = _restore(exp, checkpointer, latest, config.seed)
      dropped = writer.truncate_after(latest)
      log(f"rankjax: resuming from checkpoint step {latest} in {workdir / 'checkpoints'}"
          + (" (embedding tables re-laid-out for this mesh)" if relaid else "")
          + (f" (dropped {dropped} metric events logged after it)" if dropped else ""))
    else:
      state = exp.init_fn(config.seed)
    start = int(_host(state.step))

    train_iter = pipeline.train_iterator(
        exp.data_dir, exp.manifest, global_batch_size=c.batch_size, num_batches=max(c.steps, start),
        seed=config.data.shuffle_seed, read_threads=config.data.read_threads,
        prefetch=config.data.prefetch_batches,
        process_index=jax.process_index(), process_count=jax.process_count(),
        label_index=config.data.label_index, verify=config.data.verify_checksums)
    if data_state is not None:
      train_iter.set_state(data_state["iterator"])

    def save(step: int, iterator_state: dict, metrics: dict | None = None):
      checkpointer.save(step, state, {"iterator": iterator_state, "embedding_layout": layout},
                        metrics=_checkpoint_metrics(exp, metrics) if metrics else None)

    # ---- Train: dispatch steps asynchronously; sync only to log, evaluate or checkpoint.
    batches = _DeviceBatches(train_iter, exp.partitioner)
    progress = tqdm(total=c.steps, initial=start, unit="step", dynamic_ncols=True,
                    disable=not (c.progress_bar and is_chief and sys.stderr.isatty()))
    pending, window_start, window_time = [], start, time.perf_counter()
    trained_examples, trained_time, skipped_total, final = 0, 0.0, 0, None
    consumed_state = train_iter.get_state()
    if start < c.steps:
      batch, batch_state = next(batches)
    for step in range(start, c.steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = exp.train_fn(state, batch)
      consumed_state, done = batch_state, step + 1
      pending.append(metrics)
      if done < c.steps:
        batch, batch_state = next(batches)
      progress.update(1)
      preempted = stop.reached(done)
      is_ckpt = done % config.checkpoint.every_steps == 0 or done == c.steps or preempted
      if done % c.log_every == 0 or done == c.steps or is_ckpt:
        # One host sync for the whole window; nothing non-finite is ever checkpointed.
        window = [{k: _host(v) for k, v in m.items()} for m in pending]
        losses = np.array([m["loss"] for m in window], np.float64)
        skipped = np.array([m["skipped"] for m in window], bool)
        bad = np.flatnonzero(~skipped & ~np.isfinite(losses))
        if bad.size:
          writer.write(window_start + int(bad[0]) + 1, "train", loss=None, error="non-finite loss")
          raise NonFiniteLossError(
              f"loss became {losses[bad[0]]} at step {window_start + int(bad[0]) + 1}; "
              f"the last checkpoint is step {checkpointer.latest_step()}. Lower train.dense_learning_rate / "
              "embedding.learning_rate, check the data, or set train.on_non_finite=skip.")
        skipped_total += int(skipped.sum())
        now = time.perf_counter()
        if window_start > start:  # The first window includes compilation: left out of the throughput.
          trained_examples += len(losses) * c.batch_size
          trained_time += now - window_time
        if done % c.log_every == 0 or done == c.steps:
          rate = len(losses) * c.batch_size / (now - window_time)
          finite = losses[~skipped]
          writer.write(done, "train", loss=float(finite.mean()) if finite.size else None, examples_per_sec=rate,
                       **({"skipped_steps": int(skipped.sum())} if c.on_non_finite == "skip" else {}))
          progress.set_postfix(loss=f"{finite.mean() if finite.size else float('nan'):.4f}", ex_per_s=f"{rate:,.0f}")
        pending, window_start, window_time = [], done, now
      evaluation = None
      if done == c.steps or (c.eval_every and done % c.eval_every == 0):
        evaluation = evaluate(exp, state)
        writer.write(done, "eval", **_eval_event(evaluation))
        final = evaluation
        window_time = time.perf_counter()
      if is_ckpt:
        save(done, consumed_state, evaluation)
      if preempted and done < c.steps:
        checkpointer.wait()
        checkpointer.close()
        writer.close()
        raise Preempted(f"stopped by signal after step {done}; checkpoint {done} is committed. "
                        "Rerun the same command to resume.")
    progress.close()

    # ---- Final evaluation (if this run trained no step) and summary.
    if final is None:
      final = evaluate(exp, state)
      writer.write(start, "eval", **_eval_event(final))
    checkpointer.wait()
    checkpointer.close()
  writer.close()
  if exp.ranking:
    return _ranking_summary(exp, workdir, state, final, trained_examples / trained_time if trained_time else None,
                            skipped_total, is_chief, log)
  summary = {"steps": int(_host(state.step)), "eval_auc": final["auc"], "eval_logloss": final["logloss"],
             "examples_per_sec": trained_examples / trained_time if trained_time else None,
             "skipped_steps": skipped_total,
             "bayes_optimal_eval_auc": exp.manifest.get("bayes_optimal_eval_auc")}
  if is_chief:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  rate = f"{summary['examples_per_sec']:,.0f}" if summary["examples_per_sec"] else "n/a"
  bayes = summary["bayes_optimal_eval_auc"]
  log(f"rankjax: final eval auc={final['auc']:.6f} logloss={final['logloss']:.6f} steps={summary['steps']} "
      f"examples/s={rate}" + (f" (Bayes-optimal auc {bayes:.6f}, ratio {final['auc'] / bayes:.4f})" if bayes else ""))
  return summary


def _ranking_summary(exp: Experiment, workdir: pathlib.Path, state: TrainState, final: dict[str, float],
                     lists_per_sec: float | None, skipped_steps: int, is_chief: bool, log) -> dict[str, Any]:
  """The final summary of a ranking run (summary.json and the last log line)."""
  ndcg_key = f"ndcg@{exp.config.train.ndcg_k}"
  summary = {"steps": int(_host(state.step)), f"eval_{ndcg_key}": final[ndcg_key], "eval_loss": final["loss"],
             "examples_per_sec": lists_per_sec, "skipped_steps": skipped_steps}
  if is_chief:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  rate = f"{lists_per_sec:,.0f}" if lists_per_sec else "n/a"
  log(f"rankjax: final eval {ndcg_key}={final[ndcg_key]:.6f} loss={final['loss']:.6f} steps={summary['steps']} "
      f"lists/s={rate}")
  return summary
