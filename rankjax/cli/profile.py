"""`rankjax profile --config CFG --workdir DIR [--steps N] [--warmup N] [--devices N]`: the train
step's XProf trace, HLO and roofline report (see rankjax.perf.profiling)."""

from __future__ import annotations

import pathlib

import jax
import ml_collections
from absl import flags

from rankjax.cli.flags import run_command
from rankjax.config import validate
from rankjax.experiment import selected_devices
from rankjax.perf.profiling import format_report, profile


def _define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "Output directory: trace, HLO, report (and synthetic data).", flag_values=fv)
  flags.mark_flag_as_required("workdir", flag_values=fv)
  flags.DEFINE_integer("steps", 10, "Steps timed, and steps traced.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("devices", None, "Use the first N devices (default: all).", flag_values=fv)


def main(argv: list[str]) -> int:
  """`rankjax profile --config CFG --workdir DIR [--steps N] [--warmup N] [--devices N]`."""

  def body(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> None:
    devices = selected_devices(fv["devices"].value)
    validate(config, len(devices))
    report = profile(config, pathlib.Path(fv["workdir"].value), fv["steps"].value, fv["warmup"].value, devices)
    if jax.process_index() == 0:
      print(format_report(report), flush=True)

  return run_command(argv, "rankjax profile", _define, body)

