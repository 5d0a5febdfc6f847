"""The training loop: data -> mesh -> step -> metrics, with evaluation and resumable checkpoints.

Host syncs happen only on log, eval and checkpoint steps; in between, steps are dispatched
asynchronously while the next batch is read and placed on the mesh.
"""

from __future__ import annotations

import json
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
from jax.experimental import multihost_utils
from tqdm import tqdm

from rankjax import checkpoint as checkpoint_lib
from rankjax.config import validate
from rankjax.data import pipeline
from rankjax.experiment import Experiment, build, enable_compilation_cache
from rankjax.losses import RANKING_LOSSES as RANKING_LOSS_FNS
from rankjax.metric_writers import MetricWriter
from rankjax.metrics import log_loss_from_logits, ndcg_at_k, roc_auc
from rankjax.partitioner import Partitioner
from rankjax.train_step import TrainState


class NonFiniteLossError(RuntimeError):
  """Training stopped because the loss became NaN or infinite."""


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
