"""`rankjax plot --workdir DIR`: draws DIR/metrics.jsonl into DIR/training_curves.png (the train
loss and each eval metric against the step); `rankjax train` does this at the end of a run."""

from __future__ import annotations

import argparse

from rankjax import training_curves
from rankjax.cli.flags import EXIT_CONFIG_ERROR, fail


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="rankjax plot", description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a training workdir holding metrics.jsonl")
  args = parser.parse_args(argv)
  try:
    path = training_curves.write(args.workdir)
  except ImportError:
    return fail("rankjax plot needs matplotlib: pip install 'rankjax[plot]'", EXIT_CONFIG_ERROR)
  except ValueError as e:
    return fail(str(e), EXIT_CONFIG_ERROR)
  print(f"rankjax plot: wrote {path}")
  return 0
