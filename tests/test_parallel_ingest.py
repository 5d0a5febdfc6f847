"""`rankjax data criteo|letor --workers N` writes the same dataset as one worker: the same shards with
the same checksums and the same row accounting, for both vocabularies, with bad lines skipped and
counted, gzip and plain files, and the same first error in strict mode."""

import json

import numpy as np

import pytest

from rankjax.cli import data as data_cli
from rankjax.data import layout, parallel

from test_criteo import _lines, _write


@pytest.fixture
def small_units(monkeypatch):
  monkeypatch.setattr(parallel, "UNIT_BYTES", 4096)  # Many units from small files.


def _inputs(tmp_path, bad_line=None):
  lines = _lines(1200)
  if bad_line is not None:
    lines[bad_line] = "1\tnot-a-number" + lines[bad_line][1:]
  a = _write(tmp_path / "a.tsv", lines[:500])
  b = _write(tmp_path / "b.tsv.gz", lines[500:700], compress=True)
  c = _write(tmp_path / "c.tsv", lines[700:], final_newline=False)
  return [a, b, c]


def _convert(tmp_path, files, name, *args):
  out = tmp_path / name
  rows = [] if "raw" in args else ["--max-rows-per-table", "500"]
  code = data_cli.main(["criteo", "--input", str(tmp_path / "*.tsv*"), "--output", str(out),
                        "--max-records-per-shard", "300", *rows, *args])
  return code, out


def _dataset(directory):
  manifest = layout.read_manifest(directory)
  return manifest, {p.name: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
                    and p.name != layout.VERIFIED_STAMP}


@pytest.mark.parametrize("vocab", ["hash", "frequency", "raw"])
@pytest.mark.parametrize("split", [["--eval-fraction", "0.15"], ["--eval-input", "EVAL"]])
@pytest.mark.parametrize("on_error", ["skip", "strict"])  # Strict: workers write in place (every line a record).
def test_several_workers_write_the_dataset_of_one_byte_for_byte(tmp_path, small_units, vocab, split, on_error):
  files = _inputs(tmp_path, bad_line=None)
  if "EVAL" in split:  # Eval files: a plain one of several units, then a gzip one (one unit).
    (tmp_path / "eval").mkdir()
    eval_lines = _lines(400, seed=1)
    _write(tmp_path / "eval" / "e1.tsv", eval_lines[:300])
    _write(tmp_path / "eval" / "e2.tsv.gz", eval_lines[300:], compress=True)
    split = ["--eval-input", str(tmp_path / "eval" / "e*")]
  skipped = 3 if on_error == "skip" else 0
  (tmp_path / "a.tsv").write_text((tmp_path / "a.tsv").read_text().replace("\n0\t", "\nx\t", skipped))  # Bad labels.
  options = ["--vocab", vocab, "--on-error", on_error, *(["--min-count", "2"] if vocab == "frequency" else []), *split]
  assert len(parallel.cut_units(files, lambda p: p.suffix == ".gz")) > 5
  code_one, one = _convert(tmp_path, files, "one", *options, "--workers", "1")
  code_many, many = _convert(tmp_path, files, "many", *options, "--workers", "3")
  assert code_one == code_many == 0
  manifest_one, files_one = _dataset(one)
  manifest_many, files_many = _dataset(many)
  rows = 1200 + (400 if "--eval-input" in split else 0)
  assert manifest_one["ingest"]["rows_skipped"] == skipped and manifest_one["ingest"]["rows_read"] == rows
  assert json.dumps(manifest_many, sort_keys=True) == json.dumps(manifest_one, sort_keys=True)
  assert files_many == files_one and len(layout.split_shards(manifest_one, "train")) > 2


def test_strict_mode_reports_the_same_first_bad_line_with_workers(tmp_path, small_units, capsys):
  files = _inputs(tmp_path, bad_line=950)
  assert _convert(tmp_path, files, "one", "--workers", "1")[0] == 2
  one = capsys.readouterr().err
  assert _convert(tmp_path, files, "many", "--workers", "3")[0] == 2
  many = capsys.readouterr().err
  assert one == many and "c.tsv:251: wrong column count" in one


# ---- `rankjax data letor --workers N`: byte ranges of LETOR files, queries across range cuts.

def _letor_lines(n, seed=0):
  """n documents of queries of 1-40 documents, sparse increasing feature ids up to 30."""
  rng = np.random.default_rng(seed)
  lines, qid = [], 100
  while len(lines) < n:
    qid += 1
    for _ in range(int(rng.integers(1, 41))):
      ids = np.flatnonzero(rng.random(30) < 0.4) + 1
      lines.append(f"{rng.integers(0, 5)} qid:{qid} " + " ".join(f"{i}:{rng.normal():.5g}" for i in ids)
                   + (" # doc" if rng.random() < 0.1 else ""))
  return lines[:n]


def _letor_inputs(tmp_path, lines, names=("a", "b")):
  cut = len(lines) // 2
  for name, part in zip(names, (lines[:cut], lines[cut:])):
    (tmp_path / f"{name}.txt").write_bytes(("\r\n".join(part) + "\r\n").encode())


def _letor(tmp_path, name, *args):
  out = tmp_path / name
  code = data_cli.main(["letor", "--input", str(tmp_path / "train-*.txt"), "--output", str(out),
                        "--max-records-per-shard", "30", *args])
  return code, out


@pytest.mark.parametrize("sizes", [[], ["--num-features", "32", "--max-list-size", "25"]])
def test_letor_with_workers_writes_the_dataset_of_one_byte_for_byte(tmp_path, small_units, sizes):
  lines = _letor_lines(1500)
  lines[10] = "oops qid:1 1:2"  # bad relevance
  lines[400] = lines[3]  # query 101 again, far from its lines: not contiguous
  lines[401] = lines[4]
  lines[700] = "1 qid:7 3:1 2:1"  # ids not increasing
  lines.insert(900, "")  # blank line
  lines.insert(901, "# comment only")
  _letor_inputs(tmp_path, lines, names=("train-a", "train-b"))
  eval_lines = _letor_lines(300, seed=1)
  (tmp_path / "eval.txt").write_text("\n".join(eval_lines) + "\n")
  (tmp_path / "vali.txt").write_text("\n".join(_letor_lines(200, seed=2)))  # no final newline
  (tmp_path / "train-c.txt").write_text("# nothing but a comment\n")  # a file without documents
  splits = ["--eval-input", str(tmp_path / "eval.txt"), "--validation-input", str(tmp_path / "vali.txt")]
  files = sorted(tmp_path.glob("*.txt"))
  assert len(parallel.cut_units(files, lambda p: False)) > 20
  code_one, one = _letor(tmp_path, "one", "--on-error", "skip", *splits, *sizes, "--workers", "1")
  code_many, many = _letor(tmp_path, "many", "--on-error", "skip", *splits, *sizes, "--workers", "3")
  assert code_one == code_many == 0
  manifest_one, files_one = _dataset(one)
  manifest_many, files_many = _dataset(many)
  ingest = manifest_one["ingest"]
  assert ingest["skipped_by_reason"] == {"bad feature token": 1, "bad relevance": 1, "non-contiguous query": 2}
  assert ingest["blank_or_comment_lines"] == 3  # The blank line and two comment-only lines.
  assert len(ingest["file_errors"]) == 1 and ingest["file_errors"][0]["file"].endswith("train-c.txt")
  assert ingest["rows_read"] == 1500 + 300 + 200
  assert json.dumps(manifest_many, sort_keys=True) == json.dumps(manifest_one, sort_keys=True)
  assert files_many == files_one and len(layout.split_shards(manifest_one, "train")) > 2
  assert not list(tmp_path.glob(".rankjax-letor-*"))  # The scratch of the measuring pass is gone.


def test_letor_eval_fraction_with_workers_writes_the_dataset_of_one_byte_for_byte(tmp_path, small_units):
  _letor_inputs(tmp_path, _letor_lines(1500), names=("train-a", "train-b"))
  code_one, one = _letor(tmp_path, "one", "--eval-fraction", "0.3", "--workers", "1")
  code_many, many = _letor(tmp_path, "many", "--eval-fraction", "0.3", "--workers", "3")
  assert code_one == code_many == 0
  (manifest_one, files_one), (manifest_many, files_many) = _dataset(one), _dataset(many)
  assert json.dumps(manifest_many, sort_keys=True) == json.dumps(manifest_one, sort_keys=True)
  assert files_many == files_one and manifest_one["splits"]["eval"]


@pytest.mark.parametrize("first_bad,second_bad,expected", [
    ((620, "1 qid:5 x"), (1100, "nope qid:5 1:1"), "train-a.txt:621: bad feature token"),
    ((1100, "nope qid:5 1:1"), None, "train-b.txt:351: bad relevance"),
])
def test_letor_strict_mode_reports_the_same_first_bad_line_with_workers(tmp_path, small_units, capsys,
                                                                       first_bad, second_bad, expected):
  lines = _letor_lines(1500)
  for bad in filter(None, (first_bad, second_bad)):
    lines[bad[0]] = bad[1]
  _letor_inputs(tmp_path, lines, names=("train-a", "train-b"))
  assert _letor(tmp_path, "one", "--workers", "1")[0] == 2
  one = capsys.readouterr().err
  assert _letor(tmp_path, "many", "--workers", "3")[0] == 2
  many = capsys.readouterr().err
  assert one == many and expected in one, one


def test_letor_strict_mode_with_workers_reports_a_non_contiguous_query_before_a_later_bad_line(
    tmp_path, small_units, capsys):
  lines = _letor_lines(1500)
  qid = lines[0].split()[1]
  lines[300] = f"1 {qid} 1:1"  # The first query again: not contiguous (line 301 of train-a).
  lines[305] = "x qid:1 1:1"  # A bad relevance after it, in the same byte range.
  _letor_inputs(tmp_path, lines, names=("train-a", "train-b"))
  assert _letor(tmp_path, "one", "--workers", "1")[0] == 2
  one = capsys.readouterr().err
  assert _letor(tmp_path, "many", "--workers", "2")[0] == 2
  many = capsys.readouterr().err
  assert one == many and "train-a.txt:301: non-contiguous query" in one, one
