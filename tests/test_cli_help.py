"""`--help` on every command lists its flags (exit 0), and `rankjax config show` prints every key
of the resolved config with its value, default and type."""

import pytest

from helpers import TINY_CONFIG
from rankjax.cli.main import COMMANDS, main


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_help_on_every_command_lists_its_flags(words, capsys):
  try:
    code = main(["rankjax", *words, "--help"])
  except SystemExit as e:  # argparse commands exit after printing their help.
    code = e.code
  assert code == 0
  out = capsys.readouterr().out
  assert "usage: rankjax" in out and "--" in out
  if words in {("train",), ("plan",), ("profile",), ("bench", "train"), ("config",)}:
    assert "--config" in out and "rankjax config show" in out


def test_config_show_prints_every_key_with_default_and_type_and_marks_overrides(capsys):
  assert main(["rankjax", "config", "show", "--config", TINY_CONFIG, "--config.train.steps=7"]) == 0
  lines = capsys.readouterr().out.splitlines()
  steps = next(line for line in lines if " train.steps = " in line)
  assert steps.startswith("*") and "= 7" in steps and "default 1400, int" in steps
  assert any(line.startswith("  task.name = 'ctr'") for line in lines)
  assert len(lines) > 60 and all(" = " in line and "# default" in line for line in lines)


def test_config_show_of_an_unknown_key_exits_2_naming_it(capsys):
  assert main(["rankjax", "config", "show", "--config", TINY_CONFIG, "--config.train.nope=1"]) == 2
  assert "train.nope" in capsys.readouterr().err
