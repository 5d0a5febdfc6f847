"""Raw rows into records exactly as `rankjax data criteo|table` converts them, streamed a block at
a time, with each record's row number: for scoring files that were never converted (`rankjax
predict --input FILE`). Malformed rows follow the converter's policy (strict: IngestError naming
the file and line; otherwise skipped and counted in the IngestStats).

Row numbers: a Criteo TSV's line index from 0; a table's data row index from 0 (after a CSV's
header), as the converter numbers ordinals.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterator

import numpy as np

from rankjax.data import criteo, layout, table
from rankjax.data.writer import IngestStats


def _side_array(directory: pathlib.Path, entry: dict) -> np.ndarray:
  """A side file the converter wrote (writer.write_array), its sha256 checked."""
  path = directory / entry["file"]
  data = path.read_bytes()
  if hashlib.sha256(data).hexdigest() != entry["sha256"]:
    raise layout.DataError(f"{path}: sha256 differs from the manifest's (changed or damaged)")
  return np.frombuffer(data, np.dtype(entry["dtype"])).reshape(entry["shape"])


def criteo_vocabulary(manifest: dict, directory: pathlib.Path):
  """The id -> row map the conversion used (the frequency vocabulary read from its side files)."""
  source = manifest["source"]
  if source["vocab"] == "hash":
    return criteo.HashVocabulary(source["max_rows_per_table"])
  if source["vocab"] == "raw":
    return criteo.RawVocabulary(manifest["vocab_sizes"])
  names = criteo.COLUMN_NAMES[1 + criteo.NUM_DENSE:]
  return criteo.FrequencyVocabulary.from_rows([_side_array(directory, manifest["files"][f"vocab_{n}"]) for n in names])


def records(path: pathlib.Path, manifest: dict, directory: pathlib.Path, stats: IngestStats
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(row numbers, records) of the file's good rows, converted as `manifest`'s data was;
  `directory` holds the manifest's side files (vocabularies)."""
  path = pathlib.Path(path)
  kind = manifest.get("source", {}).get("kind")
  if kind == "criteo":
    raw = manifest["source"]["vocab"] == "raw"
    vocabulary, dtype = criteo_vocabulary(manifest, directory), criteo.record_dtype(raw)
    for file_line, block in criteo.iter_blocks(path, stats, reserve_top_ids=raw):
      stats.rows_read += block.num_lines
      criteo._reject_bad_lines(path, file_line, block, stats)
      yield file_line - 1 + np.asarray(block.good_lines, np.int64), criteo._records(block, vocabulary, dtype)
  elif kind == "table":
    spec = table.with_stored_vocabularies(
        table.spec_from_dict(manifest["feature_spec"], f"{directory}/manifest.json feature_spec"),
        lambda key: _side_array(directory, manifest["files"][key]))
    line_offset = 1 if path.stat().st_size and table._is_parquet(path) else 2
    for found, ordinals, problems, *_ in table._file_rows(path, spec, stats):
      stats.rows_read += len(found) + len(problems)
      for ordinal, reason, text in problems:
        stats.reject_rows(str(path), ordinal + line_offset, reason, text)
      yield ordinals, found
  else:
    raise layout.DataError(f"{path}: raw rows of {kind!r} data cannot be scored (criteo TSV or a table's "
                           "Parquet/CSV can); convert the file with `rankjax data` and pass the dataset directory")
