"""`rankjax predict --model DIR --input DATASET_DIR|FILE --output scores.parquet`: scores records
with an exported model (`rankjax export`), in order, in bounded memory: a column `row` (the
record's index in the split, or a raw file's row: a Criteo TSV's line from 0, a table's data row
from 0) and `score` (one head) or `score_<head>` per head. A raw file is converted as the model's
training data was (hashing or vocabulary, transforms)."""

from __future__ import annotations

import argparse
import pathlib
import sys

from rankjax.cli.flags import EXIT_CONFIG_ERROR, fail


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rankjax predict", description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="an artifact directory written by `rankjax export`")
  parser.add_argument("--input", required=True, help="a dataset directory (rankjax data ...), or a raw Criteo TSV / Parquet / CSV file")
  parser.add_argument("--output", required=True, help="the Parquet file to write")
  parser.add_argument("--split", default="eval", help="the dataset split to score (default: eval)")
  parser.add_argument("--batch-size", type=int, default=4096, help="records scored per call (rounded up to a multiple of the artifact's batch_multiple)")
  parser.add_argument("--invalid-records", default="error", choices=("error", "skip"),
                      help="records the model cannot take: stop naming the first, or leave them out and count them")
  return parser


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  if args.batch_size < 1:
    return fail(f"--batch-size {args.batch_size}: must be >= 1", EXIT_CONFIG_ERROR)
  from rankjax.data.layout import DataError
  from rankjax.data.writer import IngestError
  from rankjax.export import predict
  try:
    count = predict.predict(args.model, args.input, args.output, split=args.split, batch_size=args.batch_size,
                            invalid_records=args.invalid_records, log=lambda m: print(m, file=sys.stderr))
  except (DataError, IngestError, ValueError, OSError) as e:
    return fail(" ".join(str(e).split()), EXIT_CONFIG_ERROR)
  print(f"rankjax predict: scored {count:,} records -> {pathlib.Path(args.output)}")
  return 0
