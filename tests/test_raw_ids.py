"""Raw 64-bit ids end to end: `rankjax data criteo --vocab raw` keeps each id's 64 bits, the task
feeds both words to the engine, and tables over them are dynamic (a map keyed by both words) or
hashed from both words: ids that share a low word are different ids."""

import jax
import numpy as np
import pytest

from rankjax import train as train_lib
from rankjax.cli import data as data_cli
from rankjax.config import load_config_file
from rankjax.embedding import dynamic
from rankjax.embedding.engine import DYNAMIC
from rankjax.errors import ConfigError

from helpers import REPO, tiny_config
from test_criteo import _lines, _write
from test_dynamic_tables import _map_of
from test_train_step import run_steps

TWINS = [(hi << 32) | lo for lo in (5, 0xFFFFFFFF, 0x80000000) for hi in (0, 1, 0xDEADBEEF)]  # 3 low words x 3


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory):
  """600 Criteo lines whose C1 holds the nine TWINS (three ids per low word), converted raw."""
  root = tmp_path_factory.mktemp("raw_ids")
  lines = _lines(600, seed=4)
  rng = np.random.default_rng(4)
  for i, line in enumerate(lines):
    fields = line.split("\t")
    fields[14] = f"{TWINS[int(rng.integers(0, len(TWINS)))]:x}"
    lines[i] = "\t".join(fields)
  tsv = _write(root / "day.tsv", lines)
  assert data_cli.main(["criteo", "--input", str(tsv), "--output", str(root / "data"), "--vocab", "raw",
                        "--eval-fraction", "0.2"]) == 0
  return root / "data"


def _config(data, *overrides):
  config = tiny_config(batch_size=64, eval_batch_size=128)
  config.data.path = str(data)
  config.embedding.overrides = overrides
  return config


# Compiling 26 maps takes minutes here: the steps run with C3..C26 hashed (from both words).
HASHED = tuple(f"C{i}:rows=50" for i in range(3, 27))


def test_every_table_is_a_wide_dynamic_map_holding_each_64_bit_id_apart(raw_data, tmp_path):
  built = train_lib.build(_config(raw_data), tmp_path / "default", jax.devices()[:1])
  engine = built.task.engine
  assert set(engine.dynamic) == {f"cat_{i}" for i in range(26)} and all(d.spec.wide for d in engine.dynamic.values())
  # Sized by the data: capacity = the distinct train ids of the field (the empty-field id included).
  assert [engine.dynamic[f"cat_{i}"].spec.capacity for i in range(26)] == list(built.manifest["vocab_sizes"])
  config = _config(raw_data, *HASHED, "C2:map_shards=4")  # C2 in 4 pieces, sized with headroom
  config.mesh.shape = (1, 1)
  exp, state, losses = run_steps(config, tmp_path / "run", jax.devices()[:1], 8)
  assert np.all(np.isfinite(losses)) and set(exp.task.engine.dynamic) == {"cat_0", "cat_1"}
  held = _map_of(state.embedding[DYNAMIC]["cat_0"])
  assert set(held) == set(TWINS)  # 9 ids over 3 low words: 9 rows, none shared
  assert len(set(held.values())) == len(TWINS)
  # 8 batches of 64 cover the 480 train records: every distinct C2 id holds a row of its piece.
  pieces = state.embedding[DYNAMIC]["cat_1"]
  assert int(np.sum(np.asarray(pieces["keys"]) != dynamic.PAD)) == exp.manifest["vocab_sizes"][1]
  # kind=dynamic alone keeps the default size.
  built = train_lib.build(_config(raw_data, "C2:kind=dynamic"), tmp_path / "kind", jax.devices()[:1])
  assert built.task.engine.dynamic["cat_1"].spec.capacity == built.manifest["vocab_sizes"][1]


def test_sharded_steps_on_raw_ids_equal_one_device(raw_data, tmp_path):
  # C1 evicts (6 rows for 9 ids); C2 dynamic at its default size in 8 pieces, one a device; C3
  # hashed into 7 rows, table-wise.
  overrides = (*HASHED, "C1:capacity=6", "C2:map_shards=8", "C3:rows=7", "C3:sharding=table_wise")
  ref_config = _config(raw_data, *overrides)
  ref_config.mesh.shape = (1, 1)
  ref_exp, ref_state, ref_losses = run_steps(ref_config, tmp_path / "ref", jax.devices()[:1], 8)
  config = _config(raw_data, *overrides)
  config.mesh.shape = (2, 4)
  exp, state, losses = run_steps(config, tmp_path / "mesh", jax.devices(), 8)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert "cat_2" not in exp.task.engine.dynamic and "cat_0" in exp.task.engine.dynamic
  tables, ref_tables = exp.task.engine.table_values(state.embedding), ref_exp.task.engine.table_values(ref_state.embedding)
  assert tables["cat_2"].shape[0] == 7
  for name in ref_tables:
    np.testing.assert_allclose(tables[name], ref_tables[name], rtol=1e-5, atol=1e-6)
  for name, arrays in ref_state.embedding[DYNAMIC].items():
    for key, want in arrays.items():
      np.testing.assert_array_equal(np.asarray(state.embedding[DYNAMIC][name][key]), np.asarray(want))
  assert len(_map_of(ref_state.embedding[DYNAMIC]["cat_0"])) == 6


def test_what_needs_row_ids_is_refused_in_one_line(raw_data, tmp_path):
  with pytest.raises(ConfigError, match="raw 64-bit ids") as err:
    train_lib.build(_config(raw_data, "C2:kind=static"), tmp_path / "static", jax.devices()[:1])
  assert err.value.key == "embedding.overrides"
  config = load_config_file(str(REPO / "configs" / "wide_deep.py"))
  config.data.path = str(raw_data)
  with pytest.raises(ConfigError, match="raw 64-bit ids") as err:
    train_lib.build(config, tmp_path / "crosses", jax.devices()[:1])
  assert err.value.key == "model.crosses"
