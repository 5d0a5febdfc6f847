"""Nothing hangs: SIGTERM/SIGINT handling and a step watchdog for the training loop.

The first SIGTERM/SIGINT asks the loop to checkpoint after the current step and exit 4; if that
step does not finish within `stop_grace_s`, or a second signal arrives, the process exits at once
(status 5) saying which step is the last committed checkpoint. With `step_timeout_s` > 0, a step
that makes no progress for that long (a stuck collective, a dead peer's device) exits the same
way, naming the step. A watchdog thread does the waiting, so it works whatever the main thread is
blocked in. With several processes JAX's coordination service owns SIGTERM and agrees on a
common stop step; the watchdog still runs in each.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import jax
from jax.experimental import multihost_utils

EXIT_STALLED = 5  # Stopped without a checkpoint of the current step: rerun to resume from the last.


class RunGuard:
  """Use as a context manager around the loop; call `progress(step)` after each finished step."""

  def __init__(self, step_timeout_s: float, stop_grace_s: float, last_committed: Callable[[], int | None],
               exit: Callable[[int], None] = os._exit):
    self.step_timeout_s, self.stop_grace_s = step_timeout_s, stop_grace_s
    self.last_committed = last_committed  # -> the latest committed checkpoint step (for the message).
    self._exit = exit
    self.requested = threading.Event()
    self._requested_at = 0.0
    self._step, self._progress_at, self._armed = 0, time.monotonic(), False
    self._done = threading.Event()
    self._previous = {}
    self._thread = threading.Thread(target=self._watch, name="rankjax-watchdog", daemon=True)

  def __enter__(self) -> "RunGuard":
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._on_signal)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._done.set()
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _on_signal(self, signum, frame) -> None:
    if self.requested.is_set():  # A second signal: no more waiting.
      self._stop(f"second signal {signal.Signals(signum).name} after step {self._step}")
    self._requested_at = time.monotonic()
    self.requested.set()

  def progress(self, step: int) -> None:
    """Step `step` finished (the loop has its result): the watchdog's clock restarts. The first
    call arms the step timeout, so compilation of the first step is not timed."""
    self._step, self._progress_at, self._armed = step, time.monotonic(), True

  def paused(self):
    """A context in which the step timeout does not run (evaluation, checkpoint waits)."""
    guard = self

    class _Paused:
      def __enter__(self):
        guard._armed_before, guard._armed = guard._armed, False

      def __exit__(self, *exc):
        guard._progress_at, guard._armed = time.monotonic(), guard._armed_before

    return _Paused()

  def reached(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step` (agreed between processes when there are several)."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested.is_set()

  def _stop(self, why: str) -> None:
    committed = self.last_committed()
    print(f"rankjax: error: {why}; exiting without a checkpoint of it. The last committed checkpoint is "
          f"{'step ' + str(committed) if committed is not None else 'none'}: rerun the same command to resume.",
          file=sys.stderr, flush=True)
    self._exit(EXIT_STALLED)

  def _watch(self) -> None:
    while not self._done.wait(0.5):
      now = time.monotonic()
      if self.requested.is_set() and now - max(self._requested_at, self._progress_at) > self.stop_grace_s:
        self._stop(f"stop requested, but no step finished within train.stop_grace_s={self.stop_grace_s:g} s "
                   f"after step {self._step}")
      if self._armed and self.step_timeout_s > 0 and now - self._progress_at > self.step_timeout_s:
        self._stop(f"no step finished for train.step_timeout_s={self.step_timeout_s:g} s after step {self._step} "
                   f"(process {jax.process_index()} of {jax.process_count()})")
