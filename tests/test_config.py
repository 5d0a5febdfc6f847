"""Tests for rankjax/config.py: the schema accepts its own defaults and every rejection names its key.

Each invalid config is the default with one change, so the error can only come from that change.
"""

import pathlib

import ml_collections
import pytest

from rankjax import config as config_lib
from rankjax.config import ConfigError, base_config, validate

NUM_DEVICES = 8
REPO = pathlib.Path(__file__).resolve().parents[1]


def _rejected_key(config, num_devices=NUM_DEVICES) -> str:
  with pytest.raises(ConfigError) as info:
    validate(config, num_devices)
  assert str(info.value).startswith(f"config key '{info.value.key}'")
  return info.value.key


def _with_value(dotted_key: str, value):
  """The default config with one value replaced, bypassing ConfigDict's type safety."""
  d = base_config().to_dict()
  *sections, name = dotted_key.split(".")
  node = d
  for part in sections:
    node = node[part]
  node[name] = value
  return ml_collections.ConfigDict(d)


def test_base_config_validates_for_eight_devices():
  validate(base_config(), NUM_DEVICES)


def test_unknown_top_level_key_is_rejected_by_name():
  config = base_config()
  config.no_such_key = 1
  assert _rejected_key(config) == "no_such_key"


def test_unknown_model_key_is_rejected_by_dotted_name():
  config = base_config()
  config.model.unlock()
  config.model.no_such_key = 1
  assert _rejected_key(config) == "model.no_such_key"


def test_value_of_wrong_type_is_rejected_by_name():
  assert _rejected_key(_with_value("train.steps", "1400")) == "train.steps"


def test_float_where_int_expected_is_rejected_by_name():
  assert _rejected_key(_with_value("train.batch_size", 2048.0)) == "train.batch_size"


def test_scalar_in_place_of_a_section_is_rejected_by_name():
  assert _rejected_key(_with_value("data.synthetic", 5)) == "data.synthetic"


@pytest.mark.parametrize("steps", [0, -1])
def test_non_positive_train_steps_is_rejected(steps):
  config = base_config()
  config.train.steps = steps
  assert _rejected_key(config) == "train.steps"


def test_batch_size_not_divisible_by_data_axis_is_rejected():
  config = base_config()
  config.mesh.shape = (4, 2)
  config.train.batch_size = 1022
  assert config.train.batch_size % config.mesh.shape[0]  # The data axis is the first one.
  assert _rejected_key(config) == "train.batch_size"


def test_batch_split_over_data_only_needs_divisibility_by_the_data_axis_only():
  config = base_config()
  config.mesh.shape = (4, 2)
  config.mesh.rules = (("batch", ("data",)), ("table_rows", ("data",)), ("embed", ()))
  config.train.batch_size = 4 * 255  # Divisible by the data axis (4), not by all 8 devices.
  validate(config, NUM_DEVICES)


def test_tables_sharded_over_an_axis_the_batch_does_not_use_are_rejected():
  config = base_config()
  config.mesh.shape = (4, 2)
  config.mesh.rules = (("batch", ("data",)), ("table_rows", ("data", "model")), ("embed", ()))
  assert _rejected_key(config) == "mesh.rules"


def test_eval_batch_size_not_divisible_by_data_axis_is_rejected():
  config = base_config()
  config.train.eval_batch_size = NUM_DEVICES * 1000 + 1
  assert _rejected_key(config) == "train.eval_batch_size"


@pytest.mark.parametrize("shape", [(3, 1), (4, 4), (-1, 3), (-1, -1), (0, 8)])
def test_mesh_shape_that_does_not_fit_the_devices_is_rejected(shape):
  config = base_config()
  config.mesh.shape = shape
  assert _rejected_key(config) == "mesh.shape"


def test_mesh_without_a_data_axis_is_rejected():
  config = base_config()
  config.mesh.axes = ("replica", "model")
  config.mesh.rules = ()
  assert _rejected_key(config) == "mesh.axes"


def test_mesh_rule_naming_an_unknown_axis_is_rejected():
  config = base_config()
  config.mesh.rules = (("batch", ("no_such_axis",)),)
  assert _rejected_key(config) == "mesh.rules"


def test_unknown_dense_optimizer_is_rejected():
  config = base_config()
  config.train.dense_optimizer = "sgd_nonexistent"
  assert config.train.dense_optimizer not in config_lib.DENSE_OPTIMIZERS
  assert _rejected_key(config) == "train.dense_optimizer"


def test_bottom_mlp_not_ending_in_embed_dim_is_rejected():
  config = base_config()
  config.model.bottom_mlp = (64, config.model.embed_dim + 1)
  assert _rejected_key(config) == "model.bottom_mlp"


def test_top_mlp_not_ending_in_one_logit_is_rejected():
  config = base_config()
  config.model.top_mlp = (128, 2)
  assert _rejected_key(config) == "model.top_mlp"


def test_unknown_model_name_is_rejected():
  config = base_config()
  config.model.name = "no_such_model"
  assert _rejected_key(config) == "model.name"


def test_default_config_file_loads_and_validates():
  config = config_lib.load_config_file(str(REPO / "configs" / "default.py"))
  validate(config, NUM_DEVICES)
  expected = base_config()
  expected.eval.write_scores = True  # The README's export -> predict parity check reads them.
  config_lib.select_on_validation(expected, eval_every=350, synthetic_records=50_000)
  assert config.to_dict() == expected.to_dict()
  assert (config.train.early_stopping.metric, config.train.early_stopping.patience) == ("auc", 0)


def test_missing_config_file_raises_naming_config(tmp_path):
  with pytest.raises(ConfigError) as info:
    config_lib.load_config_file(str(tmp_path / "absent.py"))
  assert info.value.key == "config"


def test_config_file_without_get_config_raises_naming_config(tmp_path):
  path = tmp_path / "empty_config.py"
  path.write_text('"""No get_config here."""\n')
  with pytest.raises(ConfigError) as info:
    config_lib.load_config_file(str(path))
  assert info.value.key == "config"
