"""The flag plumbing every config-driven command shares: `--config CFG [--config.KEY=V ...]`
plus command flags, exit codes, and errors as one line naming the key."""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable

import ml_collections
from absl import flags
from ml_collections import config_flags

EXIT_FAILURE = 1  # An unexpected error (rerun with RANKJAX_DEBUG=1 for its traceback).
EXIT_CONFIG_ERROR = 2  # Something the user can fix: a config key, a file, a flag, the data.
EXIT_NON_FINITE = 3
EXIT_PREEMPTED = 4  # A checkpoint was written on SIGTERM/SIGINT; rerun to resume.


def fail(message: str, code: int) -> int:
  """Prints the one-line error (after the traceback of the error being handled, with
  RANKJAX_DEBUG=1) and returns the exit code."""
  if os.environ.get("RANKJAX_DEBUG") == "1" and sys.exc_info()[0] is not None:
    traceback.print_exc()
  print(f"rankjax: error: {message}", file=sys.stderr)
  return code


def config_path(argv: list[str]) -> str | None:
  """The value of --config (CFG or CFG:ARG) in `argv`, if given."""
  value = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if value is None and "--config" in argv[:-1]:
    value = argv[argv.index("--config") + 1]
  return value


def diagnose_override(argv: list[str]) -> str | None:
  """Finds the first --config.KEY override that names no key of the loaded config file."""
  from rankjax.config import load_config_file
  config_file, _, arg = (config_path(argv) or "").partition(":")
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


def parse_config_flags(argv: list[str], program: str, define: Callable[[flags.FlagValues], None]
                       ) -> tuple[ml_collections.ConfigDict, flags.FlagValues]:
  """--config CFG [--config.KEY=V ...] plus the flags `define` adds; argv excludes the program name."""
  path = config_path(argv)
  if path is not None:  # Loaded once first, so a broken config file fails with one line naming it.
    from rankjax.config import load_config_file
    file, _, arg = path.partition(":")
    load_config_file(file, arg or None)
  fv = flags.FlagValues()
  # config_flags finds the --config.KEY overrides in sys.argv unless given the argument list.
  config_flag = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                                flag_values=fv, lock_config=True, sys_argv=[program, *argv])
  define(fv)
  fv([program, *argv])
  if config_flag.value is None or not fv["config"].present:
    raise ValueError("--config is required (for example --config configs/default.py)")
  return config_flag.value, fv


def command_help(program: str, define: Callable[[flags.FlagValues], None]) -> str:
  """The `--help` text of a config-driven command: its flags, and how to see the config's keys."""
  fv = flags.FlagValues()
  flags.DEFINE_string("config", None, "Experiment config file (configs/*.py), optionally FILE:ARG.", flag_values=fv)
  define(fv)
  lines = [f"usage: {program} --config CFG [flags] [--config.KEY=VALUE ...]", "", "flags:"]
  for name in sorted(fv):
    flag = fv[name]
    default = "" if flag.default is None else f" (default: {flag.default})"
    lines.append(f"  --{name}: {flag.help}{default}")
  lines += ["", "Any config key can be overridden: --config.train.steps=2000. Every key with its value,",
            "default and type: rankjax config show --config CFG [--config.KEY=VALUE ...]"]
  return "\n".join(lines)


def run_command(argv: list[str], program: str, define: Callable[[flags.FlagValues], None],
                body: Callable[[ml_collections.ConfigDict, flags.FlagValues], int | None],
                errors: tuple[type[Exception], ...] = ()) -> int:
  """Parses flags and runs `body`; config and data problems (and `errors`) exit 2 with one line.
  `--help` / `-h` prints the command's flags."""
  from rankjax.config import ConfigError
  from rankjax.data.layout import DataError
  from rankjax.experiment import UsageError
  if "--help" in argv or "-h" in argv:
    print(command_help(program, define))
    return 0
  try:
    config, fv = parse_config_flags(argv, program, define)
  except ConfigError as e:
    return fail(str(e), EXIT_CONFIG_ERROR)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    return fail(diagnose_override(argv) or " ".join(str(e).split()), EXIT_CONFIG_ERROR)
  try:
    return body(config, fv) or 0
  except (ConfigError, DataError, UsageError, *errors) as e:
    return fail(str(e), EXIT_CONFIG_ERROR)
