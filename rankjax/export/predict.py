"""Batch scoring with an exported model to Parquet, streamed (one batch in memory at a time), in
the layout of eval_scores.parquet: a dataset split in record order, or a raw file (a Criteo TSV,
a table's Parquet/CSV) converted row by row as the model's training data was."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np

from rankjax.data import layout, pipeline, raw_rows
from rankjax.data.writer import IngestStats
from rankjax.eval_scores import ScoreFile, to_table
from rankjax.export.artifact import DATA_FILES, serving_task
from rankjax.export.serving import ServingModel, read_batches


def _rebatched(blocks: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(rows, records) blocks of any size -> blocks of exactly `batch_size` (the last may be short)."""
  rows_parts, record_parts, held = [], [], 0
  for rows, records in blocks:
    rows_parts.append(rows)
    record_parts.append(records)
    held += len(rows)
    while held >= batch_size:
      rows_all, records_all = np.concatenate(rows_parts), np.concatenate(record_parts)
      yield rows_all[:batch_size], records_all[:batch_size]
      rows_parts, record_parts, held = [rows_all[batch_size:]], [records_all[batch_size:]], held - batch_size
  if held:
    yield np.concatenate(rows_parts), np.concatenate(record_parts)


# What must match between the model's training data and a dataset it scores: the same features,
# the same id encoding (hashing, vocabulary files by sha256) and the same value transforms.
_ENCODING_KEYS = ("num_dense", "vocab_sizes", "hotness", "num_features", "feature_spec", "labels")
_SOURCE_KEYS = ("kind", "vocab", "min_count", "max_rows_per_table")


def check_same_encoding(trained: dict, given: dict, where: pathlib.Path) -> None:
  """Raises DataError naming the first manifest field in which dataset `given` encodes its records
  differently from the model's training data (`trained`): its ids would mean other rows."""
  pairs = [(k, trained.get(k), given.get(k)) for k in _ENCODING_KEYS]
  pairs += [(f"source.{k}", trained.get("source", {}).get(k), given.get("source", {}).get(k)) for k in _SOURCE_KEYS]
  pairs += [(f"files.{k}", v.get("sha256"), given.get("files", {}).get(k, {}).get("sha256"))
            for k, v in trained.get("files", {}).items()]
  for key, want, got in pairs:
    if want != got:
      shown = lambda v: (str(v)[:60] + "...") if len(str(v)) > 60 else str(v)  # noqa: E731
      raise layout.DataError(f"{where / layout.MANIFEST}: {key} is {shown(got)}, the model was trained on "
                             f"{shown(want)}: its records are encoded differently (convert the raw rows with the "
                             "model's settings, or pass the raw file to predict)")


def predict(model_dir: str | pathlib.Path, source: str | pathlib.Path, output: str | pathlib.Path, *,
            split: str = "eval", batch_size: int = 4096, invalid_records: str = "error", log=print) -> int:
  """Scores `source` (a dataset directory's `split`, or a raw file) into `output`; returns the
  records scored. Bad records: "error" stops naming the first, "skip" leaves them out and counts."""
  model = ServingModel(model_dir)
  task = serving_task(model_dir)
  source, output = pathlib.Path(source), pathlib.Path(output)
  fields, batch_size = tuple(model.inputs), model.aligned(batch_size)
  if source.is_dir():
    manifest = layout.read_manifest(source)
    check_same_encoding(task.manifest, manifest, source)
    # Records left out under "skip" are counted and reported by the pipeline, as in training.
    records, indices = pipeline.open_checked(source, manifest, split, task.batch_spec,
                                             invalid_records=invalid_records)
    batches = read_batches(records, indices, task.batch_spec, fields, batch_size)
    stats = None
  elif source.is_file():
    stats = IngestStats(strict=invalid_records == "error")
    found = raw_rows.records(source, task.manifest, pathlib.Path(model_dir) / DATA_FILES, stats)
    batches = ((rows, {k: v for k, v in task.batch_spec.read(r).items() if k in fields})
               for rows, r in _rebatched(found, batch_size))
  else:
    raise FileNotFoundError(f"--input {source}: no such file or directory")
  listwise = "mask" in model.inputs
  with ScoreFile(output) as scores_file:
    for rows, inputs in batches:
      if len(rows):
        scores_file.write(to_table(rows, model.heads, model.score(inputs), inputs["mask"] if listwise else None))
    if not scores_file.rows:
      raise ValueError(f"{source}: no record to score")
  if stats is not None and stats.rows_skipped:
    log(f"rankjax predict: {stats.summary()}")
  return scores_file.rows
