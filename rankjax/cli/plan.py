"""`rankjax plan --config CFG [--devices N] [--device-memory BYTES] [--predict-time [--device-kind K]]`:
the embedding sharding plan per table and bytes per device (rankjax.perf.plan_report), and with
--predict-time each candidate plan's predicted step time on device kind K (cpu: this host,
calibrated; h100, h200, a100, ...: datasheet peaks) and the fastest that fits. jax is imported
only after the simulated device count is set."""

from __future__ import annotations

import os
import sys

import ml_collections
from absl import flags

from rankjax.cli.flags import run_command


def _define(fv: flags.FlagValues) -> None:
  flags.DEFINE_integer("devices", None, "Devices to plan for (default: all visible).", flag_values=fv)
  flags.DEFINE_integer("device_memory", None, "Bytes of memory per device; the plan must fit.", flag_values=fv)
  flags.DEFINE_bool("predict_time", False, "Compile the step for each candidate plan and predict its step time "
                    "(two compilations per plan).", flag_values=fv)
  flags.DEFINE_enum("device_kind", "cpu", ["cpu", "h100", "h100-pcie", "h200", "a100", "a100-40gb"],
                    "The device kind --predict-time predicts for.", flag_values=fv)


def main(argv: list[str]) -> int:
  """`rankjax plan --config CFG [--devices N] [--device-memory BYTES]`. It needs the device count
  before jax starts, so on a CPU it sets up that many simulated devices first."""
  devices = next((a.split("=", 1)[1] for a in argv if a.startswith("--devices=")), None)
  if "--devices" in argv[:-1]:
    devices = argv[argv.index("--devices") + 1]
  if (devices and devices.isdigit() and int(devices) > 0 and "jax" not in sys.modules
      and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={devices}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
  argv = [a.replace("--device-memory", "--device_memory").replace("--predict-time", "--predict_time")
          .replace("--device-kind", "--device_kind") for a in argv]

  from rankjax.embedding.planner import PlanError
  from rankjax.perf.plan_report import print_plan

  def body(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> None:
    from rankjax.experiment import UsageError
    for name in ("devices", "device_memory"):
      if fv[name].value is not None and fv[name].value < 1:
        raise UsageError(f"--{name.replace('_', '-')}={fv[name].value}: must be >= 1")
    print_plan(config, fv["devices"].value, fv["device_memory"].value,
               fv["device_kind"].value if fv["predict_time"].value else None)

  return run_command(argv, "rankjax plan", _define, body, errors=(PlanError,))
