"""`rankjax config show --config CFG [--config.KEY=VALUE ...]`: the resolved config, one line per
key with its value, its default (base_config of the config's model) and its type, validated."""

from __future__ import annotations

import ml_collections
from absl import flags

from rankjax.cli.flags import run_command


def _leaves(config: ml_collections.ConfigDict, prefix: str = ""):
  for key in sorted(config.keys()):
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def format_config(config: ml_collections.ConfigDict) -> str:
  """`key = value  # default D, type T` lines; changed values are marked with `*`."""
  from rankjax.config import base_config
  defaults = dict(_leaves(base_config(config.model.name)))
  lines = []
  for key, value in _leaves(config):
    default = defaults.get(key)
    mark = "*" if value != default else " "
    lines.append(f"{mark} {key} = {value!r}  # default {default!r}, {type(default).__name__}")
  return "\n".join(lines)


def _define(fv: flags.FlagValues) -> None:
  flags.DEFINE_integer("devices", None, "Validate for N devices (default: skip the device checks).", flag_values=fv)


def main(argv: list[str]) -> int:
  if argv[:1] == ["show"]:
    argv = argv[1:]
  elif not {"--help", "-h"} & set(argv):
    from rankjax.cli.flags import EXIT_CONFIG_ERROR, fail
    return fail("usage: rankjax config show --config CFG [--config.KEY=VALUE ...]", EXIT_CONFIG_ERROR)

  def body(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> None:
    if fv["devices"].value:
      from rankjax.config import validate
      validate(config, fv["devices"].value)
    print(format_config(config))

  return run_command(argv, "rankjax config show", _define, body)
