"""`rankjax data criteo|letor|table ...`: ingest Criteo TSV, LETOR/SVMlight ranking files or
Parquet/CSV tables into the binary layout.

A malformed row or file in strict mode (the default) exits 2 with one line `FILE:LINE: reason:
excerpt`; with `--on-error skip` such rows are skipped, counted by reason, printed and recorded in
the manifest. Other problems (no input, bad options, a bad spec) exit 2 with a `rankjax data:
error:` line.
"""

from __future__ import annotations

import argparse
import glob
import pathlib
import sys

from rankjax.data import allocator, layout
from rankjax.data.writer import DEFAULT_RECORDS_PER_SHARD, IngestError

EXIT_INPUT_ERROR = 2

USAGE = """usage: rankjax data criteo --input FILE_OR_GLOB --output DIR [options]
       rankjax data letor --input FILE_OR_GLOB --output DIR [options]
       rankjax data table --input FILE_OR_GLOB --output DIR --spec SPEC.json [options]
       rankjax data crosses --path DATASET [--records N] [--min-z 3]   (feature pairs that interact)
run `rankjax data FORMAT --help` for the options"""


class _ArgumentError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  """argparse that raises instead of exiting, so every error leaves through one path."""

  def error(self, message: str):
    raise _ArgumentError(message)


def expand_inputs(pattern: str) -> list[pathlib.Path]:
  """Files matching a path or glob, sorted (the order records are written in)."""
  matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
  files = [pathlib.Path(m) for m in matches if pathlib.Path(m).is_file()]
  if not files:
    raise layout.DataError(f"{pattern}: no such input file")
  return files


def _common_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--input", required=True, help="input file or glob (files are read in sorted order)")
  parser.add_argument("--output", required=True, help="dataset directory to write (new, empty or a dataset)")
  parser.add_argument("--on-error", choices=("strict", "skip"), default="strict",
                      help="strict: stop at the first malformed row (exit 2, FILE:LINE); skip: skip and count it")
  split = parser.add_mutually_exclusive_group()
  split.add_argument("--eval-fraction", type=float, default=None,
                     help="the last fraction of the input rows becomes the eval split (default 0.1)")
  split.add_argument("--eval-input", default=None, help="file or glob of the eval split instead")
  parser.add_argument("--max-records-per-shard", type=int, default=DEFAULT_RECORDS_PER_SHARD,
                      help=f"records per shard file (default {DEFAULT_RECORDS_PER_SHARD})")


def _workers_argument(parser: argparse.ArgumentParser) -> None:
  from rankjax.data.parallel import workers_default
  parser.add_argument("--workers", type=int, default=workers_default(),
                      help="processes converting in parallel (default: every core; criteo: byte ranges of "
                           "files, table: whole files, letor: byte ranges of files); the dataset is the same whatever "
                           "the count")


def _criteo_parser() -> argparse.ArgumentParser:
  from rankjax.data import criteo
  parser = _Parser(prog="rankjax data criteo", description=criteo.__doc__.split("\n\n")[0])
  _common_arguments(parser)
  parser.add_argument("--vocab", choices=("hash", "frequency", "raw"), default="hash",
                      help="hash: rows by hashing (one pass); frequency: count pass, then ids seen "
                           ">= --min-count times get rows, the rest row 0; raw: the 64-bit ids kept "
                           "for dynamic tables (a count pass gives vocab_sizes: distinct train ids)")
  parser.add_argument("--min-count", type=int, default=1, help="frequency vocabulary threshold (default 1)")
  parser.add_argument("--max-rows-per-table", type=int, default=None,
                      help=f"hash: rows per table (default {criteo.DEFAULT_HASH_ROWS}); frequency: a cap "
                           "(the most frequent ids are kept)")
  _workers_argument(parser)
  return parser


def _table_parser() -> argparse.ArgumentParser:
  from rankjax.data import table
  parser = _Parser(prog="rankjax data table", description=table.__doc__.split("\n\n")[0])
  _common_arguments(parser)
  parser.add_argument("--spec", required=True, help="JSON feature spec (see rankjax/data/table.py)")
  parser.add_argument("--vocab", choices=("spec", "raw"), default="spec",
                      help="spec: each feature as its spec says; raw: every hashed categorical and sequence "
                           "feature (num_rows alone) keeps its 64-bit ids instead, for dynamic tables, as "
                           "\"raw\": true would (features with min_count or boundaries keep theirs)")
  parser.add_argument("--lists", action="store_true",
                      help="one query list per value of the spec's qid column (consecutive rows), for learning "
                           "to rank with categorical features (rankjax/data/table_lists.py)")
  parser.add_argument("--max-list-size", type=int, default=None,
                      help="--lists: documents per list; the rest of a longer list is dropped and counted "
                           "(default: the longest query)")
  _workers_argument(parser)
  return parser


def _letor_parser() -> argparse.ArgumentParser:
  from rankjax.data import letor
  parser = _Parser(prog="rankjax data letor", description=letor.__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help="train file or glob (files are read in sorted order)")
  parser.add_argument("--output", required=True, help="dataset directory to write (new, empty or a dataset)")
  split = parser.add_mutually_exclusive_group()
  split.add_argument("--eval-input", default=None, help="file or glob of an eval split (default: none)")
  split.add_argument("--eval-fraction", type=float, default=None,
                     help="instead: about this fraction of the train queries, whole lists, chosen by a fixed "
                          "hash of the qid (the same whatever the file order or --workers)")
  parser.add_argument("--validation-input", default=None,
                      help="file or glob of a validation split, e.g. MSLR's vali.txt (default: none; training "
                           "can hold one out with --config.data.validation_fraction)")
  parser.add_argument("--num-features", type=int, default=None,
                      help="features per document; a larger feature id is malformed (default: the largest id seen)")
  parser.add_argument("--max-list-size", type=int, default=None,
                      help="documents per list; the rest of a longer list is dropped and counted "
                           "(default: the longest list)")
  parser.add_argument("--on-error", choices=("strict", "skip"), default="strict",
                      help="strict: stop at the first malformed line (exit 2, FILE:LINE); skip: skip and count it")
  parser.add_argument("--max-records-per-shard", type=int, default=None,
                      help=f"query lists per shard file (default: shards of about {letor.SHARD_BYTES >> 20} MiB)")
  _workers_argument(parser)
  return parser


def _split_options(args) -> dict:
  if args.eval_input is not None:
    return {"eval_fraction": None, "eval_inputs": tuple(expand_inputs(args.eval_input))}
  return {"eval_fraction": 0.1 if args.eval_fraction is None else args.eval_fraction, "eval_inputs": ()}


def _run_criteo(argv: list[str]) -> tuple[str, dict]:
  from rankjax.data import criteo
  args = _criteo_parser().parse_args(argv)
  options = criteo.CriteoOptions(vocab=args.vocab, min_count=args.min_count,
                                 max_rows_per_table=args.max_rows_per_table, strict=args.on_error == "strict",
                                 max_records_per_shard=args.max_records_per_shard, workers=args.workers,
                                 **_split_options(args))
  return args.output, criteo.convert(expand_inputs(args.input), args.output, options)


def _run_table(argv: list[str]) -> tuple[str, dict]:
  from rankjax.data import table
  args = _table_parser().parse_args(argv)
  spec = table.load_spec(pathlib.Path(args.spec))
  if args.vocab == "raw":
    spec = table.with_raw_ids(spec, args.spec)
  options = table.TableOptions(strict=args.on_error == "strict", max_records_per_shard=args.max_records_per_shard,
                               workers=args.workers, lists=args.lists, max_list_size=args.max_list_size,
                               **_split_options(args))
  return args.output, table.convert(expand_inputs(args.input), args.output, spec, options)


def _run_letor(argv: list[str]) -> tuple[str, dict]:
  from rankjax.data import letor
  args = _letor_parser().parse_args(argv)
  eval_inputs = tuple(expand_inputs(args.eval_input)) if args.eval_input is not None else ()
  options = letor.LetorOptions(num_features=args.num_features, max_list_size=args.max_list_size,
                               strict=args.on_error == "strict", eval_inputs=eval_inputs,
                               eval_fraction=args.eval_fraction,
                               validation_inputs=tuple(expand_inputs(args.validation_input))
                               if args.validation_input is not None else (),
                               max_records_per_shard=args.max_records_per_shard, workers=args.workers)
  return args.output, letor.convert(expand_inputs(args.input), args.output, options)


def _report(output: str, manifest: dict) -> None:
  splits = ", ".join(f"{name} {entry['num_records']} records in {len(layout.split_shards(manifest, name))} shard(s)"
                     for name, entry in manifest["splits"].items())
  ingest = manifest["ingest"]
  print(f"rankjax data: wrote {output}: {splits}; rows read {ingest['rows_read']}, "
        f"written {ingest['rows_written']}, skipped {ingest['rows_skipped']}")
  for reason, count in ingest["skipped_by_reason"].items():
    print(f"rankjax data:   skipped {count} rows: {reason}")
  if ingest.get("documents_truncated"):
    print(f"rankjax data:   dropped {ingest['documents_truncated']} documents from "
          f"{ingest['queries_truncated']} lists over --max-list-size {manifest['max_list_size']}")
  for error in ingest["file_errors"]:
    print(f"rankjax data:   {error['file']}:{error['line']}: {error['reason']}")
  separators = {f["name"]: f.get("separator") for f in (manifest.get("feature_spec") or {}).get("sequence", [])
                if isinstance(f, dict)}
  for name, count in (manifest.get("sequence_rows_with_several_ids") or {}).items():
    if not count and ingest["rows_written"]:
      print(f"rankjax data:   warning: list column {name!r}: no row holds more than one id; if its values are "
            f"lists, check the spec's separator ({separators.get(name)!r}) against the file")


def _run_crosses(argv: list[str]) -> int:
  """`rankjax data crosses`: an analysis of a dataset, nothing written."""
  from rankjax.cli import data_crosses
  try:
    data_crosses.run(data_crosses.parser(_Parser).parse_args(argv))
  except SystemExit as e:  # --help
    return int(e.code or 0)
  except (_ArgumentError, layout.DataError, ValueError) as e:
    print(f"rankjax data crosses: error: {e}", file=sys.stderr)
    return EXIT_INPUT_ERROR
  return 0


def main(argv: list[str]) -> int:
  """`rankjax data SUBCOMMAND ...` (argv without the command words); returns the exit code."""
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if argv else EXIT_INPUT_ERROR
  commands = {"criteo": _run_criteo, "letor": _run_letor, "table": _run_table}
  if argv[0] == "crosses":
    return _run_crosses(argv[1:])
  if argv[0] not in commands:
    print(f"rankjax data: error: unknown format {argv[0]!r}\n{USAGE}", file=sys.stderr)
    return EXIT_INPUT_ERROR
  allocator.reuse_freed_memory()  # Parsing frees and retakes arrays every block (rankjax/data/allocator.py).
  try:
    output, manifest = commands[argv[0]](argv[1:])
  except SystemExit as e:  # --help
    return int(e.code or 0)
  except IngestError as e:
    print(str(e), file=sys.stderr)
    return EXIT_INPUT_ERROR
  except (_ArgumentError, layout.DataError, ValueError) as e:
    print(f"rankjax data: error: {e}", file=sys.stderr)
    return EXIT_INPUT_ERROR
  _report(output, manifest)
  return 0
