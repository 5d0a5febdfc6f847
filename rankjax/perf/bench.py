"""Steady-state step time of a config's compiled train step (`rankjax bench train`).

The step cycles through a few device-resident batches, each step timed to completion
(block_until_ready) after untimed warm-up steps: the step alone, without compilation or input.
"""

from __future__ import annotations

import pathlib
import statistics
from collections.abc import Sequence

import jax
import ml_collections

from rankjax.experiment import prepare


def bench(config: ml_collections.ConfigDict, workdir: pathlib.Path, steps: int, warmup: int,
          devices: Sequence[jax.Device] | None = None) -> dict:
  """The steady-state record of one config: median step time and samples/s."""
  step = prepare(config, workdir, devices)
  step.run(warmup)
  median_s = statistics.median(step.run(steps))
  first = step.devices[0]
  return {"batch": config.train.batch_size, "step_ms_median": median_s * 1e3,
          "samples_per_sec": config.train.batch_size / median_s, "devices": len(step.devices),
          "backend": first.platform, "device_kind": first.device_kind, "steps": steps, "warmup": warmup,
          "compile_s": step.compile_s, "final_loss": float(step.last_loss.addressable_data(0))}
