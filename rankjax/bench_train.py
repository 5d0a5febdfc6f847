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

import dataclasses
import json
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from rankjax import train as train_lib
from rankjax.config import ConfigError, validate
from rankjax.data import pipeline
from rankjax.data.layout import DataError
from rankjax.train_step import TrainState

DISTINCT_BATCHES = 8  # Batches kept on the devices and cycled through while timing.


class UsageError(ValueError):
  """A command-line value that cannot work (exit 2)."""


@dataclasses.dataclass
class CompiledStep:
  """A config's train step compiled for its first batch, with its state and device-resident batches."""
  exp: train_lib.Experiment
  lowered: jax.stages.Lowered
  compiled: jax.stages.Compiled
  compile_s: float  # Lowering + compilation.
  state: TrainState
  batches: list[dict[str, jax.Array]]
  steps_done: int = 0
  last_loss: jax.Array | None = None  # The loss of the last step run.

  @property
  def devices(self) -> list[jax.Device]:
    return list(self.exp.partitioner.mesh.devices.flat)

  def run(self, steps: int) -> list[float]:
    """Runs `steps` steps; returns each one's seconds, dispatch to completion."""
    seconds = []
    with jax.set_mesh(self.exp.partitioner.mesh):
      for _ in range(steps):
        batch = self.batches[self.steps_done % len(self.batches)]
        start = time.perf_counter()
        with jax.profiler.StepTraceAnnotation("train", step_num=self.steps_done):
          self.state, metrics = self.compiled(self.state, batch)
          jax.block_until_ready((self.state, metrics))
        seconds.append(time.perf_counter() - start)
        self.steps_done += 1
        self.last_loss = metrics["loss"]
    return seconds


def prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path, devices: Sequence[jax.Device] | None = None,
            num_batches: int = DISTINCT_BATCHES) -> CompiledStep:
  """Builds the experiment (generating synthetic data under `workdir` if needed), initialises the
  state, places `num_batches` training batches on the mesh and compiles the step."""
  exp = train_lib.build(config, workdir, devices)
  iterator = pipeline.train_iterator(
      exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size, num_batches=num_batches,
      seed=config.data.shuffle_seed, read_threads=config.data.read_threads, prefetch=config.data.prefetch_batches,
      process_index=jax.process_index(), process_count=jax.process_count())
  with jax.set_mesh(exp.partitioner.mesh):
    batches = [exp.partitioner.place_batch(b) for b in iterator]
    state = exp.init_fn(config.seed)
    start = time.perf_counter()
    lowered = exp.train_fn.lower(state, batches[0])
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
  return CompiledStep(exp, lowered, compiled, compile_s, state, batches)


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


# ---- Command-line plumbing shared with `rankjax profile`.

def parse_config_flags(argv: list[str], program: str, define: Callable[[flags.FlagValues], None]
                       ) -> tuple[ml_collections.ConfigDict, flags.FlagValues]:
  """--config CFG [--config.KEY=V ...] plus the flags `define` adds; argv excludes the program name."""
  fv = flags.FlagValues()
  # config_flags finds the --config.KEY overrides in sys.argv unless given the argument list.
  config_flag = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                                flag_values=fv, lock_config=True, sys_argv=[program, *argv])
  define(fv)
  fv([program, *argv])
  if config_flag.value is None or not fv["config"].present:
    raise ValueError("--config is required (for example --config configs/default.py)")
  return config_flag.value, fv


def selected_devices(count: int | None) -> list[jax.Device]:
  """The first `count` devices (all when None)."""
  devices = jax.devices()
  if count is not None and not 0 < count <= len(devices):
    raise UsageError(f"--devices={count}: {len(devices)} devices are visible")
  return devices[:count] if count else devices


def run_command(argv: list[str], program: str, define: Callable[[flags.FlagValues], None],
                body: Callable[[ml_collections.ConfigDict, flags.FlagValues], None]) -> int:
  """Parses flags and runs `body`; config and data problems exit 2 with one line naming the key."""
  from rankjax.cli import EXIT_CONFIG_ERROR, diagnose_override, fail
  try:
    config, fv = parse_config_flags(argv, program, define)
  except ConfigError as e:
    return fail(str(e), EXIT_CONFIG_ERROR)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    return fail(diagnose_override(argv) or " ".join(str(e).split()), EXIT_CONFIG_ERROR)
  try:
    body(config, fv)
  except (ConfigError, DataError, UsageError) as e:
    return fail(str(e), EXIT_CONFIG_ERROR)
  return 0


def _define(fv: flags.FlagValues) -> None:
  flags.DEFINE_integer("steps", 20, "Timed steps.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("devices", None, "Use the first N devices (default: all).", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Where synthetic data is generated (default: a per-config folder "
                      "under the system temp dir, reused across runs).", flag_values=fv)


def main(argv: list[str]) -> int:
  """`rankjax bench train --config CFG [--steps N] [--warmup N] [--devices N] [--workdir DIR]`."""
  config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
                     argv[argv.index("--config") + 1] if "--config" in argv[:-1] else "")

  def body(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> None:
    devices = selected_devices(fv["devices"].value)
    validate(config, len(devices))
    stem = pathlib.Path(config_path.partition(":")[0]).stem
    workdir = pathlib.Path(fv["workdir"].value or pathlib.Path(tempfile.gettempdir()) / "rankjax_bench" / stem)
    record = bench(config, workdir, fv["steps"].value, fv["warmup"].value, devices)
    if jax.process_index() == 0:
      overrides = [a for a in argv if a.startswith("--config.")]
      print(json.dumps({"config": config_path, "overrides": overrides, **record}), flush=True)

  return run_command(argv, "rankjax bench train", _define, body)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
