"""Tests for rankjax/data/criteo.py through `rankjax data criteo` (rankjax/cli/data.py).

The oracle parses each input line in plain Python (int(), int(x, 16), math.log1p) and maps ids
with rankjax.data.hashing or a vocabulary counted here; the written records must equal it exactly.
"""

import collections
import gzip
import json
import math

import numpy as np
import pytest

from helpers import train_five_steps_on
from rankjax.cli import bench_data
from rankjax.cli import data as data_cli
from rankjax.data import criteo, layout
from rankjax.data.hashing import hash_to_rows

HASH_ROWS = 1000


def _line(rng: np.random.Generator, i: int) -> str:
  """A valid line with every field shape: empty, negative, long (9..16 chars), mixed-case hex."""
  label = str(i % 2)
  dense = []
  for j in range(13):
    kind = (i + j) % 7
    dense.append(["", "0", str(int(rng.integers(1, 10 ** 6))), "-" + str(int(rng.integers(1, 9))),
                  str(int(rng.integers(10 ** 8, 10 ** 15))), str(int(rng.integers(0, 100))),
                  "-" + str(int(rng.integers(10 ** 8, 10 ** 12)))][kind])
  cat = []
  for j in range(26):
    kind = (i * 3 + j) % 9
    value = int(rng.integers(0, 40)) if j < 20 else int(rng.integers(0, 2 ** 63))  # Repeats for the vocabulary.
    cat.append(["", f"{value:08x}", f"{value:08X}", f"{value:x}", f"{value:016x}", f"{value:08x}",
                f"{value:012x}", f"{value:08x}", f"{value:08x}"][kind])
  return "\t".join([label, *dense, *cat])


def _lines(n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  return [_line(rng, i) for i in range(n)]


def _write(path, lines, compress=False, ending="\n", final_newline=True):
  text = ending.join(lines) + (ending if final_newline else "")
  data = text.encode()
  path.write_bytes(gzip.compress(data) if compress else data)
  return path


def _oracle(lines):
  """(label, dense float32 [n, 13], raw ids [n][26] with None for missing) from the text."""
  label = np.array([float(l.split("\t")[0]) for l in lines], np.float32)
  dense = np.array([[math.log1p(max(int(x), 0)) if x else 0.0 for x in l.split("\t")[1:14]] for l in lines])
  ids = [[int(x, 16) if x else None for x in l.rstrip("\r").split("\t")[14:]] for l in lines]
  return label, dense.astype(np.float32), ids


def _hash_rows(ids, num_rows=HASH_ROWS):
  return np.array([[0 if v is None else 1 + int(hash_to_rows(np.array([v], np.uint64), num_rows - 1)[0])
                    for v in row] for row in ids], np.int32)


def _frequency_rows(train_ids, ids, min_count):
  rows = np.zeros((len(ids), 26), np.int32)
  for t in range(26):
    counts = collections.Counter(row[t] for row in train_ids if row[t] is not None)
    ranked = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
    row_of = {v: r + 1 for r, v in enumerate(ranked)}
    rows[:, t] = [row_of.get(row[t], 0) for row in ids]
  return rows


def _cli(*args):
  return data_cli.main(["criteo", *map(str, args)])


def _records(directory, split):
  manifest = layout.read_manifest(directory)
  return layout.open_split(directory, manifest, split)[:]


def _assert_records(records, lines, rows):
  label, dense, _ = _oracle(lines)
  np.testing.assert_array_equal(records["label"], label)
  np.testing.assert_array_equal(records["dense"], dense)
  np.testing.assert_array_equal(records["cat"], rows)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_hash_round_trip_equals_hand_parsed_rows(tmp_path, compress):
  lines = _lines(300)
  source = _write(tmp_path / ("in.tsv.gz" if compress else "in.tsv"), lines, compress)
  assert _cli("--input", source, "--output", tmp_path / "out", "--max-rows-per-table", HASH_ROWS,
              "--eval-fraction", 0.1, "--max-records-per-shard", 64) == 0
  rows = _hash_rows(_oracle(lines)[2])
  _assert_records(_records(tmp_path / "out", "train"), lines[:270], rows[:270])
  _assert_records(_records(tmp_path / "out", "eval"), lines[270:], rows[270:])
  manifest = layout.read_manifest(tmp_path / "out")
  assert manifest["num_dense"] == 13 and manifest["vocab_sizes"] == [HASH_ROWS] * 26
  assert manifest["hotness"] == [1] * 26
  assert manifest["ingest"] == {"rows_read": 300, "rows_written": 300, "rows_skipped": 0,
                                "skipped_by_reason": {}, "file_errors": []}
  assert [s["num_records"] for s in manifest["splits"]["train"]["shards"]] == [64, 64, 64, 64, 14]
  assert manifest["source"]["files"] == [str(source)]
  assert manifest["feature_spec"]["categorical"][0] == "C1"


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_frequency_round_trip_counts_train_lines_only(tmp_path, compress):
  lines = _lines(400, seed=1)
  source = _write(tmp_path / "in.tsv", lines, compress)
  assert _cli("--input", source, "--output", tmp_path / "out", "--vocab", "frequency", "--min-count", 3,
              "--eval-fraction", 0.25) == 0
  ids = _oracle(lines)[2]
  rows = _frequency_rows(ids[:300], ids, min_count=3)
  _assert_records(_records(tmp_path / "out", "train"), lines[:300], rows[:300])
  _assert_records(_records(tmp_path / "out", "eval"), lines[300:], rows[300:])
  manifest = layout.read_manifest(tmp_path / "out")
  assert manifest["vocab_sizes"] == [1 + int(rows[:, t].max()) for t in range(26)]
  assert 1 < manifest["vocab_sizes"][0] < 40  # Repeated ids pass min_count; unique 63-bit ones do not.
  assert manifest["vocab_sizes"][25] == 1
  vocab = manifest["files"]["vocab_C1"]
  ids_by_row = np.fromfile(tmp_path / "out" / vocab["file"], "<u8")
  assert vocab["sha256"] == layout.file_sha256(tmp_path / "out" / vocab["file"])
  for line_ids, line_rows in zip(ids[:300], rows[:300]):  # Row r holds the id stored at r - 1.
    if line_rows[0]:
      assert ids_by_row[line_rows[0] - 1] == line_ids[0]


def test_frequency_cap_keeps_the_most_frequent_ids(tmp_path):
  lines = _lines(300, seed=2)
  source = _write(tmp_path / "in.tsv", lines)
  assert _cli("--input", source, "--output", tmp_path / "out", "--vocab", "frequency",
              "--max-rows-per-table", 5, "--eval-fraction", 0.1) == 0
  rows = _frequency_rows(_oracle(lines)[2][:270], _oracle(lines)[2], min_count=1)
  capped = np.where(rows < 5, rows, 0)
  np.testing.assert_array_equal(_records(tmp_path / "out", "train")["cat"], capped[:270])
  assert layout.read_manifest(tmp_path / "out")["vocab_sizes"][0] == 5


def test_crlf_lines_and_a_last_line_without_newline_parse_like_the_rest(tmp_path):
  lines = _lines(50, seed=3)
  source = _write(tmp_path / "in.tsv", lines, ending="\r\n", final_newline=False)
  assert _cli("--input", source, "--output", tmp_path / "out", "--max-rows-per-table", HASH_ROWS,
              "--eval-fraction", 0.2) == 0
  rows = _hash_rows(_oracle(lines)[2])
  _assert_records(_records(tmp_path / "out", "train"), lines[:40], rows[:40])
  _assert_records(_records(tmp_path / "out", "eval"), lines[40:], rows[40:])


def test_glob_reads_files_in_sorted_order_and_eval_input_is_its_own_split(tmp_path):
  lines = _lines(90, seed=4)
  _write(tmp_path / "day_1.tsv", lines[30:60])
  _write(tmp_path / "day_0.tsv", lines[:30], compress=True)
  _write(tmp_path / "eval.tsv", lines[60:])
  assert _cli("--input", tmp_path / "day_*", "--output", tmp_path / "out", "--max-rows-per-table", HASH_ROWS,
              "--eval-input", tmp_path / "eval.tsv") == 0
  rows = _hash_rows(_oracle(lines)[2])
  _assert_records(_records(tmp_path / "out", "train"), lines[:60], rows[:60])
  _assert_records(_records(tmp_path / "out", "eval"), lines[60:], rows[60:])


def test_generated_benchmark_tsv_parses_to_its_text(tmp_path):
  path = tmp_path / "gen.tsv"
  lines_written = bench_data.write_criteo_tsv(path, 200_000, seed=5)
  lines = path.read_text().splitlines()
  assert len(lines) == lines_written and path.stat().st_size >= 200_000
  assert _cli("--input", path, "--output", tmp_path / "out", "--max-rows-per-table", HASH_ROWS,
              "--eval-fraction", 0.5) == 0
  half = len(lines) - len(lines) // 2
  _assert_records(_records(tmp_path / "out", "train"), lines[:half], _hash_rows(_oracle(lines[:half])[2]))


def test_bench_preprocess_reports_throughput_and_peak_rss(tmp_path, capsys):
  path = tmp_path / "gen.tsv"
  assert bench_data.main(["--generate-criteo-tsv", str(path), "--gb", "0.0002"]) == 0
  generated = json.loads(capsys.readouterr().out)
  assert generated["bytes"] == path.stat().st_size >= 200_000
  assert bench_data.main(["--preprocess", str(path)]) == 0
  timing = json.loads(capsys.readouterr().out)
  assert timing["input_bytes"] == generated["bytes"] and timing["rows"] == generated["lines"]
  assert timing["mb_per_sec"] > 0 and timing["peak_rss_mb"] > 0


def test_bench_preprocess_times_several_workers(tmp_path, capsys, monkeypatch):
  from rankjax.data import parallel
  monkeypatch.setattr(parallel, "UNIT_BYTES", 50_000)  # Units of a small file, so the workers run.
  path = tmp_path / "gen.tsv"
  assert bench_data.main(["--generate-criteo-tsv", str(path), "--gb", "0.0002"]) == 0
  generated = json.loads(capsys.readouterr().out)
  assert bench_data.main(["--preprocess", str(path), "--workers", "2"]) == 0
  timing = json.loads(capsys.readouterr().out)
  assert timing["workers"] == 2 and timing["rows"] == generated["lines"] and timing["peak_worker_rss_mb"] > 0


# ---------------------------------------------------------------- malformed input


GOOD = _lines(4, seed=6)


def _with_field(column: int, value: str) -> str:
  fields = GOOD[0].split("\t")
  fields[column] = value
  return "\t".join(fields)


MALFORMED = {
    "wrong column count": "\t".join(GOOD[0].split("\t")[:39]),
    "non-integer dense value": _with_field(3, "12x"),
    "non-hex categorical": _with_field(20, "zz12ab34"),
    "bad label (not 0 or 1)": _with_field(0, "2"),
    "missing label": _with_field(0, ""),
    "dense value over 16 characters": _with_field(5, "1" * 17),
    "categorical id over 64 bits": _with_field(30, "f" * 17),
}


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_strict_mode_exits_2_naming_file_line_reason_and_an_excerpt(tmp_path, capsys, reason):
  source = _write(tmp_path / "in.tsv", [GOOD[0], GOOD[1], MALFORMED[reason], GOOD[2]])
  assert _cli("--input", source, "--output", tmp_path / "out") == data_cli.EXIT_INPUT_ERROR
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert err.startswith(f"{source}:3: {reason}: ")
  assert len(err.split(f"{reason}: ", 1)[1]) <= 80
  assert not (tmp_path / "out" / layout.MANIFEST).exists()


def test_strict_excerpt_names_the_offending_column(tmp_path, capsys):
  source = _write(tmp_path / "in.tsv", [GOOD[0], _with_field(20, "zz12ab34")])
  _cli("--input", source, "--output", tmp_path / "out")
  assert capsys.readouterr().err.strip() == f"{source}:2: non-hex categorical: 'C7=zz12ab34'"


def test_strict_mode_reports_a_truncated_gzip_at_its_cut_line(tmp_path, capsys):
  data = gzip.compress(("\n".join(_lines(2000, seed=7)) + "\n").encode())
  source = tmp_path / "in.tsv.gz"
  source.write_bytes(data[:len(data) // 2])
  assert _cli("--input", source, "--output", tmp_path / "out") == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"{source}:") and ": truncated gzip: " in err
  line = int(err.split(":")[1])
  assert 1 < line < 2000


def test_strict_mode_rejects_an_empty_file(tmp_path, capsys):
  empty = tmp_path / "empty.tsv"
  empty.write_bytes(b"")
  assert _cli("--input", empty, "--output", tmp_path / "out") == 2
  assert capsys.readouterr().err.strip() == f"{empty}:0: empty file: no data"


def test_skip_mode_counts_every_kind_and_writes_the_good_lines(tmp_path, capsys):
  good = _lines(40, seed=8)
  bad = [MALFORMED[r] for r in sorted(MALFORMED)]
  mixed = good[:10] + bad + good[10:20] + bad[:3] + ["", "just text"] + good[20:]
  _write(tmp_path / "a.tsv", mixed)
  truncated = tmp_path / "b.tsv.gz"
  data = gzip.compress(("\n".join(_lines(500, seed=9)) + "\n").encode())
  truncated.write_bytes(data[:len(data) // 2])
  empty = tmp_path / "c.tsv"
  empty.write_bytes(b"")
  assert _cli("--input", tmp_path / "*.tsv*", "--output", tmp_path / "out", "--on-error", "skip",
              "--eval-fraction", 0.5, "--max-rows-per-table", HASH_ROWS) == 0
  out = capsys.readouterr().out
  manifest = layout.read_manifest(tmp_path / "out")
  ingest = manifest["ingest"]
  expected = collections.Counter(sorted(MALFORMED)) + collections.Counter(sorted(MALFORMED)[:3])
  expected["wrong column count"] += 2  # The empty line and "just text".
  expected["truncated gzip"] += 1  # The cut-off last line of b.tsv.gz.
  assert ingest["skipped_by_reason"] == dict(sorted(expected.items()))
  assert ingest["rows_skipped"] == sum(expected.values())
  assert ingest["rows_read"] == ingest["rows_written"] + ingest["rows_skipped"]
  assert [(e["file"], e["reason"]) for e in ingest["file_errors"]] == [(str(truncated), "truncated gzip"),
                                                                      (str(empty), "empty file")]
  written = sum(e["num_records"] for e in manifest["splits"].values())
  assert written == ingest["rows_written"] == len(good) + ingest["rows_read"] - len(mixed) - 1
  train = _records(tmp_path / "out", "train")
  _assert_records(train[:len(good)], good, _hash_rows(_oracle(good)[2]))  # a.tsv comes first, all train.
  for reason, count in expected.items():
    assert f"skipped {count} rows: {reason}" in out


# ---------------------------------------------------------------- options and output directory


@pytest.mark.parametrize("args, message", [
    (("--vocab", "frequency", "--min-count", "0"), "--min-count"),
    (("--eval-fraction", "1.5"), "--eval-fraction"),
    (("--max-rows-per-table", "1"), "--max-rows-per-table"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, message):
  source = _write(tmp_path / "in.tsv", GOOD)
  assert _cli("--input", source, "--output", tmp_path / "out", *args) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err


def test_missing_input_and_foreign_output_directory_are_refused(tmp_path, capsys):
  assert _cli("--input", tmp_path / "nothing*.tsv", "--output", tmp_path / "out") == 2
  assert "no such input file" in capsys.readouterr().err
  source = _write(tmp_path / "in.tsv", GOOD)
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep me")
  assert _cli("--input", source, "--output", tmp_path / "mine") == 2
  assert "not empty" in capsys.readouterr().err
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_rerun_replaces_an_existing_dataset(tmp_path):
  source = _write(tmp_path / "in.tsv", _lines(50))
  out = tmp_path / "out"
  assert _cli("--input", source, "--output", out, "--max-records-per-shard", 10) == 0
  assert len(list(out.glob("train-*.bin"))) == 5
  assert _cli("--input", source, "--output", out, "--max-records-per-shard", 100) == 0
  assert sorted(p.name for p in out.iterdir()) == ["eval-00000.bin", layout.MANIFEST, "train-00000.bin"]


# ---------------------------------------------------------------- parser units


def test_swar_decoders_match_python_on_every_width_and_sign():
  rng = np.random.default_rng(10)
  for width in range(1, 17):
    values = [int(rng.integers(0, 16 ** width if width < 16 else 2 ** 63)) for _ in range(20)]
    texts = [f"{v:0{width}x}" for v in values] + [f"{v:0{width}X}" for v in values]
    decimals = [str(int(rng.integers(0, 10 ** min(width, 15)))).zfill(width) for _ in range(10)]
    decimals += ["-" + str(int(rng.integers(0, 10 ** min(width - 1, 15)))).zfill(width - 1)
                 for _ in range(10) if width > 1]
    decimals += decimals[:20 - len(decimals)]
    line_fields = list(zip(decimals + decimals, texts))
    lines = ["\t".join(["1"] + [d] * 13 + [h] * 26) for d, h in line_fields]
    block = criteo.parse_block(np.frombuffer(bytes(16) + ("\n".join(lines) + "\n").encode(), np.uint8))
    assert len(block.bad_lines) == 0
    np.testing.assert_array_equal(block.ids[:, 0], [int(h, 16) for _, h in line_fields])
    np.testing.assert_array_equal(block.dense[:, 0],
                                  np.array([math.log1p(max(int(d), 0)) for d, _ in line_fields]).astype(np.float32))


def _raw_words(ids):
  """(cat, cat_hi) as --vocab raw stores them: the ids' low and high words as int32 bit patterns."""
  raw = np.array([[criteo.MISSING_RAW_ID if v is None else v for v in row] for row in ids], np.uint64)
  return ((raw & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32),
          (raw >> np.uint64(32)).astype(np.uint32).view(np.int32))


def test_raw_round_trip_keeps_every_64_bit_id(tmp_path):
  lines = _lines(300, seed=2)
  source = _write(tmp_path / "in.tsv", lines)
  assert _cli("--input", source, "--output", tmp_path / "out", "--vocab", "raw", "--eval-fraction", 0.2) == 0
  ids = _oracle(lines)[2]
  low, high = _raw_words(ids)
  for split, part in (("train", slice(0, 240)), ("eval", slice(240, 300))):
    records = _records(tmp_path / "out", split)
    label, dense, _ = _oracle(lines[part])
    np.testing.assert_array_equal(records["label"], label)
    np.testing.assert_array_equal(records["dense"], dense)
    np.testing.assert_array_equal(records["cat"], low[part])
    np.testing.assert_array_equal(records["cat_hi"], high[part])
  manifest = layout.read_manifest(tmp_path / "out")
  assert manifest["raw_ids"] == [True] * 26 and manifest["source"]["vocab"] == "raw"
  # vocab_sizes: the distinct ids of each field in the train lines, an empty field one more id.
  assert manifest["vocab_sizes"] == [len({row[t] for row in ids[:240]}) for t in range(26)]
  assert manifest["vocab_sizes"][25] > 150  # 63-bit ids: nearly one per line, none hashed together


def test_raw_ids_reserved_for_missing_and_padding_are_bad_lines(tmp_path, capsys):
  lines = _lines(40, seed=3)
  lines[7] = _with_field(20, "fffffffffffffffe")
  lines[9] = _with_field(25, "FFFFFFFFFFFFFFFF")
  source = _write(tmp_path / "in.tsv", lines)
  assert _cli("--input", source, "--output", tmp_path / "strict", "--vocab", "raw", "--eval-fraction", 0.25) == 2
  assert f"{source}:8: categorical id reserved by --vocab raw" in capsys.readouterr().err
  assert _cli("--input", source, "--output", tmp_path / "skip", "--vocab", "raw", "--eval-fraction", 0.25,
              "--on-error", "skip") == 0
  ingest = layout.read_manifest(tmp_path / "skip")["ingest"]
  assert ingest["rows_skipped"] == 2 and list(ingest["skipped_by_reason"].values()) == [2]
  # The same ids are good lines for the hash vocabulary.
  assert _cli("--input", source, "--output", tmp_path / "hash", "--eval-fraction", 0.25) == 0


# ---------------------------------------------------------------- training on the output


@pytest.mark.slow
def test_rankjax_train_runs_on_a_converted_criteo_file(tmp_path):
  source = tmp_path / "day.tsv"
  bench_data.write_criteo_tsv(source, 1_500_000, seed=11)
  data = tmp_path / "criteo"
  assert _cli("--input", source, "--output", data, "--max-rows-per-table", 2000, "--eval-fraction", 0.2,
              "--max-records-per-shard", 2000) == 0
  summary = train_five_steps_on("dlrm_criteo.py", data, tmp_path)
  assert summary["steps"] == 5 and 0 < summary["eval_auc"] < 1
