"""The `rankjax` command: `rankjax train --config CFG --workdir DIR [--config.a.b=v ...]`.

Config problems exit 2 with one line naming the key; a non-finite loss exits 3.
"""

from __future__ import annotations

import re
import sys

from absl import flags
from ml_collections import config_flags

USAGE = """usage: rankjax COMMAND ...

commands:
  train --config CFG --workdir DIR [--config.KEY=VALUE ...]
          train (or resume) the experiment of a config file in a workdir
  plan --config CFG [--devices N] [--device-memory BYTES] [--config.KEY=VALUE ...]
          print the embedding sharding plan: per table sharding and bytes per device
  bench embedding [--rows 100000,1000000,4000000] [--steps N] [--sharding S] [--collectives]
          time the sparse embedding engine against tables-as-optax-params
  bench data --path DIR       samples/s of the shuffled Grain pipeline
  bench train --config CFG    steady-state samples/s of a config's train step
  data criteo|table|letor ... ingest Criteo TSV, Parquet/CSV or LETOR/SVMlight into the binary layout
  profile --config CFG --workdir DIR [--steps N]
          XProf trace, HLO dumps and a roofline report of the train step
"""

EXIT_CONFIG_ERROR = 2
EXIT_NON_FINITE = 3
EXIT_PREEMPTED = 4  # A checkpoint was written on SIGTERM/SIGINT; rerun to resume.


def fail(message: str, code: int) -> int:
  print(f"rankjax: error: {message}", file=sys.stderr)
  return code


def diagnose_override(argv: list[str]) -> str | None:
  """Finds the first --config.KEY override that names no key of the loaded config file."""
  from rankjax.config import load_config_file
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None and "--config" in argv:
    path = argv[argv.index("--config") + 1]
  config_file, _, arg = (path or "").partition(":")
  try:
    config = load_config_file(config_file, arg or None)
  except Exception:  # The flag parser's own message is shown instead.
    return None
  for a in argv:
    m = re.match(r"--config\.([^=]+)", a)
    if not m:
      continue
    node, parts = config, m.group(1).split(".")
    for i, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node.keys():
        return f"config key '{'.'.join(parts[:i + 1])}': unknown key (from {a.split('=')[0]})"
      node = node[part]
  return None


def _parse_train_flags(argv: list[str]):
  fv = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                                flag_values=fv, lock_config=True, sys_argv=argv)
  workdir_flag = flags.DEFINE_string("workdir", None, "Output directory: checkpoints, metrics, data.",
                                     flag_values=fv)
  fv(argv)
  if config_flag.value is None or not fv["config"].present:
    raise ValueError("--config is required (for example --config configs/default.py)")
  if not workdir_flag.value:
    raise ValueError("--workdir is required")
  return config_flag.value, workdir_flag.value


def train_command(argv: list[str]) -> int:
  from rankjax.config import ConfigError
  from rankjax.data.layout import DataError

  config_arg = next((a for a in argv if a.startswith("--config=")), None)
  config_path = config_arg.split("=", 1)[1] if config_arg else (
      argv[argv.index("--config") + 1] if "--config" in argv and argv.index("--config") + 1 < len(argv) else None)
  if config_path is not None:
    import os
    if not os.path.isfile(config_path.partition(":")[0]):
      return fail(f"config file {config_path.partition(':')[0]} does not exist", EXIT_CONFIG_ERROR)
  try:
    config, workdir = _parse_train_flags(argv)
  except ConfigError as e:
    return fail(str(e), EXIT_CONFIG_ERROR)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = diagnose_override(argv) or " ".join(str(e).split())
    return fail(message, EXIT_CONFIG_ERROR)

  from rankjax import distributed
  from rankjax.train import NonFiniteLossError, Preempted, train
  try:
    distributed.initialize(config)
    train(config, workdir)
  except ConfigError as e:
    return fail(str(e), EXIT_CONFIG_ERROR)
  except DataError as e:
    return fail(str(e), EXIT_CONFIG_ERROR)
  except NonFiniteLossError as e:
    return fail(str(e), EXIT_NON_FINITE)
  except Preempted as e:
    print(f"rankjax: {e}", file=sys.stderr)
    return EXIT_PREEMPTED
  return 0


def plan_command(argv: list[str]) -> int:
  """`rankjax plan`: needs the device count before jax starts, so it sets up simulated CPU devices."""
  import os
  devices = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--devices=")), None)
  if "--devices" in argv:
    devices = int(argv[argv.index("--devices") + 1])
  if devices and "jax" not in sys.modules and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={devices}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
  from rankjax import plan_report
  from rankjax.config import ConfigError
  from rankjax.planner import PlanError
  fv = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file("config", None, "Experiment config file.", flag_values=fv,
                                                lock_config=True, sys_argv=argv)
  flags.DEFINE_integer("devices", None, "Devices to plan for (default: all visible).", flag_values=fv)
  flags.DEFINE_integer("device_memory", None, "Bytes of memory per device; the plan must fit.", flag_values=fv)
  argv = [a.replace("--device-memory", "--device_memory") for a in argv]
  try:
    fv(argv)
    if config_flag.value is None:
      raise ValueError("--config is required")
    plan_report.print_plan(config_flag.value, fv["devices"].value, fv["device_memory"].value)
  except (ConfigError, PlanError) as e:
    return fail(str(e), EXIT_CONFIG_ERROR)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    return fail(diagnose_override(argv) or " ".join(str(e).split()), EXIT_CONFIG_ERROR)
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if len(argv) >= 2 else EXIT_CONFIG_ERROR
  command, rest = argv[1], [argv[0]] + argv[2:]
  if command == "train":
    return train_command(rest)
  if command == "plan":
    return plan_command(rest)
  if command == "bench" and len(rest) > 1 and rest[1] == "embedding":
    from rankjax import bench_embedding
    return bench_embedding.main(rest[2:])
  if command == "bench" and len(rest) > 1 and rest[1] == "data":
    from rankjax.data import bench_data
    return bench_data.main(rest[2:])
  if command == "bench" and len(rest) > 1 and rest[1] == "train":
    from rankjax import bench_train
    return bench_train.main(rest[2:])
  if command == "data":
    from rankjax.data import data_cli
    return data_cli.main(rest[1:])
  if command == "profile":
    from rankjax import profile
    return profile.main(rest[1:])
  return fail(f"unknown command {command!r}\n{USAGE}", EXIT_CONFIG_ERROR)


if __name__ == "__main__":
  sys.exit(main())
