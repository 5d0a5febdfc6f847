"""Metric sinks: WORKDIR/metrics.jsonl (one JSON object per event) and TensorBoard event files.

On resume both forget what was logged after the restored step: metrics.jsonl is rewritten without
those events, and TensorBoard is told to purge them (a purge step in a new event file)."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any


class MetricWriter:
  """Writes events {"step", "split", ...}; process 0 only in multi-process runs."""

  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    self._tb_dir = str(pathlib.Path(workdir) / "tensorboard")
    if enabled:
      self._tb = _summary_writer(self._tb_dir)

  def truncate_after(self, step: int) -> int:
    """On resume: drops events of steps after the restored checkpoint (they are redone); returns how
    many. A torn last line (a crash while appending) is dropped too; any other unreadable line
    is an error naming it."""
    if not self.enabled:
      return 0
    self._tb.close()  # TensorBoard hides every event after `step` logged before this point.
    self._tb = _summary_writer(self._tb_dir, purge_step=step + 1)
    if not self.path.exists():
      return 0
    lines = self.path.read_text().splitlines()
    kept, dropped = [], 0
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        event = json.loads(line)
      except json.JSONDecodeError:
        if number == len(lines):
          dropped += 1
          continue
        raise ValueError(f"{self.path}:{number}: not a JSON event; fix or remove the line to resume") from None
      if event.get("step", 0) > step:
        dropped += 1
      else:
        kept.append(line)
    self.path.write_text("".join(k + "\n" for k in kept))
    return dropped

  def write(self, step: int, split: str, **values: Any) -> None:
    if not self.enabled:
      return
    event = {"step": int(step), "split": split, **values}
    with open(self.path, "a") as f:
      f.write(json.dumps(event) + "\n")
    for name, value in values.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        self._tb.add_scalar(f"{split}/{name}", value, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _summary_writer(directory: str, purge_step: int | None = None):
  from tensorboardX import SummaryWriter
  return SummaryWriter(directory, purge_step=purge_step)
