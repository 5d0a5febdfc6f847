"""The `rankjax` command: `rankjax train --config CFG --workdir DIR [--config.a.b=v ...]`.

Config problems exit 2 with one line naming the key; a non-finite loss exits 3.
"""

from __future__ import annotations

import re
import sys

from absl import flags
from ml_collections import config_flags

USAGE = """usage: rankjax train --config configs/default.py --workdir DIR [--config.KEY=VALUE ...]

commands:
  train   train (or resume) the experiment of a config file in a workdir
"""

EXIT_CONFIG_ERROR = 2
EXIT_NON_FINITE = 3


def _fail(message: str, code: int) -> int:
  print(f"rankjax: error: {message}", file=sys.stderr)
  return code


def _diagnose_override(argv: list[str]) -> str | None:
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
                                                flag_values=fv, lock_config=True)
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
      return _fail(f"config file {config_path.partition(':')[0]} does not exist", EXIT_CONFIG_ERROR)
  try:
    config, workdir = _parse_train_flags(argv)
  except ConfigError as e:
    return _fail(str(e), EXIT_CONFIG_ERROR)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = _diagnose_override(argv) or str(e).strip().splitlines()[0]
    return _fail(message, EXIT_CONFIG_ERROR)

  from rankjax.train import NonFiniteLossError, train
  try:
    train(config, workdir)
  except ConfigError as e:
    return _fail(str(e), EXIT_CONFIG_ERROR)
  except DataError as e:
    return _fail(str(e), EXIT_CONFIG_ERROR)
  except NonFiniteLossError as e:
    return _fail(str(e), EXIT_NON_FINITE)
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if len(argv) >= 2 else EXIT_CONFIG_ERROR
  command, rest = argv[1], [argv[0]] + argv[2:]
  if command == "train":
    return train_command(rest)
  return _fail(f"unknown command {command!r}\n{USAGE}", EXIT_CONFIG_ERROR)


if __name__ == "__main__":
  sys.exit(main())
