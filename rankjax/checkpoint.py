"""Orbax checkpoints: one step directory holds the train state and the Grain iterator state.

Async saves (the device->host copy finishes before `save` returns, so the next step may donate
the buffers), tensorstore/OCDBT storage, restore onto any mesh from sharded abstract targets.
A step becomes visible only once committed (written to a temporary directory, then renamed):
a crash mid-save leaves the previous step as the latest, and the temporary directory is
removed on the next start. Retention: the latest `max_to_keep` plus the best by an eval metric.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

# Test hook: seconds to wait before each commit, so a test can kill a run inside a save.
COMMIT_DELAY_ENV = "RANKJAX_TEST_CHECKPOINT_COMMIT_DELAY_S"


def _delayed_barrier(delay_s: float):
  barrier = ocp.multihost.get_barrier_sync_fn()

  def sync(*args, **kwargs):
    time.sleep(delay_s)
    return barrier(*args, **kwargs)

  return sync


class Checkpointer:
  def __init__(self, directory: str, *, max_to_keep: int = 1, keep_best_metric: str = "", async_save: bool = True,
               read_only: bool = False, keep_best: dict[str, bool] | None = None):
    """keep_best_metric: also keep the step whose saved metrics rank best by this one (lower is
    better for losses); keep_best: more such metrics, each with whether lower is better (a step
    saved without one ranks last by it). read_only: restore only (`rankjax export`): nothing is
    saved, deleted or cleaned up, so a run training in the same directory is never disturbed."""
    path = directory if "://" in directory else os.path.abspath(directory)
    if read_only:
      self.manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
          read_only=True, create=False, cleanup_tmp_directories=False), item_names=("state", "data"))
      return
    policies = [checkpoint_managers.LatestN(max_to_keep)]
    keep_best = dict(keep_best or {})
    if keep_best_metric:
      keep_best[keep_best_metric] = keep_best_metric in ("logloss", "loss")
    for name, lower_is_better in keep_best.items():
      worst = math.inf if lower_is_better else -math.inf
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda metrics, name=name, worst=worst: metrics.get(name, worst), reverse=lower_is_better,
          n=1, keep_checkpoints_without_metrics=False))
    delay = float(os.environ.get(COMMIT_DELAY_ENV, "0"))
    async_options = ocp.options.AsyncOptions(barrier_sync_fn=_delayed_barrier(delay)) if delay else None
    # Orbax writes a step's metrics to disk (and reads them back when a manager opens the
    # directory) only when best_fn is set; without them a restarted run's BestN policies saw no
    # metrics on the earlier steps and deleted the best one at the next save. best_fn itself ranks
    # nothing here (the policies above do).
    self._tracks_metrics = bool(keep_best)
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies), async_options=async_options,
        best_fn=(lambda metrics: 0.0) if keep_best else None)
    self.manager = ocp.CheckpointManager(path, options=options, item_names=("state", "data"))
    # Orbax removes uncommitted (temporary) step directories in a background thread that close()
    # does not join (only the next save waits for it); an exit before that save, such as a data
    # error found at start, raced it and printed a traceback. Wait for it now: it is quick.
    await_cleanup = getattr(self.manager, "_maybe_await_cleanup_tmp_directory", None)
    if await_cleanup is not None:
      await_cleanup()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, metrics: dict[str, float] | None = None) -> None:
    if self._tracks_metrics and metrics is None:
      metrics = {}  # Saved too: a step without the metric ranks last, after a restart as before it.
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    data=ocp.args.JsonSave(data_state)), metrics=metrics)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores onto the shapes and shardings carried by `abstract_state` (ShapeDtypeStructs)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def restore_data(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` (abstract or concrete) carrying `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
