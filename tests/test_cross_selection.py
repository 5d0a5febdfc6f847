"""`rankjax data crosses` (rankjax/data/cross_selection.py): pairs with a planted interaction score
high, pairs without one near 0; the CLI samples a dataset's train split and prints the crosses."""

import itertools

import numpy as np
import pytest

from rankjax.cli import data as data_cli
from rankjax.data import cross_selection, synthetic
from rankjax.config import base_config


def _clicks(n=200_000, vocab=30, features=6, pair=(1, 4), strength=0.5, seed=0):
  """ids [n, features] and labels from main effects plus one interaction u_f(x_f) u_g(x_g)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (n, features))
  logit = -1.0 + sum(rng.normal(0, 0.5, vocab)[ids[:, f]] for f in range(features))
  f, g = pair
  logit += strength * rng.normal(0, 1, vocab)[ids[:, f]] * rng.normal(0, 1, vocab)[ids[:, g]]
  return ids, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)


def test_the_planted_pair_scores_high_and_the_others_near_zero():
  ids, labels = _clicks()
  names = [f"cat_{i}" for i in range(6)]
  scores = cross_selection.score_pairs(ids, labels, [30] * 6, names)
  assert len(scores) == 15 and [s.z for s in scores] == sorted((s.z for s in scores), reverse=True)
  assert scores[0].features == ("cat_1", "cat_4") and scores[0].z > 50
  # No interaction: z near 0 (the additive fit on the same rows spreads it a little either way).
  assert all(abs(s.z) < 4 for s in scores[1:])
  assert scores[0].cells == 900 and scores[0].rows == 200_000  # Every cell of 30 x 30 has >= 30 rows.


def test_cells_over_the_dense_limit_are_counted_by_the_pairs_seen(monkeypatch):
  ids, labels = _clicks(n=50_000)
  dense = cross_selection.score_pairs(ids, labels, [30] * 6, [f"cat_{i}" for i in range(6)])
  monkeypatch.setattr(cross_selection, "DENSE_CELLS", 10)
  sparse = cross_selection.score_pairs(ids, labels, [30] * 6, [f"cat_{i}" for i in range(6)])
  assert [(s.features, s.cells, s.rows) for s in sparse] == [(s.features, s.cells, s.rows) for s in dense]
  np.testing.assert_allclose([s.z for s in sparse], [s.z for s in dense], rtol=1e-9)


def test_the_cli_ranks_a_datasets_planted_pairs_and_prints_the_crosses(tmp_path, capsys):
  c = base_config().data.synthetic
  c.num_train, c.num_eval, c.num_interacting_pairs = 60_000, 1000, 2
  c.vocab_sizes, c.signal_scale, c.latent_dim = (20,) * 8, 2.0, 2
  spec = synthetic.SyntheticSpec.from_config(c)
  synthetic.generate(tmp_path / "d", spec)
  planted = synthetic._PlantedModel(spec, np.random.default_rng(spec.seed)).pairs
  assert data_cli.main(["crosses", "--path", str(tmp_path / "d"), "--records", "60000", "--top", "5"]) == 0
  out = capsys.readouterr().out
  assert "60,000 train records" in out and "28 pairs" in out
  proposed = out.split("--config.model.crosses=")[1].strip().strip('"')
  assert set(eval(proposed)) == {(f"cat_{f}", f"cat_{g}") for f, g in planted}  # The planted pairs, only.


@pytest.mark.parametrize("args, message", [(["--records", "0"], "--records must be >= 1"),
                                           (["--label-index", "3"], "--label-index must be in [0, 1)")])
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
  c = base_config().data.synthetic
  c.num_train, c.num_eval, c.vocab_sizes = 2000, 100, (5, 6, 7)
  synthetic.generate(tmp_path / "d", synthetic.SyntheticSpec.from_config(c))
  assert data_cli.main(["crosses", "--path", str(tmp_path / "d"), *args]) == 2
  assert message in capsys.readouterr().err


def test_every_pair_is_scored_once():
  ids, labels = _clicks(n=5000, features=4, pair=(0, 1))
  scores = cross_selection.score_pairs(ids, labels, [30] * 4, list("abcd"))
  assert sorted(s.features for s in scores) == list(itertools.combinations("abcd", 2))
