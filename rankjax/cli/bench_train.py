"""`rankjax bench train`: steady-state step time and samples/s of a config's compiled train step.

A few batches of the config's data are read and placed on the mesh before timing; the step then
cycles through them, and each step is timed to completion (block_until_ready) after `--warmup`
untimed steps. The median leaves out compilation and the input pipeline: it is the step alone,
like the PyTorch reference's ms/it. One JSON line per run on stdout.

  rankjax bench train --config configs/dlrm_small_cpu.py --steps 30
  rankjax bench train --config configs/dlrm_dcnv2_mlperf.py --config.data.row_scale=0.0001 \
      --config.train.batch_size=1024 --config.data.synthetic.num_train=50000
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import jax
import ml_collections
from absl import flags

from rankjax.cli.flags import config_path, run_command
from rankjax.config import validate
from rankjax.experiment import selected_devices
from rankjax.perf.bench import bench


def _define(fv: flags.FlagValues) -> None:
  flags.DEFINE_integer("steps", 20, "Timed steps.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("devices", None, "Use the first N devices (default: all).", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Where synthetic data is generated (default: a per-config folder "
                      "under the system temp dir, reused across runs).", flag_values=fv)


def main(argv: list[str]) -> int:
  """`rankjax bench train --config CFG [--steps N] [--warmup N] [--devices N] [--workdir DIR]`."""
  path = config_path(argv) or ""

  def body(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> None:
    devices = selected_devices(fv["devices"].value)
    validate(config, len(devices))
    stem = pathlib.Path(path.partition(":")[0]).stem
    workdir = pathlib.Path(fv["workdir"].value or pathlib.Path(tempfile.gettempdir()) / "rankjax_bench" / stem)
    record = bench(config, workdir, fv["steps"].value, fv["warmup"].value, devices)
    if jax.process_index() == 0:
      overrides = [a for a in argv if a.startswith("--config.")]
      print(json.dumps({"config": path, "overrides": overrides, **record}), flush=True)

  return run_command(argv, "rankjax bench train", _define, body)

