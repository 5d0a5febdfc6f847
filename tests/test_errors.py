"""Errors a user can cause come back as one line naming the file, key or flag, with exit 2 (the
traceback only with RANKJAX_DEBUG=1); metrics.jsonl with a torn last line and TensorBoard after
a resume hold each step once."""

import json
import os
import struct
import subprocess
import sys

import pytest

from helpers import TINY_CONFIG
from rankjax.cli.main import main
from rankjax.metric_writers import MetricWriter


def rankjax(args, cwd, **env):
  return subprocess.run([sys.executable, "-m", "rankjax.cli", *args], capture_output=True, text=True, cwd=cwd,
                        timeout=300, env={**os.environ, **env})


@pytest.mark.parametrize("content, expected", [
    ("def get_config(:\n", "bad.py:1: syntax error"),
    ("def get_config():\n  return {'a': 1}\n", "returned a dict, not an ml_collections.ConfigDict"),
    ("def get_config():\n  return 1 / 0\n", "bad.py:2: ZeroDivisionError"),
    ("x = 1\n", "defines no get_config()"),
])
def test_a_broken_config_file_is_one_line_naming_it(tmp_path, capsys, content, expected):
  (tmp_path / "bad.py").write_text(content)
  for command in (["plan"], ["profile", "--workdir", str(tmp_path / "w")], ["bench", "train"], ["train", "--workdir", str(tmp_path / "w")]):
    assert main(["rankjax", *command, "--config", str(tmp_path / "bad.py")]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args, expected", [
    (["plan", "--config", TINY_CONFIG, "--devices", "abc"], "--devices=abc"),
    (["plan", "--config", TINY_CONFIG, "--devices", "0"], "--devices=0: must be >= 1"),
    (["plan", "--config", TINY_CONFIG, "--devices", "-4"], "--devices=-4: must be >= 1"),
    (["bench", "embedding", "--rows", "abc"], "'abc' is not a comma-separated list of integers"),
    (["bench", "embedding", "--collectives", "--host-exchange-capacity", "0"], "'0': must be > 0"),
    (["bench", "embedding", "--exchange-capacity", "nan"], "'nan': must be > 0"),
    (["bench", "data", "--path", "/nonexistent"], "/nonexistent/manifest.json: no manifest"),
    (["train", "--config", TINY_CONFIG, "--workdir", "afile"], "--workdir afile: exists and is not a directory"),
])
def test_bad_command_line_values_exit_2_with_one_line(tmp_path, args, expected):
  (tmp_path / "afile").write_text("x")
  p = rankjax(args, tmp_path)
  assert p.returncode == 2 and expected in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("manifest, expected", [([1, 2], "a manifest is a JSON object, this holds a list"),
                                                ({"format": "rankjax-fixed-width", "format_version": 2, "fields": [],
                                                  "record_bytes": 0, "splits": {}}, "manifest has no 'num_dense'")])
def test_a_malformed_manifest_is_one_line(tmp_path, manifest, expected):
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
  p = rankjax(["plan", "--config", TINY_CONFIG, f"--config.data.path={tmp_path / 'data'}"], tmp_path)
  assert p.returncode == 2 and expected in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_rankjax_debug_shows_the_traceback(tmp_path):
  p = rankjax(["bench", "data", "--path", "/nonexistent"], tmp_path, RANKJAX_DEBUG="1")
  assert p.returncode != 0 and "Traceback" in p.stderr


def test_a_torn_last_metrics_line_is_dropped_on_resume_and_other_bad_lines_are_named(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 5, "split": "train"}\n{"step": 10, "split": "train"}\n{"step": 15, "spl')
  writer = MetricWriter(tmp_path)
  assert writer.truncate_after(10) == 1
  assert path.read_text() == '{"step": 5, "split": "train"}\n{"step": 10, "split": "train"}\n'
  path.write_text('{"step": 5}\ngarbage\n{"step": 10}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON event"):
    writer.truncate_after(10)
  writer.close()


def _tensorboard_events(directory):
  """(file, step, kind) of every event in the TFRecord event files, oldest file first."""
  from tensorboardX.proto import event_pb2
  out = []
  for path in sorted(directory.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      kind = "purge" if event.HasField("session_log") and event.session_log.status == event.session_log.START else (
          "scalar" if event.HasField("summary") else "other")
      out.append((path.name, event.step, kind))
  return out


def test_tensorboard_is_told_to_purge_the_steps_after_the_restored_checkpoint(tmp_path):
  writer = MetricWriter(tmp_path)
  for step in (5, 10, 15):
    writer.write(step, "train", loss=1.0)
  writer.truncate_after(10)
  writer.write(15, "train", loss=0.5)
  writer.close()
  events = _tensorboard_events(tmp_path / "tensorboard")
  purge = [e for e in events if e[2] == "purge"]
  assert [e[1] for e in purge] == [11]  # TensorBoard drops the earlier steps >= 11 from then on.
  assert events.index(purge[0]) < events.index(next(e for e in events if e[1] == 15 and e[0] == purge[0][0]))
