"""`rankjax bench data`: samples/s of the shuffled Grain pipeline, and Criteo preprocessing MB/s.

  rankjax bench data --path DIR [--batch 4096] [--batches 200] [--threads 1,2]
      one JSON line per thread count: {"samples_per_sec", "batch", "threads", "batches"}
  rankjax bench data --generate-criteo-tsv FILE --gb G [--seed S]
      writes a synthetic Criteo-format TSV of about G GB (Zipf ids at Criteo Kaggle cardinalities)
  rankjax bench data --preprocess FILE [--vocab hash|frequency|raw] [--workers N] [--output DIR]
      times `rankjax data criteo` on FILE: {"mb_per_sec", "seconds", "input_bytes", "peak_rss_mb", ...}
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import shutil
import tempfile
import time

import numpy as np

# Distinct values per categorical column in Criteo Kaggle's train.txt (C1..C26).
CRITEO_KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
_LINES_PER_CHUNK = 50_000
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_DENSE_DIGITS = 8  # Dense values stay below 10**8.


def _chunk_text(rng: np.random.Generator, n: int) -> bytes:
  """n Criteo-format lines: every field in a fixed-width slot, then the padding dropped."""
  dense = np.minimum(np.floor(np.exp(rng.normal(1.5, 1.8, (n, 13)))), 10 ** _DENSE_DIGITS - 1).astype(np.int64)
  dense_width = np.where(rng.random((n, 13)) < 0.2, 0, np.floor(np.log10(np.maximum(dense, 1))).astype(np.int64) + 1)
  ranks = (rng.zipf(1.15, (n, 26)) - 1) % np.asarray(CRITEO_KAGGLE_CARDINALITIES)
  with np.errstate(over="ignore"):  # A fixed bijection scatters ranks over 32-bit ids.
    ids = ((ranks.astype(np.uint64) + np.arange(26, dtype=np.uint64) * np.uint64(1 << 40))
           * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
  hex_width = np.where(rng.random((n, 26)) < 0.05, 0, 8)

  slots = [(rng.integers(0, 2, n)[:, None] + ord("0")).astype(np.uint8)]
  keep = [np.ones((n, 1), bool)]
  positions = np.arange(_DENSE_DIGITS)
  for j in range(13):
    digits = (dense[:, j:j + 1] // 10 ** (_DENSE_DIGITS - 1 - positions)) % 10
    slots += [np.full((n, 1), ord("\t"), np.uint8), (digits + ord("0")).astype(np.uint8)]
    keep += [np.ones((n, 1), bool), positions >= _DENSE_DIGITS - dense_width[:, j:j + 1]]
  for j in range(26):
    nibbles = (ids[:, j:j + 1] >> (np.uint64(4) * np.arange(7, -1, -1, dtype=np.uint64))) & np.uint64(15)
    slots += [np.full((n, 1), ord("\t"), np.uint8), _HEX_DIGITS[nibbles.astype(np.int64)]]
    keep += [np.ones((n, 1), bool), np.broadcast_to(hex_width[:, j:j + 1] > 0, (n, 8))]
  slots.append(np.full((n, 1), ord("\n"), np.uint8))
  keep.append(np.ones((n, 1), bool))
  return np.concatenate(slots, axis=1)[np.concatenate(keep, axis=1)].tobytes()


def write_criteo_tsv(path: str | pathlib.Path, num_bytes: int, seed: int = 0) -> int:
  """Writes whole lines of synthetic Criteo TSV until at least `num_bytes`; returns the line count."""
  rng = np.random.default_rng(seed)
  written = lines = 0
  with open(path, "wb") as f:
    while written < num_bytes:
      text = _chunk_text(rng, _LINES_PER_CHUNK)
      if written + len(text) > num_bytes:  # Cut the last chunk at a line end past the target.
        cut = text.find(b"\n", num_bytes - written - 1) + 1
        text = text[:cut]
      f.write(text)
      written += len(text)
      lines += text.count(b"\n")
  return lines


def bench_pipeline(path: str, batch: int, batches: int, threads: int, warmup: int = 10) -> dict:
  """Samples/s of pipeline.train_iterator after `warmup` batches (which open and map the data)."""
  from rankjax.data import layout, pipeline
  manifest = layout.read_manifest(pathlib.Path(path))
  iterator = pipeline.train_iterator(path, manifest, global_batch_size=batch, num_batches=warmup + batches,
                                     seed=0, read_threads=threads, prefetch=2 * threads)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  return {"samples_per_sec": batch * batches / seconds, "batch": batch, "threads": threads, "batches": batches}


def bench_preprocess(input_path: str, vocab: str, output: str | None, workers: int = 1) -> dict:
  """Times the Criteo conversion of one file (eval = its last 10%) by `workers` processes; MB/s
  of input text, and the peak RSS of this process and of the largest worker."""
  from rankjax.data import allocator, criteo
  allocator.reuse_freed_memory()  # As `rankjax data` does.
  out_dir = pathlib.Path(output) if output else pathlib.Path(tempfile.mkdtemp(prefix="rankjax_bench_"))
  try:
    start = time.perf_counter()
    manifest = criteo.convert([pathlib.Path(input_path)], out_dir, criteo.CriteoOptions(vocab=vocab, eval_fraction=0.1,
                                                                                   workers=workers))
    seconds = time.perf_counter() - start
  finally:
    if output is None:
      shutil.rmtree(out_dir, ignore_errors=True)
  size = pathlib.Path(input_path).stat().st_size
  return {"mb_per_sec": size / seconds / 1e6, "seconds": seconds, "input_bytes": size, "vocab": vocab,
          "rows": manifest["ingest"]["rows_read"],
          "workers": workers, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main(argv: list[str]) -> int:
  """`rankjax bench data ...` (argv without the command words); returns the exit code."""
  parser = argparse.ArgumentParser(prog="rankjax bench data", description=__doc__.split("\n\n")[0])
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument("--path", help="dataset directory: time the shuffled train pipeline")
  mode.add_argument("--generate-criteo-tsv", metavar="FILE", help="write a synthetic Criteo TSV of --gb GB")
  mode.add_argument("--preprocess", metavar="FILE", help="time `rankjax data criteo` on a TSV file")
  parser.add_argument("--batch", type=int, default=4096)
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--threads", default="1,2", help="comma-separated Grain read thread counts")
  parser.add_argument("--gb", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--vocab", choices=("hash", "frequency", "raw"), default="hash")
  parser.add_argument("--workers", type=int, default=1, help="--preprocess: conversion processes")
  parser.add_argument("--output", default=None, help="--preprocess: keep the dataset here (default: a temp dir)")
  args = parser.parse_args(argv)
  from rankjax.cli.flags import EXIT_CONFIG_ERROR, fail
  from rankjax.data.layout import DataError
  try:
    return _run(args)
  except (DataError, OSError) as e:
    return fail(str(e), EXIT_CONFIG_ERROR)


def _run(args: argparse.Namespace) -> int:
  if args.path:
    for threads in (int(t) for t in args.threads.split(",")):
      print(json.dumps(bench_pipeline(args.path, args.batch, args.batches, threads)), flush=True)
  elif args.generate_criteo_tsv:
    start = time.perf_counter()
    lines = write_criteo_tsv(args.generate_criteo_tsv, int(args.gb * 1e9), args.seed)
    print(json.dumps({"file": args.generate_criteo_tsv, "lines": lines,
                      "bytes": pathlib.Path(args.generate_criteo_tsv).stat().st_size,
                      "seconds": time.perf_counter() - start}))
  else:
    print(json.dumps(bench_preprocess(args.preprocess, args.vocab, args.output, args.workers)))
  return 0
