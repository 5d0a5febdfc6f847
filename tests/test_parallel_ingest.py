"""`rankjax data criteo --workers N` writes the same dataset as one worker: the same shards with
the same checksums and the same row accounting, for both vocabularies, with bad lines skipped and
counted, gzip and plain files, and the same first error in strict mode."""

import json

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
  code = data_cli.main(["criteo", "--input", str(tmp_path / "*.tsv*"), "--output", str(out),
                        "--max-records-per-shard", "300", "--max-rows-per-table", "500", *args])
  return code, out


def _dataset(directory):
  manifest = layout.read_manifest(directory)
  return manifest, {p.name: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
                    and p.name != layout.VERIFIED_STAMP}


@pytest.mark.parametrize("vocab", ["hash", "frequency"])
@pytest.mark.parametrize("split", [["--eval-fraction", "0.15"], []])
def test_several_workers_write_the_dataset_of_one_byte_for_byte(tmp_path, small_units, vocab, split):
  files = _inputs(tmp_path, bad_line=None)
  (tmp_path / "a.tsv").write_text((tmp_path / "a.tsv").read_text().replace("\n0\t", "\nx\t", 3))  # 3 bad labels
  options = ["--vocab", vocab, "--on-error", "skip", *(["--min-count", "2"] if vocab == "frequency" else []), *split]
  assert len(parallel.cut_units(files, lambda p: p.suffix == ".gz")) > 5
  code_one, one = _convert(tmp_path, files, "one", *options, "--workers", "1")
  code_many, many = _convert(tmp_path, files, "many", *options, "--workers", "3")
  assert code_one == code_many == 0
  manifest_one, files_one = _dataset(one)
  manifest_many, files_many = _dataset(many)
  assert manifest_one["ingest"]["rows_skipped"] == 3 and manifest_one["ingest"]["rows_read"] == 1200
  assert json.dumps(manifest_many, sort_keys=True) == json.dumps(manifest_one, sort_keys=True)
  assert files_many == files_one and len(layout.split_shards(manifest_one, "train")) > 2


def test_strict_mode_reports_the_same_first_bad_line_with_workers(tmp_path, small_units, capsys):
  files = _inputs(tmp_path, bad_line=950)
  assert _convert(tmp_path, files, "one", "--workers", "1")[0] == 2
  one = capsys.readouterr().err
  assert _convert(tmp_path, files, "many", "--workers", "3")[0] == 2
  many = capsys.readouterr().err
  assert one == many and "c.tsv:251: wrong column count" in one
