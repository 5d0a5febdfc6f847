"""`rankjax train --config CFG --workdir DIR [--config.KEY=VALUE ...]`: train (or resume).

Config and data problems exit 2 with one line naming the key; a non-finite loss exits 3; a
SIGTERM/SIGINT checkpoint exits 4.
"""

from __future__ import annotations

import os
import sys

import ml_collections
from absl import flags

from rankjax.cli.flags import EXIT_NON_FINITE, EXIT_PREEMPTED, fail, run_command
from rankjax.experiment import UsageError


def _define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "Output directory: checkpoints, metrics, data.", flag_values=fv)


def main(argv: list[str]) -> int:
  def body(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> int:
    workdir = fv["workdir"].value
    if not workdir:
      raise UsageError("--workdir is required")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise UsageError(f"--workdir {workdir}: exists and is not a directory")
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise UsageError(f"--workdir {workdir}: cannot create it: {e.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
      raise UsageError(f"--workdir {workdir}: not writable")
    from rankjax import distributed
    from rankjax.train import NonFiniteLossError, Preempted, train
    try:
      distributed.initialize(config)
      train(config, fv["workdir"].value)
    except NonFiniteLossError as e:
      return fail(str(e), EXIT_NON_FINITE)
    except Preempted as e:
      print(f"rankjax: {e}", file=sys.stderr)
      return EXIT_PREEMPTED
    return 0

  return run_command(argv, "rankjax train", _define, body)
