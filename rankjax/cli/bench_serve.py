"""`rankjax bench serve --model DIR [--batch-sizes 1,16,256,4096] [--seconds S]`: p50/p99 latency
and rows/s of an exported model per request batch size (rankjax/export/latency.py)."""

from __future__ import annotations

import argparse
import json

from rankjax.cli.flags import EXIT_CONFIG_ERROR, fail


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="rankjax bench serve", description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="an artifact directory written by `rankjax export`")
  parser.add_argument("--batch-sizes", default="1,16,256,4096", help="comma-separated request batch sizes")
  parser.add_argument("--seconds", type=float, default=2.0, help="timing per batch size (after warm-up)")
  parser.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = parser.parse_args(argv)
  try:
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    if any(s < 1 for s in sizes):
      raise ValueError
  except ValueError:
    return fail(f"--batch-sizes {args.batch_sizes!r}: comma-separated positive ints expected", EXIT_CONFIG_ERROR)
  import jax
  import numpy as np
  from rankjax.export import latency
  from rankjax.export.artifact import serving_task
  from rankjax.export.serving import ServingModel
  try:
    model = ServingModel(args.model)
    task = serving_task(args.model)
  except (ValueError, OSError) as e:
    return fail(" ".join(str(e).split()), EXIT_CONFIG_ERROR)
  bounds = {f.name: np.asarray(f.id_bounds) for f in task.batch_spec.fields
            if f.id_bounds is not None and f.name in model.inputs}
  results = latency.measure(model, bounds, sizes, args.seconds)
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
  print(latency.format_table(results, device))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": device, "model": args.model,
                 "results": [{**r.__dict__, "rows_per_sec": r.rows_per_sec} for r in results]}, f, indent=1)
  return 0
