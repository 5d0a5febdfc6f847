"""`rankjax export --workdir RUN [--step N] --out DIR [--quantize none|bf16|int8]`: a trained
run's checkpoint as a serving artifact (rankjax/export/artifact.py): the inference function as
`jax.export` StableHLO (CPU and CUDA, symbolic batch), the weights as tensorstore zarr arrays,
and serving.json. The run's config is read from RUN/config.json; a run without one takes
`--config CFG [--config.KEY=V ...]` as it was trained."""

from __future__ import annotations

import argparse

from rankjax.cli.flags import EXIT_CONFIG_ERROR, fail, parse_config_flags


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rankjax export", description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="the training run's workdir")
  parser.add_argument("--out", required=True, help="the artifact directory to write (replaced if it is one)")
  parser.add_argument("--step", type=int, default=None, help="the checkpoint step (default: the latest; with train.early_stopping, the best validation step)")
  parser.add_argument("--quantize", default="none", choices=("none", "bf16", "int8"),
                      help="how the embedding tables are stored; the score difference is measured and recorded")
  parser.add_argument("--block-rows", type=int, default=None,
                      help="rows scored per block (default: the trainer's eval block, which gives its scores bit "
                           "for bit; smaller = less work for a small request; 0 = the whole request at once)")
  parser.add_argument("--config", default=None, help="the run's config file (only for runs without config.json)")
  return parser


def main(argv: list[str]) -> int:
  from absl import flags
  from rankjax.config import ConfigError
  from rankjax.data.layout import DataError
  from rankjax.experiment import UsageError
  config = None
  own, config_args, take_next = [], [], False
  for a in argv:  # --config CFG and --config.KEY=V go to the config parser; the rest to argparse.
    if take_next or a.startswith("--config"):
      config_args.append(a)
      take_next = a == "--config"
    else:
      own.append(a)
  args = _parser().parse_args(own)
  if config_args:
    try:
      config, _ = parse_config_flags(config_args, "rankjax export", lambda fv: None)
    except (ConfigError, flags.Error, ValueError) as e:
      return fail(" ".join(str(e).split()), EXIT_CONFIG_ERROR)
  from rankjax.export import artifact
  try:
    if args.block_rows is not None and args.block_rows < 0:
      raise UsageError(f"--block-rows {args.block_rows}: must be >= 0")
    manifest = artifact.export(args.workdir, args.out, step=args.step, config=config, quantize=args.quantize,
                               block_rows=args.block_rows)
  except (ConfigError, DataError, UsageError) as e:
    return fail(str(e), EXIT_CONFIG_ERROR)
  weights = sum(1 for w in manifest["weights"])
  print(f"rankjax export: step {manifest['step']} of {args.workdir} -> {args.out} ({manifest['model']}, heads "
        f"{manifest['heads']}, {weights} weight arrays, platforms {manifest['platforms']}, tables stored as "
        f"{manifest['quantize']}, " + (f"scored in blocks of {manifest['block_rows']} rows)" if manifest["block_rows"]
                                        else "a request scored at once)"))
  for head, error in manifest.get("quantization_error", {}).items():
    print(f"rankjax export: {manifest['quantize']} tables change {head} scores by max {error['max_abs']:.3g}, "
          f"mean {error['mean_abs']:.3g} over {error['records']} eval records")
  return 0
