"""`eval.write_scores`: the trainer's scores of every eval record, WORKDIR/eval_scores.parquet.

The layout `rankjax predict` writes too: a column `row` (the record's index in the split) and one
float column per head (`score` for a single head, `score_<head>` otherwise; for query lists, the
scores of the list's documents). Scores are what the trainer's model gives at the end of the run,
computed on the training mesh, gathered to process 0 batch by batch (bounded memory).
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rankjax.data import pipeline
from rankjax.experiment import Experiment
from rankjax.tasks.base import TrainState


def score_columns(heads: list[str] | tuple[str, ...], scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The output columns: `score` for one head, `score_<head>` for several."""
  if len(heads) == 1:
    return {"score": scores[heads[0]]}
  return {f"score_{h}": scores[h] for h in heads}


def to_table(rows: np.ndarray, heads, scores: dict[str, np.ndarray], mask: np.ndarray | None = None) -> pa.Table:
  """The scores of `rows` as a table; with a list `mask` [n, L], each row's documents' scores."""
  columns = {"row": pa.array(rows.astype(np.int64))}
  for name, values in score_columns(heads, scores).items():
    values = np.asarray(values, np.float32)
    columns[name] = pa.array(values) if values.ndim == 1 else pa.array(
        [v[m > 0] if mask is not None else v for v, m in zip(values, mask if mask is not None else values)],
        type=pa.list_(pa.float32()))
  return pa.table(columns)


class ScoreFile:
  """A scores Parquet file written table by table to PATH.tmp, renamed to PATH when the `with`
  block ends without an error (a failed run leaves no partial file under the name)."""

  def __init__(self, path: pathlib.Path):
    self.path, self.tmp = pathlib.Path(path), pathlib.Path(path).with_name(pathlib.Path(path).name + ".tmp")
    self.writer, self.rows = None, 0

  def write(self, table: pa.Table) -> None:
    self.writer = self.writer or pq.ParquetWriter(self.tmp, table.schema)
    self.writer.write_table(table)
    self.rows += table.num_rows

  def __enter__(self) -> "ScoreFile":
    return self

  def __exit__(self, error_type, *_) -> None:
    if self.writer is not None:
      self.writer.close()
      if error_type is None:
        self.tmp.replace(self.path)
      else:
        self.tmp.unlink(missing_ok=True)


def write(exp: Experiment, state: TrainState, path: pathlib.Path) -> int:
  """Writes the eval split's scores to `path` (process 0); returns the records written."""
  config, task, partitioner = exp.config, exp.task, exp.partitioner
  _, indices = pipeline.open_checked(exp.data_dir, exp.manifest, "eval", task.batch_spec,
                                     verify=config.data.verify_checksums, invalid_records=config.data.invalid_records)
  spec = task.batch_spec.with_weight()
  iterator = pipeline.eval_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.eval_batch_size,
                                    read_threads=config.data.read_threads, prefetch=config.data.prefetch_batches,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    spec=task.batch_spec, verify=config.data.verify_checksums,
                                    invalid_records=config.data.invalid_records)
  shardings = spec.shardings(partitioner)
  listwise = "mask" in task.SERVING_FIELDS

  def scores_of(state, batch):
    return task.serving_scores(task.forward(state, batch)), batch["mask"] if listwise else None

  score = partitioner.jit(scores_of, in_shardings=(exp.state_shardings, shardings), out_shardings=partitioner.replicated)
  chief = jax.process_index() == 0
  with ScoreFile(path) as scores_file:
    for i, batch in enumerate(iterator):
      scores, mask = score(state, partitioner.place_batch(batch, shardings))
      positions = i * config.train.eval_batch_size + np.arange(config.train.eval_batch_size)
      keep = positions < len(indices)
      if chief:
        host = {h: np.asarray(scores[h].addressable_data(0))[keep] for h in task.heads}
        scores_file.write(to_table(indices[positions[keep]], task.heads, host,
                                   None if mask is None else np.asarray(mask.addressable_data(0))[keep]))
  return scores_file.rows
