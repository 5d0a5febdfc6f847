"""Metric sinks: WORKDIR/metrics.jsonl (one JSON object per event) and TensorBoard event files."""

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
    if enabled:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def truncate_after(self, step: int) -> int:
    """On resume: drops events of steps after the restored checkpoint (they are redone); returns how many."""
    if not self.enabled or not self.path.exists():
      return 0
    kept, dropped = [], 0
    for line in self.path.read_text().splitlines():
      if line.strip() and json.loads(line).get("step", 0) > step:
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
