"""Tests for rankjax/data/letor.py through `rankjax data letor` (rankjax/cli/data.py).

Oracles: lists written out by hand, and a plain-Python parser (str.split, float, int) that groups
consecutive qids; the written records and the manifest's feature stats must equal them.
"""

import collections
import math
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from rankjax.cli import data as data_cli
from rankjax.data import layout, letor

MSLR_SAMPLE = "rankeval-0.8.2/rankeval/test/data/msn1.fold1.train.5k.txt"


def _cli(*args):
  return data_cli.main(["letor", *map(str, args)])


def _write(path, lines, ending="\n"):
  path.write_bytes((ending.join(lines) + ending).encode())
  return path


def _records(directory, split="train"):
  return layout.open_split(directory, layout.read_manifest(directory), split)[:]


def _oracle(lines, num_features, max_list_size):
  """(qids, relevance [q, L], features float32 [q, L, N], mask [q, L], documents dropped) from valid
  lines, parsed with plain Python."""
  lists = []
  for line in lines:
    fields = line.split("#")[0].split()
    if not fields:
      continue
    qid = int(fields[1][len("qid:"):])
    document = (float(fields[0]), {int(t.split(":")[0]): float(t.split(":")[1]) for t in fields[2:]})
    if lists and lists[-1][0] == qid:
      lists[-1][1].append(document)
    else:
      lists.append((qid, [document]))
  relevance = np.zeros((len(lists), max_list_size), np.float32)
  features = np.zeros((len(lists), max_list_size, num_features), np.float32)
  mask = np.zeros((len(lists), max_list_size), np.uint8)
  for q, (_, documents) in enumerate(lists):
    for d, (rel, values) in enumerate(documents[:max_list_size]):
      relevance[q, d], mask[q, d] = rel, 1
      for feature_id, value in values.items():
        features[q, d, feature_id - 1] = value
  dropped = sum(max(0, len(documents) - max_list_size) for _, documents in lists)
  return [qid for qid, _ in lists], relevance, features, mask, dropped


def _assert_lists(records, lines, num_features, max_list_size):
  qids, relevance, features, mask, _ = _oracle(lines, num_features, max_list_size)
  np.testing.assert_array_equal(records["qid"], qids)
  np.testing.assert_array_equal(records["relevance"], relevance)
  np.testing.assert_array_equal(records["features"], features)
  np.testing.assert_array_equal(records["mask"], mask)


# ---------------------------------------------------------------- round trips


def test_round_trip_equals_hand_built_lists_with_crlf_comments_and_sparse_features(tmp_path):
  source = tmp_path / "train.txt"
  source.write_bytes(b"# a header comment\r\n"
                     b"2 qid:10 1:0.5 3:-1.25 # docid = A\r\n"
                     b"0 qid:10 2:4\r\n"
                     b"\r\n"
                     b"1 qid:7 1:1 2:2 3:3 4:8\r\n"
                     b"3 qid:7#a comment without a space\r\n"
                     b"0 qid:7 4:0.125   \r\n"
                     b"4 qid:-3 2:1e-3")
  assert _cli("--input", source, "--output", tmp_path / "out") == 0
  records = _records(tmp_path / "out")
  np.testing.assert_array_equal(records["qid"], [10, 7, -3])
  np.testing.assert_array_equal(records["relevance"], [[2, 0, 0], [1, 3, 0], [4, 0, 0]])
  np.testing.assert_array_equal(records["mask"], [[1, 1, 0], [1, 1, 1], [1, 0, 0]])
  np.testing.assert_array_equal(records["features"], np.array([
      [[0.5, 0, -1.25, 0], [0, 4, 0, 0], [0, 0, 0, 0]],
      [[1, 2, 3, 8], [0, 0, 0, 0], [0, 0, 0, 0.125]],
      [[0, 1e-3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32))
  manifest = layout.read_manifest(tmp_path / "out")
  assert manifest["num_features"] == 4 and manifest["max_list_size"] == 3
  assert records.dtype == letor.record_dtype(4, 3)
  assert manifest["ingest"] == {"rows_read": 6, "rows_written": 6, "rows_skipped": 0, "documents_truncated": 0,
                                "skipped_by_reason": {}, "file_errors": [], "queries_written": 3,
                                "queries_truncated": 0, "blank_or_comment_lines": 2}
  assert manifest["source"] == {"kind": "letor", "files": [str(source)], "eval_files": [], "on_error": "strict",
                                "num_features_given": False, "max_list_size_given": False}
  assert list(manifest["splits"]) == ["train"]


def test_lists_over_max_list_size_are_truncated_and_counted_and_short_ones_padded(tmp_path, capsys):
  sizes = [1, 3, 5, 4, 2]  # With L = 3: 2 + 1 documents dropped from 2 lists.
  lines = [f"{d % 5} qid:{q} 1:{q}.{d} 2:{d}" for q, n in enumerate(sizes) for d in range(n)]
  source = _write(tmp_path / "train.txt", lines)
  evaluation = _write(tmp_path / "eval.txt", [f"1 qid:9 2:{d}" for d in range(7)])  # 4 more dropped.
  assert _cli("--input", source, "--eval-input", evaluation, "--output", tmp_path / "out",
              "--max-list-size", 3, "--max-records-per-shard", 2) == 0
  _assert_lists(_records(tmp_path / "out"), lines, 2, 3)
  _assert_lists(_records(tmp_path / "out", "eval"), [f"1 qid:9 2:{d}" for d in range(7)], 2, 3)
  np.testing.assert_array_equal(_records(tmp_path / "out")["mask"].sum(axis=1), [1, 3, 3, 3, 2])
  manifest = layout.read_manifest(tmp_path / "out")
  ingest = manifest["ingest"]
  assert ingest["rows_read"] == 22 and ingest["rows_written"] == 15 and ingest["documents_truncated"] == 7
  assert ingest["rows_read"] == ingest["rows_written"] + ingest["rows_skipped"] + ingest["documents_truncated"]
  assert ingest["queries_written"] == 6 and ingest["queries_truncated"] == 3
  assert [s["num_records"] for s in manifest["splits"]["train"]["shards"]] == [2, 2, 1]
  assert manifest["feature_stats"]["count"] == 12  # Train documents written; eval is not counted.
  assert "dropped 7 documents from 3 lists over --max-list-size 3" in capsys.readouterr().out


def test_given_num_features_pads_the_feature_axis_with_zeros(tmp_path):
  lines = ["1 qid:1 1:1 3:3", "0 qid:1 2:2", "2 qid:2 4:4"]
  source = _write(tmp_path / "train.txt", lines)
  assert _cli("--input", source, "--output", tmp_path / "out", "--num-features", 6, "--max-list-size", 4) == 0
  records = _records(tmp_path / "out")
  assert records["features"].shape == (2, 4, 6)
  _assert_lists(records, lines, 6, 4)
  manifest = layout.read_manifest(tmp_path / "out")
  assert manifest["source"]["num_features_given"] and manifest["source"]["max_list_size_given"]
  assert manifest["feature_stats"]["max"][4:] == [0.0, 0.0]


def test_a_query_may_continue_into_the_next_file_of_the_split(tmp_path):
  _write(tmp_path / "part-0.txt", ["1 qid:1 1:1", "0 qid:2 1:2"])
  _write(tmp_path / "part-1.txt", ["2 qid:2 1:3", "0 qid:3 1:4"])
  assert _cli("--input", tmp_path / "part-*.txt", "--output", tmp_path / "out") == 0
  _assert_lists(_records(tmp_path / "out"), ["1 qid:1 1:1", "0 qid:2 1:2", "2 qid:2 1:3", "0 qid:3 1:4"], 1, 2)


def test_feature_stats_equal_numpy_over_the_written_train_documents(tmp_path):
  rng = np.random.default_rng(0)
  num_features, max_list_size = 7, 8

  def lines_of(first_qid, num_queries):
    out = []
    for q in range(first_qid, first_qid + num_queries):
      for _ in range(int(rng.integers(1, 13))):
        present = np.flatnonzero(rng.random(num_features) < 0.6) + 1
        values = rng.normal(3.0, 10.0, num_features) * 10.0 ** rng.integers(-3, 4, num_features)
        out.append(" ".join([str(int(rng.integers(0, 5))), f"qid:{q}"]
                            + [f"{i}:{values[i - 1]:.7g}" for i in present]) + " # doc")
    return out

  train, evaluation = lines_of(0, 40), lines_of(100, 5)
  source, eval_source = _write(tmp_path / "train.txt", train), _write(tmp_path / "eval.txt", evaluation)
  assert _cli("--input", source, "--eval-input", eval_source, "--output", tmp_path / "out",
              "--num-features", num_features, "--max-list-size", max_list_size) == 0
  _assert_lists(_records(tmp_path / "out"), train, num_features, max_list_size)
  _assert_lists(_records(tmp_path / "out", "eval"), evaluation, num_features, max_list_size)
  _, _, features, mask, dropped = _oracle(train, num_features, max_list_size)
  assert dropped > 0  # The stats cover the documents written, not those dropped.
  documents = features[mask == 1].astype(np.float64)
  stats = layout.read_manifest(tmp_path / "out")["feature_stats"]
  assert stats["count"] == len(documents)
  np.testing.assert_allclose(stats["mean"], documents.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(stats["std"], documents.std(axis=0), rtol=1e-12)
  np.testing.assert_array_equal(stats["min"], documents.min(axis=0))
  np.testing.assert_array_equal(stats["max"], documents.max(axis=0))
  logs = np.sign(documents) * np.log1p(np.abs(documents))  # What task.normalize=log1p|auto standardises.
  np.testing.assert_allclose(stats["log1p"]["mean"], logs.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(stats["log1p"]["std"], logs.std(axis=0), rtol=1e-12)
  np.testing.assert_allclose(stats["log1p"]["max"], logs.max(axis=0), rtol=1e-15)


def test_streaming_feature_stats_merge_like_numpy_over_uneven_batches():
  rng = np.random.default_rng(1)
  data = rng.normal(1e4, 1.0, (1000, 3))  # A large mean: a naive sum of squares loses the variance.
  stats = letor.FeatureStats(3)
  start = 0
  for size in [1, 2, 500, 7, 490]:
    stats.add(data[start:start + size])
    start += size
  result = stats.as_dict()
  np.testing.assert_allclose(result["mean"], data.mean(axis=0), rtol=1e-14)
  np.testing.assert_allclose(result["std"], data.std(axis=0), rtol=1e-9)


# ---------------------------------------------------------------- malformed input

GOOD = ["2 qid:1 1:0.5 2:1", "0 qid:1 3:2", "1 qid:2 1:1 4:0.25"]
AFTER = "0 qid:2 2:3"
# With --num-features 4; each line follows GOOD (query 2 is the current one).
MALFORMED = {
    "bad relevance": ["x qid:2 1:0.5", "nan qid:2 1:0.5", "qid:2 1:0.5"],
    "missing qid": ["1 1:0.5 2:0.25", "1", "1 QID:2 1:0.5"],
    "bad qid": ["1 qid:abc 1:0.5", "1 qid: 1:0.5", "1 qid:99999999999999999999 1:0.5"],
    "bad feature token": ["1 qid:2 1:0.5 2:x", "1 qid:2 1:0.5 2", "1 qid:2 0:0.5", "1 qid:2 2:0.5 1:0.5",
                          "1 qid:2 1:0.5:3", "1 qid:2 1:inf", "1 qid:2 a:1", "1 qid:2 1:0.5 1:0.5"],
    "feature id out of range": ["1 qid:2 5:0.5", "1 qid:2 1:1 99999999999999999999:1"],
    "non-contiguous query": ["1 qid:1 1:0.5"],
    "line over 1 MiB": ["1 qid:2 " + "1:0.5 " * 200_000],
}
KINDS = [(reason, i) for reason in sorted(MALFORMED) for i in range(len(MALFORMED[reason]))]


@pytest.mark.parametrize("sizes_given", [True, False], ids=["one-pass", "measured"])
@pytest.mark.parametrize("reason, variant", KINDS, ids=[f"{r}-{i}" for r, i in KINDS])
def test_strict_mode_exits_2_naming_file_line_reason_and_an_excerpt(tmp_path, capsys, reason, variant, sizes_given):
  source = _write(tmp_path / "train.txt", GOOD + [MALFORMED[reason][variant], AFTER])
  sizes = ("--num-features", 4) + (("--max-list-size", 4) if sizes_given else ())
  assert _cli("--input", source, "--output", tmp_path / "out", *sizes) == data_cli.EXIT_INPUT_ERROR
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert err.startswith(f"{source}:4: {reason}: ")
  assert len(err.split(f"{reason}: ", 1)[1]) <= 80
  assert not (tmp_path / "out" / layout.MANIFEST).exists()


@pytest.mark.parametrize("line, message", [
    ("1 qid:1 1:0.5", "'query 1 is not contiguous: it reappears after query 2'"),
    ("7 qid:2 1:0.5 2:x", "'2:x'"),
    ("1 qid:2 3:1 2:1", "'2:1 after feature 3 (ids must increase)'"),
    ("1 qid:2 5:0.5", "'5:0.5 (num_features 4)'"),
    ("nan qid:2", "'relevance=nan'"),
])
def test_strict_excerpt_names_the_offending_token(tmp_path, capsys, line, message):
  source = _write(tmp_path / "train.txt", GOOD + [line])
  _cli("--input", source, "--output", tmp_path / "out", "--num-features", 4)
  assert capsys.readouterr().err.strip().endswith(message)


@pytest.mark.parametrize("content", [b"", b"# only a comment\n\n"], ids=["no bytes", "no documents"])
def test_strict_mode_rejects_an_empty_file(tmp_path, capsys, content):
  empty = tmp_path / "train.txt"
  empty.write_bytes(content)
  assert _cli("--input", empty, "--output", tmp_path / "out") == 2
  assert capsys.readouterr().err.strip() == f"{empty}:0: empty file: no documents"


def test_skip_mode_counts_every_kind_and_writes_the_good_lines(tmp_path, capsys):
  bad = [line for reason in sorted(MALFORMED) for line in MALFORMED[reason]]
  lines = GOOD + bad + [AFTER] + ["3 qid:3 1:9", "x qid:3 1:1", "1 qid:3 2:8"] + bad[:4] + ["0 qid:2 1:1"] * 2
  good_lines = GOOD + [AFTER] + ["3 qid:3 1:9", "1 qid:3 2:8"]
  source = _write(tmp_path / "a.txt", lines, ending="\r\n")
  (tmp_path / "b.txt").write_bytes(b"")
  assert _cli("--input", tmp_path / "*.txt", "--output", tmp_path / "out", "--on-error", "skip",
              "--num-features", 4) == 0
  expected = collections.Counter({reason: len(variants) for reason, variants in MALFORMED.items()})
  # "x qid:3 1:1", bad[:4] (the first bad feature tokens), and query 2 twice more after query 3.
  expected += collections.Counter({"bad relevance": 1, "bad feature token": 4, "non-contiguous query": 2})
  manifest = layout.read_manifest(tmp_path / "out")
  ingest = manifest["ingest"]
  assert ingest["skipped_by_reason"] == dict(sorted(expected.items()))
  assert ingest["rows_skipped"] == sum(expected.values()) == len(lines) - len(good_lines)
  assert ingest["rows_read"] == len(lines) and ingest["rows_written"] == len(good_lines)
  assert ingest["file_errors"] == [{"file": str(tmp_path / "b.txt"), "line": 0, "reason": "empty file"}]
  _assert_lists(_records(tmp_path / "out"), good_lines, 4, 2)
  out = capsys.readouterr().out
  for reason, count in expected.items():
    assert f"skipped {count} rows: {reason}" in out
  assert manifest["source"]["files"] == [str(source), str(tmp_path / "b.txt")]


# ---------------------------------------------------------------- options and output


@pytest.mark.parametrize("args, message", [
    (("--num-features", "0"), "--num-features"),
    (("--num-features", str(letor.MAX_FEATURES + 1)), "--num-features"),
    (("--max-list-size", "0"), "--max-list-size"),
    (("--max-records-per-shard", "0"), "--max-records-per-shard"),
    (("--eval-fraction", "0"), "--eval-fraction must be in (0, 1), got 0.0"),
    (("--eval-fraction", "1"), "--eval-fraction must be in (0, 1), got 1.0"),
    (("--eval-fraction", "0.1", "--eval-input", "x.txt"), "not allowed with argument"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, message):
  source = _write(tmp_path / "train.txt", GOOD)
  assert _cli("--input", source, "--output", tmp_path / "out", *args) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err


def test_eval_fraction_holds_out_whole_queries_chosen_by_a_hash_of_the_qid(tmp_path):
  """Every list lands whole in one split; the eval split holds exactly the queries the hash rule
  names (an oracle over the qids), about the fraction of them; feature stats are of train only."""
  rng = np.random.default_rng(3)
  lines = [f"{rng.integers(0, 3)} qid:{q} 1:{rng.normal():.4f} 2:{q % 5}" for q in range(400)
           for _ in range(int(rng.integers(1, 6)))]
  source = _write(tmp_path / "train.txt", lines)
  assert _cli("--input", source, "--output", tmp_path / "out", "--eval-fraction", "0.25") == 0
  manifest = layout.read_manifest(tmp_path / "out")
  train, evaluation = _records(tmp_path / "out"), _records(tmp_path / "out", "eval")
  expected = {q for q in range(400) if letor.held_out_for_eval(q, 0.25)}
  assert set(evaluation["qid"].tolist()) == expected and len(evaluation) == len(expected)
  assert set(train["qid"].tolist()) == set(range(400)) - expected
  assert abs(len(expected) - 100) < 4 * math.sqrt(400 * 0.25 * 0.75)
  documents = {q: n for q, n in collections.Counter(int(l.split()[1][4:]) for l in lines).items()}
  for records in (train, evaluation):  # Whole lists: every document of each query kept.
    assert [int(m.sum()) for m in records["mask"]] == [documents[q] for q in records["qid"].tolist()]
  train_features = np.concatenate([r["features"][r["mask"] > 0] for r in train])
  np.testing.assert_allclose(manifest["feature_stats"]["mean"], train_features.mean(axis=0), rtol=1e-5)
  assert manifest["source"]["eval_fraction"] == 0.25 and manifest["source"]["eval_files"] == []
  assert [letor.held_out_for_eval(q, 0.5) for q in sorted(expected)] == [True] * len(expected)  # Nested.


def test_an_empty_eval_split_and_documents_without_features_are_refused(tmp_path, capsys):
  source = _write(tmp_path / "train.txt", GOOD)
  skipped = _write(tmp_path / "eval.txt", ["x qid:1 1:1"])
  assert _cli("--input", source, "--eval-input", skipped, "--output", tmp_path / "out", "--on-error", "skip") == 2
  assert "the eval split would be empty" in capsys.readouterr().err
  bare = _write(tmp_path / "bare.txt", ["1 qid:1", "0 qid:1"])
  assert _cli("--input", bare, "--output", tmp_path / "bare") == 2
  assert "no feature in any document; give --num-features" in capsys.readouterr().err
  assert _cli("--input", bare, "--output", tmp_path / "bare", "--num-features", 2) == 0
  _assert_lists(_records(tmp_path / "bare"), ["1 qid:1", "0 qid:1"], 2, 2)


def test_rerun_replaces_an_existing_dataset(tmp_path):
  source = _write(tmp_path / "train.txt", [f"1 qid:{q} 1:1" for q in range(10)])
  out = tmp_path / "out"
  assert _cli("--input", source, "--output", out, "--max-records-per-shard", 3) == 0
  assert len(list(out.glob("train-*.bin"))) == 4
  assert _cli("--input", source, "--output", out) == 0
  assert sorted(p.name for p in out.iterdir()) == [layout.MANIFEST, "train-00000.bin"]


# ---------------------------------------------------------------- real data


@pytest.mark.slow
def test_mslr_web_sample_from_the_rankeval_sdist_converts_to_its_line_and_qid_counts(tmp_path):
  # --no-build-isolation: `pip download` of an sdist prepares its metadata, and with isolation
  # it would first build rankeval's build dependencies (scipy) from source under --no-binary :all:.
  download = subprocess.run(
      [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
       "rankeval==0.8.2", "-d", str(tmp_path)], capture_output=True, text=True, timeout=300)
  archives = list(tmp_path.glob("rankeval-0.8.2.tar.gz"))
  if download.returncode != 0 or not archives:
    pytest.skip(f"could not download the rankeval sdist: {download.stderr.strip()[-300:]}")
  with tarfile.open(archives[0]) as archive:
    data = archive.extractfile(MSLR_SAMPLE).read()
  source = tmp_path / "msn1.fold1.train.5k.txt"
  source.write_bytes(data)
  lines = [line for line in data.decode().splitlines() if line.strip()]
  qids = [line.split()[1] for line in lines]
  runs = [qid for i, qid in enumerate(qids) if i == 0 or qids[i - 1] != qid]
  assert len(runs) == len(set(qids))  # The sample's queries are contiguous.
  longest = max(collections.Counter(qids).values())

  assert _cli("--input", source, "--output", tmp_path / "out") == 0
  manifest = layout.read_manifest(tmp_path / "out")
  assert manifest["num_features"] == 136 and manifest["max_list_size"] == longest
  assert manifest["ingest"]["rows_read"] == manifest["ingest"]["rows_written"] == len(lines) == 5000
  assert manifest["ingest"]["queries_written"] == len(runs)
  records = _records(tmp_path / "out")
  assert len(records) == len(runs)
  np.testing.assert_array_equal(records["qid"], [int(qid[len("qid:"):]) for qid in runs])
  np.testing.assert_array_equal(records["mask"].sum(axis=1), [qids.count(qid) for qid in runs])
  relevance = records["relevance"][records["mask"] == 1]
  np.testing.assert_array_equal(relevance, [float(line.split()[0]) for line in lines])
  assert set(np.unique(relevance)) <= {0, 1, 2, 3, 4}
  first = lines[0].split()
  np.testing.assert_array_equal(records["features"][0, 0], np.array([float(t.split(":")[1]) for t in first[2:]],
                                                                     np.float32))
  assert manifest["feature_stats"]["count"] == 5000
  assert all(math.isfinite(s) for s in manifest["feature_stats"]["std"])
