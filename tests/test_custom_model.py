"""A model defined only in this file trains through `rankjax train` with no change to the library:
adding a model touches only its module, a config and a test (README "Adding a model").

This module *is* the model: logistic regression over every feature, a linear term on the dense
features plus one dim-1 embedding per categorical feature (picked by name), registered the
documented way, by its module name in `model.name`.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
from flax import nnx

from rankjax.config import ConfigError

HERE = pathlib.Path(__file__).resolve().parent
TASKS = ("ctr",)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.embed_dim = 1  # One weight per id: the default tables are one per feature at this dim.
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  if config.model.embed_dim != 1:
    raise ConfigError("model.embed_dim", "logistic regression takes one weight per id: must be 1")


class LogisticRegression(nnx.Module):
  def __init__(self, config, inputs, *, rngs: nnx.Rngs):
    (self.head,) = inputs.heads
    self.features = tuple(f.name for f in inputs.embedded)
    self.dense = nnx.Linear(inputs.num_dense, 1, rngs=rngs)

  def __call__(self, inputs) -> dict[str, jax.Array]:
    logit_b = self.dense(inputs.dense)[:, 0]
    for name in self.features:
      logit_b = logit_b + inputs.embedded[name][:, 0]
    return {self.head: logit_b}


def create(config, inputs, *, rngs: nnx.Rngs) -> LogisticRegression:
  return LogisticRegression(config, inputs, rngs=rngs)


CONFIG = '''
from rankjax.config import base_config


def get_config():
  c = base_config("test_custom_model")
  c.data.synthetic.num_train = 8192
  c.data.synthetic.num_eval = 2048
  c.data.synthetic.vocab_sizes = (50, 20, 100, 7, 30, 60)
  c.train.batch_size = 256
  c.train.eval_batch_size = 512
  c.train.steps = 60
  c.train.log_every = 20
  c.train.progress_bar = False
  c.checkpoint.every_steps = 30
  return c
'''


def test_a_model_defined_in_a_test_file_trains_through_rankjax_train(tmp_path):
  config_file = tmp_path / "logreg.py"
  config_file.write_text(CONFIG)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
  p = subprocess.run([sys.executable, "-m", "rankjax.cli", "train", "--config", str(config_file),
                      "--workdir", str(tmp_path / "work")], capture_output=True, text=True, cwd=tmp_path,
                     env=env, timeout=600)
  assert p.returncode == 0, p.stderr
  summary = json.loads((tmp_path / "work" / "summary.json").read_text())
  assert summary["steps"] == 60
  # Better than chance on the planted model, as a model that learnt from the features must be.
  assert summary["eval_auc"] > 0.6, summary
  assert sorted(d.name for d in (tmp_path / "work" / "checkpoints").iterdir() if d.name.isdigit()) == ["30", "60"]
