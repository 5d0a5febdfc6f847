"""The training loop: data -> mesh -> step -> metrics, with evaluation and resumable checkpoints.

Host syncs happen only on log, eval and checkpoint steps; in between, steps are dispatched
asynchronously while the next batch is read and placed on the mesh.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import os
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from rankjax import checkpoint as checkpoint_lib
from rankjax import checkpoint_integrity, eval_scores, training_curves
from rankjax.config import ConfigError, config_to_json, validate
from rankjax.data import pipeline
from rankjax.early_stopping import EarlyStopping
from rankjax.experiment import Experiment, build, enable_compilation_cache
from rankjax.metric_writers import MetricWriter
from rankjax.partitioner import Partitioner
from rankjax.run_guard import RunGuard
from rankjax.tasks.base import TrainState
from rankjax.workdir_lock import WorkdirLock


# Test hooks: step N never finishes (the watchdog's tests); SIGTERM arrives right after step N.
STALL_ENV, SIGTERM_ENV = "RANKJAX_TEST_STALL_AT_STEP", "RANKJAX_TEST_SIGTERM_AT_STEP"


class NonFiniteLossError(RuntimeError):
  """Training stopped because the loss became NaN or infinite."""


def has_validation(config: ml_collections.ConfigDict, manifest: dict) -> bool:
  return bool(config.data.validation_fraction) or "validation" in manifest["splits"]


def _validation_source(config: ml_collections.ConfigDict, manifest: dict) -> str:
  """Which records validate, for the start line."""
  if "validation" in manifest["splits"]:
    return f"the dataset's validation split ({manifest['splits']['validation']['num_records']:,} records)"
  return (f"a validation split of {config.data.validation_fraction:g} of the train records "
          f"({config.data.validation_order}, never trained on)")


def evaluate(exp: Experiment, state: TrainState, split: str = "eval") -> dict[str, float]:
  """The task's eval metrics over a whole split, "eval" (the test split) or "validation" (padding
  examples or lists carry weight 0): each batch is added to the task's totals on device; only the
  totals come to the host."""
  config = exp.config
  it = pipeline.eval_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.eval_batch_size,
                              read_threads=config.data.read_threads, prefetch=config.data.prefetch_batches,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              spec=exp.task.batch_spec, verify=config.data.verify_checksums,
                              invalid_records=config.data.invalid_records, split=split,
                              holdout=pipeline.holdout_of(config.data, exp.manifest),
                              length_buckets=config.eval.length_buckets)
  eval_shardings = exp.task.batch_spec.with_weight().shardings(exp.partitioner)
  totals = exp.eval_prepare_fn(state, exp.eval_init_fn())
  for batch in it:
    totals = exp.eval_fn(state, exp.partitioner.place_batch(batch, eval_shardings), totals)
  return exp.task.eval_metrics(jax.tree.map(_host, totals))


class _DeviceBatches:
  """Reads the next batch and places it on the mesh (one step ahead of the step that uses it);
  returns it with the Grain state just after it, which a checkpoint taken after it must record."""

  def __init__(self, iterator, partitioner: Partitioner, shardings: dict):
    self.iterator, self.partitioner, self.shardings = iterator, partitioner, shardings

  def __next__(self):
    batch = self.partitioner.place_batch(next(self.iterator), self.shardings)
    return batch, self.iterator.get_state()


def _host(x: jax.Array) -> np.ndarray:
  """A replicated array's value on this host (works when other processes hold other devices)."""
  return np.asarray(x.addressable_data(0))


def _plot_curves(workdir: pathlib.Path) -> None:
  """training_curves.png from metrics.jsonl, if matplotlib is installed (the `plot` extra)."""
  try:
    training_curves.write(workdir)
  except ImportError:
    _note(f"no {training_curves.PLOT_FILE}: pip install 'rankjax[plot]' (matplotlib) to get one")


class Preempted(RuntimeError):
  """Training stopped on SIGTERM/SIGINT after writing a checkpoint; rerun the command to resume."""


def _note(message: str) -> None:
  """A progress line on stderr (seen in logs where no progress bar is drawn)."""
  print(f"rankjax: {message}", file=sys.stderr, flush=True)


def _restore(exp: Experiment, checkpointer: checkpoint_lib.Checkpointer, step: int, seed: int, data_state: dict):
  """The train state of a checkpoint, verified against its saved digests, re-laid-out if it was
  saved with another embedding layout (another device count or sharding plan)."""
  engine = exp.task.engine
  abstract = checkpoint_lib.abstract_like(jax.eval_shape(exp.init_fn, seed), exp.state_shardings)
  saved_layout = data_state.get("embedding_layout")
  same_layout = (engine is None or saved_layout is None
                 or saved_layout == json.loads(json.dumps(engine.layout_descriptor())))
  if not same_layout:
    abstract = abstract.replace(embedding=engine.abstract_state_for(saved_layout))
  state, _ = checkpointer.restore(step, abstract)
  if "digests" in data_state:
    checkpoint_integrity.verify(state, data_state["digests"], step)
  if same_layout:
    return state, False
  relayout = exp.partitioner.jit(lambda e: engine.relayout(e, saved_layout), in_shardings=None,
                                 out_shardings=exp.state_shardings.embedding)
  return state.replace(embedding=relayout(state.embedding)), True


def _restore_latest_good(exp: Experiment, config: ml_collections.ConfigDict, workdir: pathlib.Path,
                         checkpointer: checkpoint_lib.Checkpointer, fingerprint: dict, log):
  """(state, data state, relaid, step, checkpointer) of the newest checkpoint that restores and
  verifies; each that does not is reported in one line and moved aside to checkpoints_corrupt/
  (never deleted). A checkpoint of other data or another model is refused (ConfigError)."""
  while (step := checkpointer.latest_step()) is not None:
    try:
      data_state = checkpointer.restore_data(step)
      warning = checkpoint_integrity.check_compatible(data_state.get("fingerprint"), fingerprint, step, str(workdir),
                                                      config.checkpoint.allow_data_change)
      if warning:
        _note(warning)
      state, relaid = _restore(exp, checkpointer, step, config.seed, data_state)
      return state, data_state, relaid, step, checkpointer
    except ConfigError:
      raise
    except Exception as e:  # Corrupt bytes, a missing item, an unreadable store: not this step.
      aside = workdir / "checkpoints_corrupt" / f"{step}-{int(time.time())}"
      if jax.process_index() == 0:
        aside.parent.mkdir(exist_ok=True)
        shutil.move(str(workdir / "checkpoints" / str(step)), str(aside))
      multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
      _note(f"checkpoint step {step} cannot be trusted ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
            f"moved aside to {aside}; trying the previous one")
      checkpointer.close()
      checkpointer = _checkpointer(config, workdir, exp.task.LOWER_IS_BETTER)
  return None, None, False, None, checkpointer


def _checkpointer(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                  lower_is_better: tuple[str, ...]) -> checkpoint_lib.Checkpointer:
  """The run's checkpoints: the latest checkpoint.max_to_keep, plus the best step by
  checkpoint.keep_best_metric or by the early-stopping metric."""
  stopping = EarlyStopping.from_config(config, lower_is_better)
  return checkpoint_lib.Checkpointer(
      str(workdir / "checkpoints"), max_to_keep=config.checkpoint.max_to_keep,
      keep_best_metric=config.checkpoint.keep_best_metric, async_save=config.checkpoint.async_save,
      keep_best={stopping.checkpoint_metric: stopping.lower_is_better} if stopping else None)


def _finished_summary(workdir: pathlib.Path, steps: int, latest: int | None,
                      checkpointer: checkpoint_lib.Checkpointer, log) -> dict[str, Any] | None:
  """The summary of a workdir already trained to `steps`, or stopped early (nothing is redone or
  appended), or None."""
  summary_path = workdir / "summary.json"
  if latest is None or not summary_path.is_file():
    return None
  summary = json.loads(summary_path.read_text())
  if summary.get("steps") != latest:
    return None
  if latest < steps:
    # Stopped early? (An unreadable checkpoint is reported by the restore that follows.)
    try:
      stopped = checkpointer.restore_data(latest).get("early_stopping", {}).get("stopped", False)
    except Exception:  # noqa: BLE001 - the resume path names the damage and falls back.
      stopped = False
    if not stopped:
      return None
    log(f"rankjax: {workdir} stopped early at step {latest} (summary.json); nothing to do.")
    return summary
  log(f"rankjax: {workdir} is already trained to step {latest} (summary.json); nothing to do. "
      "Raise --config.train.steps to train further.")
  return summary


def _window_means(window: list[dict[str, float]]) -> dict[str, float | None]:
  """The log event of a window of steps: each metric's mean over the steps not skipped."""
  kept = [m for m in window if not m["skipped"]]
  return {k: (float(np.mean([m[k] for m in kept])) if kept else None) for k in window[0] if k != "skipped"}


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, devices=None,
          log=print) -> dict[str, Any]:
  """Trains (or resumes) the experiment in `workdir`; returns the final summary. Process 0 holds
  the workdir's lock for the run (a second run on it exits 2 naming the holder)."""
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  if jax.process_index() != 0:
    return _train(config, workdir, devices, log)
  with WorkdirLock(pathlib.Path(workdir)):
    return _train(config, workdir, devices, log)


def _train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, devices, log) -> dict[str, Any]:
  # ---- Set-up: validate, build the mesh, data and jitted step.
  validate(config, len(devices) if devices is not None else jax.device_count())
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  enable_compilation_cache(config)
  train_config = config.train
  is_chief = jax.process_index() == 0
  if not config.data.path and is_chief:
    _note(f"synthetic data ({config.data.synthetic.num_train:,} train records) in {workdir / 'data'}, generated if absent")
  exp = build(config, workdir, devices)
  if is_chief:  # What `rankjax export` rebuilds the model from (parsed, never executed).
    (workdir / "config.json.tmp").write_text(config_to_json(config))
    (workdir / "config.json.tmp").replace(workdir / "config.json")
  validating = has_validation(config, exp.manifest)
  stopping = EarlyStopping.from_config(config, exp.task.LOWER_IS_BETTER)
  if stopping and not validating:
    raise ConfigError("train.early_stopping.metric", "needs a validation split: set data.validation_fraction "
                      "(or use a dataset converted with one; the eval split is the test split), or set "
                      "train.early_stopping.metric='' to score the test split at the last step")
  if stopping:  # A misspelt metric is named now, not at the first evaluation.
    stopping.check_metric(exp.task.eval_metric_names())
  checkpointer = _checkpointer(config, workdir, exp.task.LOWER_IS_BETTER)
  latest = checkpointer.latest_step()
  finished = _finished_summary(workdir, train_config.steps, latest, checkpointer, log)
  if finished is not None:
    checkpointer.close()
    return finished
  # The eval (and validation) splits are opened (and checked) now, not first at the end of training.
  for split in ("eval", "validation") if validating else ("eval",):
    pipeline.eval_iterator(exp.data_dir, exp.manifest, global_batch_size=train_config.eval_batch_size,
                           process_index=jax.process_index(), process_count=jax.process_count(),
                           spec=exp.task.batch_spec, verify=config.data.verify_checksums,
                           invalid_records=config.data.invalid_records, split=split,
                           holdout=pipeline.holdout_of(config.data, exp.manifest))
  writer = MetricWriter(workdir, enabled=is_chief)
  normalization = getattr(exp.task, "normalization", None)
  if is_chief and normalization is not None and normalization.log1p.any():
    _note(f"task.normalize={normalization.mode!r}: log1p, then standardised, for {normalization.log1p.sum()} of "
          f"{normalization.log1p.size} dense features (summary.json lists them)")
  embedding_layout = exp.task.engine.layout_descriptor() if exp.task.engine else None
  fingerprint = checkpoint_integrity.fingerprint(config, exp.manifest, jax.eval_shape(exp.init_fn, config.seed).params)
  guard = RunGuard(train_config.step_timeout_s, train_config.stop_grace_s, checkpointer.latest_step)
  with jax.set_mesh(exp.partitioner.mesh), guard:
    # ---- Initialise or resume (from the newest checkpoint that verifies).
    state, data_state, relaid, latest, checkpointer = _restore_latest_good(
        exp, config, workdir, checkpointer, fingerprint, log)
    guard.last_committed = checkpointer.latest_step
    if latest is not None:
      dropped = writer.truncate_after(latest)
      log(f"rankjax: resuming from checkpoint step {latest} in {workdir / 'checkpoints'}"
          + (" (embedding tables re-laid-out for this mesh)" if relaid else "")
          + (f" (dropped {dropped} metric events logged after it)" if dropped else ""))
    else:
      state = exp.init_fn(config.seed)
      writer.truncate_after(0)
    start = int(_host(state.step))

    train_iter = pipeline.train_iterator(
        exp.data_dir, exp.manifest, global_batch_size=train_config.batch_size,
        num_batches=max(train_config.steps, start),
        seed=config.data.shuffle_seed, read_threads=config.data.read_threads,
        prefetch=config.data.prefetch_batches,
        process_index=jax.process_index(), process_count=jax.process_count(),
        spec=exp.task.batch_spec, verify=config.data.verify_checksums,
        invalid_records=config.data.invalid_records, holdout=pipeline.holdout_of(config.data, exp.manifest),
        length_window=train_config.length_buckets)
    # The current log window's step metrics: a checkpoint between log steps carries them, so a
    # resumed run logs the same means as an uninterrupted one.
    log_window: list[dict[str, float]] = []
    if data_state is not None:
      train_iter.set_state(data_state["iterator"])
      log_window = list(data_state.get("log_window", []))
      if stopping and "early_stopping" in data_state:
        stopping.load(data_state["early_stopping"])
    end = start if stopping and stopping.stopped else train_config.steps

    def save(step: int, iterator_state: dict, metrics: dict | None = None):
      checkpointer.save(step, state, {"iterator": iterator_state, "embedding_layout": embedding_layout,
                                      "inference_block": exp.task.inference_block,
                                      "log_window": log_window, "fingerprint": fingerprint,
                                      "digests": checkpoint_integrity.digests(state),
                                      **({"early_stopping": stopping.state()} if stopping else {})},
                        metrics=metrics)

    # ---- Train: dispatch steps asynchronously; sync only to log, evaluate or checkpoint.
    batches = _DeviceBatches(train_iter, exp.partitioner, exp.batch_shardings)
    show_bar = train_config.progress_bar and is_chief and sys.stderr.isatty()
    progress = tqdm(total=train_config.steps, initial=start, unit="step", dynamic_ncols=True, disable=not show_bar)
    pending, window_start, window_time = [], start, time.perf_counter()
    trained_examples, trained_time, skipped_total, final = 0, 0.0, 0, None
    in_flight: list[tuple[int, jax.Array]] = []
    last_line, last_loss = time.monotonic(), None
    consumed_state = train_iter.get_state()
    if start < end:
      if is_chief:
        _note(f"compiling the train step, then training steps {start + 1}..{train_config.steps}"
              + (f", evaluating {_validation_source(config, exp.manifest)} "
                 + (f"every {train_config.eval_every} steps" if train_config.eval_every else "at the end")
                 if validating else "")
              + (f", stopping early when validation {stopping.metric} has not improved for "
                 f"{stopping.patience} evals" if stopping and stopping.patience else ""))
      batch, batch_state = next(batches)
    stall_at, sigterm_at = int(os.environ.get(STALL_ENV, "0")), int(os.environ.get(SIGTERM_ENV, "0"))
    for step in range(start, end):
      if step + 1 == stall_at:  # Test hook: a step that never finishes.
        time.sleep(1e9)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = exp.train_fn(state, batch)
      consumed_state, done = batch_state, step + 1
      if done == sigterm_at:
        os.kill(os.getpid(), signal.SIGTERM)
      pending.append(metrics)
      # Bounded steps in flight: with many queued, two processes' CPU collectives deadlocked.
      in_flight.append((done, metrics["loss"]))
      if len(in_flight) > train_config.max_steps_in_flight:
        finished_step, loss = in_flight.pop(0)
        loss.block_until_ready()
        guard.progress(finished_step)
      if done < train_config.steps:
        batch, batch_state = next(batches)
      progress.update(1)
      preempted = guard.reached(done)
      is_ckpt = done % config.checkpoint.every_steps == 0 or done == train_config.steps or preempted
      is_log = done % train_config.log_every == 0 or done == train_config.steps
      if is_log or is_ckpt:
        # One host sync for the whole window; nothing non-finite is ever checkpointed.
        window = [{k: _host(v).item() for k, v in m.items()} for m in pending]
        losses = np.array([m["loss"] for m in window], np.float64)
        skipped = np.array([m["skipped"] for m in window], bool)
        bad = np.flatnonzero(~skipped & ~np.isfinite(losses))
        if bad.size:
          writer.write(window_start + int(bad[0]) + 1, "train", loss=None, error="non-finite loss")
          raise NonFiniteLossError(
              f"loss became {losses[bad[0]]} at step {window_start + int(bad[0]) + 1}; "
              f"the last checkpoint is step {checkpointer.latest_step()}. Lower train.dense_learning_rate / "
              "embedding.learning_rate, check the data, or set train.on_non_finite=skip.")
        guard.progress(done)
        in_flight.clear()
        skipped_total += int(skipped.sum())
        log_window += window
        now = time.perf_counter()
        if window_start > start:  # The first window includes compilation: left out of the throughput.
          trained_examples += len(losses) * train_config.batch_size
          trained_time += now - window_time
        if is_log:
          rate = len(losses) * train_config.batch_size / (now - window_time)
          means = _window_means(log_window)
          last_loss = means["loss"]
          writer.write(done, "train", **means, **{exp.task.RATE_KEY: rate},
                       **({"skipped_steps": sum(bool(m["skipped"]) for m in log_window)}
                          if train_config.on_non_finite == "skip" else {}))
          progress.set_postfix(loss=f"{last_loss if last_loss is not None else float('nan'):.4f}",
                               ex_per_s=f"{rate:,.0f}")
          log_window = []
        pending, window_start, window_time = [], done, now
      if is_chief and not show_bar and time.monotonic() - last_line >= train_config.progress_every_s:
        elapsed = trained_time or 1e-9
        rate = trained_examples / elapsed if trained_time else None
        eta = (train_config.steps - done) * train_config.batch_size / rate if rate else None
        _note(f"step {done}/{train_config.steps}"
              + (f", {rate:,.0f} examples/s" if rate else "")
              + (f", loss {last_loss:.4f}" if last_loss is not None else "")
              + (f", ETA {eta:,.0f} s" if eta is not None else ""))
        last_line = time.monotonic()
      checkpoint_metrics = None
      if done == train_config.steps or (train_config.eval_every and done % train_config.eval_every == 0):
        with guard.paused():
          evaluation = evaluate(exp, state, "validation" if validating else "eval")
        writer.write(done, "validation" if validating else "eval", **evaluation)
        final = None if validating else evaluation
        if config.checkpoint.keep_best_metric:
          checkpoint_metrics = exp.task.checkpoint_metrics(evaluation)
        if stopping:
          is_ckpt = True  # Every evaluated step may become the best one, which the end restores.
          if stopping.update(done, evaluation):
            checkpoint_metrics = {**(checkpoint_metrics or {}), stopping.checkpoint_metric: stopping.best_value}
        window_time = time.perf_counter()
      if is_ckpt:
        save(done, consumed_state, checkpoint_metrics)
      if stopping and stopping.stopped:
        if is_chief:
          _note(f"early stopping at step {done}: {stopping.describe()}")
        break
      if preempted and done < train_config.steps:
        with guard.paused():
          checkpointer.wait()
        checkpointer.close()
        writer.close()
        raise Preempted(f"stopped by signal after step {done}; checkpoint {done} is committed. "
                        "Rerun the same command to resume.")
    progress.close()

    # ---- Final evaluation: the test split at the best validation step (with early stopping), else
    # at the last step (already done when there is no validation split), and the summary.
    trained_step = int(_host(state.step))
    with guard.paused():
      scored = state
      if stopping and stopping.best_step is not None and stopping.best_step != trained_step:
        checkpointer.wait()
        scored, _ = _restore(exp, checkpointer, stopping.best_step, config.seed,
                             checkpointer.restore_data(stopping.best_step))
      if final is None:
        final = evaluate(exp, scored)
        writer.write(trained_step, "eval", **final,
                     **({"best_step": stopping.best_step} if stopping and stopping.best_step is not None else {}))
      if config.eval.write_scores:
        written = eval_scores.write(exp, scored, workdir / "eval_scores.parquet")
        if is_chief:
          _note(f"wrote the scores of {written:,} eval records to {workdir / 'eval_scores.parquet'}")
      checkpointer.wait()
    checkpointer.close()
  writer.close()
  summary = {"steps": trained_step, **exp.task.summary(final),
             exp.task.RATE_KEY: trained_examples / trained_time if trained_time else None,
             "skipped_steps": skipped_total}
  if normalization is not None:
    summary["normalization"] = normalization.record()
  if stopping:
    summary.update({"best_step": stopping.best_step, f"best_validation_{stopping.metric}": stopping.best_value,
                    "stopped_early": stopping.stopped})
  if is_chief:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot_curves(workdir)
  line = exp.task.final_line(summary)
  if stopping:
    line += f" [test split scored at step {stopping.best_step if stopping.best_step is not None else trained_step}: " \
            f"{stopping.describe()}]"
  log(line)
  return summary
