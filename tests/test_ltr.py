"""Learning to rank on LETOR query lists: the losses and NDCG against rax (the oracle), the
pipeline's list batches, and `rankjax data letor` -> `rankjax train` end to end with exact resume."""

import functools
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO, task_batch_spec
from rankjax import losses, metrics
from rankjax.config import ConfigError, load_config_file, validate
from rankjax.cli import data as data_cli
from rankjax.data import layout, pipeline

LTR_CONFIG = str(REPO / "configs" / "ltr_mslr.py")


def _lists(seed=0, num_lists=8, list_size=12, relevant_everywhere=True):
  """Random scores, graded relevance 0..4 and masks (every list keeps at least two documents)."""
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(num_lists, list_size)).astype(np.float32)
  relevance = rng.integers(0, 5, (num_lists, list_size)).astype(np.float32)
  mask = np.arange(list_size)[None] < rng.integers(2, list_size + 1, (num_lists, 1))
  if relevant_everywhere:
    relevance[:, 0] = np.maximum(relevance[:, 0], 1)
  return scores, relevance, mask


# ---------------------------------------------------------------- losses and NDCG vs rax


def test_softmax_loss_ignores_padding_values():
  scores, relevance, mask = _lists()
  base = losses.softmax_loss(jnp.asarray(scores), jnp.asarray(relevance), jnp.asarray(mask, jnp.float32))
  noisy = np.where(mask, scores, 1e6).astype(np.float32)
  np.testing.assert_allclose(losses.softmax_loss(jnp.asarray(noisy), jnp.asarray(relevance),
                                                 jnp.asarray(mask, jnp.float32)), base, rtol=1e-6)


def test_pairwise_logistic_loss_equals_rax_over_valid_pairs():
  rax = pytest.importorskip("rax")
  scores, relevance, mask = _lists(seed=1, relevant_everywhere=False)
  ours = losses.pairwise_logistic_loss(jnp.asarray(scores), jnp.asarray(relevance), jnp.asarray(mask, jnp.float32))
  oracle = rax.pairwise_logistic_loss(jnp.asarray(scores), jnp.asarray(relevance), where=jnp.asarray(mask))
  np.testing.assert_allclose(ours, oracle, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 10, 30])
def test_ndcg_at_k_equals_rax_including_lists_without_a_relevant_document(k):
  rax = pytest.importorskip("rax")
  scores, relevance, mask = _lists(seed=2, num_lists=20, list_size=16, relevant_everywhere=False)
  relevance[3] = 0  # NDCG 0, counted in the mean (rax's convention).
  oracle = rax.ndcg_metric(jnp.asarray(scores), jnp.asarray(relevance), where=jnp.asarray(mask), topn=k)
  np.testing.assert_allclose(metrics.ndcg_at_k(relevance, scores, mask, k), oracle, rtol=1e-5)


def test_ndcg_is_one_for_the_ideal_order_and_skips_lists_of_padding_only():
  relevance = np.array([[3, 1, 0, 2], [0, 0, 0, 0]], np.float32)
  mask = np.array([[1, 1, 1, 0], [0, 0, 0, 0]])
  assert metrics.ndcg_at_k(relevance, -np.arange(4.0)[None].repeat(2, 0), mask, 3) == 1.0


@pytest.mark.parametrize("config_file, overrides", [
    ("tiny.py", {"loss": "softmax"}),  # A ranking loss on the synthetic CTR default.
    ("ltr_mslr.py", {"loss": "bce"}),  # A CTR loss for the ranking model.
    ("ltr_mslr.py", {"loss": "listnet"}),
])
def test_impossible_loss_choices_raise_config_error_naming_train_loss(config_file, overrides):
  config = load_config_file(str(REPO / "configs" / config_file))
  config.data.path = "" if config_file == "tiny.py" else "/some/letor/data"
  config.train.update(overrides)
  with pytest.raises(ConfigError) as error:
    validate(config, 1)
  assert error.value.key == "train.loss"


# ---------------------------------------------------------------- LETOR data and the pipeline


def _random_ndcg(relevance, mask, k, draws=200, seed=0):
  """The expected NDCG@k of a random order of each list's documents."""
  rng = np.random.default_rng(seed)
  return float(np.mean([metrics.ndcg_at_k(relevance, rng.random(relevance.shape), mask, k) for _ in range(draws)]))


def _write_letor(path, first_qid, num_queries, weights, rng):
  """Queries of 3..20 documents; relevance 0..4 from a planted linear score plus a little noise."""
  lines = []
  for qid in range(first_qid, first_qid + num_queries):
    features = rng.normal(size=(rng.integers(3, 21), len(weights)))
    score = features @ weights + 0.3 * rng.normal(size=len(features))
    relevance = np.digitize(score, [0.0, 1.0, 2.0, 3.0])
    for rel, row in zip(relevance, features):
      lines.append(f"{rel} qid:{qid} " + " ".join(f"{i + 1}:{v:.4f}" for i, v in enumerate(row)))
  path.write_text("\n".join(lines) + "\n")
  return path


@pytest.fixture(scope="module")
def letor_data(tmp_path_factory):
  directory = tmp_path_factory.mktemp("letor")
  rng = np.random.default_rng(0)
  weights = rng.normal(size=8)
  train = _write_letor(directory / "train.txt", 1, 160, weights, rng)
  eval_ = _write_letor(directory / "eval.txt", 1000, 40, weights, rng)
  assert data_cli.main(["letor", "--input", str(train), "--eval-input", str(eval_),
                        "--output", str(directory / "data")]) == 0
  return directory / "data"


def _split_and_spec(letor_data, split):
  """(manifest, the split's records, the ltr config's batch spec) of the letor fixture."""
  manifest = layout.read_manifest(letor_data)
  config = load_config_file(LTR_CONFIG)
  config.data.path = str(letor_data)
  return manifest, layout.open_split(letor_data, manifest, split), task_batch_spec(config, manifest)


def test_list_batches_hold_relevance_features_and_mask_as_float32(letor_data):
  manifest, records, spec = _split_and_spec(letor_data, "train")
  batch = pipeline.ShuffledBatches(records, global_batch_size=16, seed=0, spec=spec)[3]
  lists, features = manifest["max_list_size"], manifest["num_features"]
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "relevance": ((16, lists), np.float32), "features": ((16, lists, features), np.float32),
      "mask": ((16, lists), np.float32)}
  eval_batch = pipeline.SequentialBatches(layout.open_split(letor_data, manifest, "eval"), 32, spec=spec)[1]
  np.testing.assert_array_equal(eval_batch["weight"], np.arange(32, 64) < 40)


# ---------------------------------------------------------------- `rankjax train` end to end

TRAIN_ARGS = ("--config.train.batch_size=16", "--config.train.eval_batch_size=32", "--config.train.log_every=1",
              "--config.train.eval_every=0", "--config.checkpoint.every_steps=10", "--config.model.hidden=(32,)",
              "--config.train.dense_learning_rate=0.01", "--config.train.progress_bar=False")


def _train(workdir, data, *args):
  os.makedirs(workdir, exist_ok=True)
  # cwd outside the checkout, as in tests/test_cli.py.
  return subprocess.run([sys.executable, "-m", "rankjax.cli", "train", "--config", LTR_CONFIG, "--workdir",
                         str(workdir), f"--config.data.path={data}", *TRAIN_ARGS, *args],
                        capture_output=True, text=True, cwd=workdir, timeout=300)


def _events(workdir, split):
  return [e for e in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if e["split"] == split]


@pytest.fixture(scope="module")
def straight_run(letor_data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  p = _train(workdir, letor_data, "--config.train.steps=30")
  assert p.returncode == 0, p.stderr
  return workdir, p.stdout


@pytest.mark.slow
def test_training_on_letor_lists_beats_random_order_ndcg_and_writes_checkpoints(letor_data, straight_run):
  workdir, out = straight_run
  (evaluation,) = _events(workdir, "eval")
  records = layout.open_split(letor_data, layout.read_manifest(letor_data), "eval")[:]
  with_relevant = ((records["relevance"] > 0) & (records["mask"] > 0)).any(axis=1)  # eval.no_relevant=skip
  random_ndcg = _random_ndcg(records["relevance"][with_relevant], records["mask"][with_relevant], 10)
  assert evaluation["step"] == 30 and evaluation["loss"] > 0
  assert evaluation["queries"] == with_relevant.sum() and evaluation["queries_skipped"] == 40 - with_relevant.sum()
  for key in ("ndcg@1", "ndcg@3", "ndcg@5", "dcg@10", "precision@5", "recall@10", "mrr", "map"):
    assert 0 < evaluation[key] and (key.startswith("dcg") or evaluation[key] <= 1), key
  assert evaluation["ndcg@10"] > random_ndcg + 0.1, (evaluation, random_ndcg)
  assert [e["step"] for e in _events(workdir, "train")] == list(range(1, 31))
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["20", "30"]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["steps"] == 30 and summary["eval_ndcg@10"] == evaluation["ndcg@10"]
  assert summary["lists_per_sec"] > 0 and "examples_per_sec" not in summary  # A ranking batch holds lists.
  assert [l for l in out.splitlines() if l.startswith("rankjax: final eval ndcg@10=")]


@pytest.mark.slow
def test_raising_steps_continues_ranking_training_like_a_longer_run(letor_data, straight_run, tmp_path):
  p = _train(tmp_path, letor_data, "--config.train.steps=20")
  assert p.returncode == 0, p.stderr
  p = _train(tmp_path, letor_data, "--config.train.steps=30")
  assert p.returncode == 0, p.stderr
  assert "resuming from checkpoint step 20" in p.stdout
  losses_by_step = lambda w: {e["step"]: e["loss"] for e in _events(w, "train")}
  assert losses_by_step(tmp_path) == losses_by_step(straight_run[0])
  assert _events(tmp_path, "eval")[-1]["ndcg@10"] == _events(straight_run[0], "eval")[-1]["ndcg@10"]


@pytest.mark.slow
def test_a_ctr_loss_on_letor_lists_exits_2_naming_train_loss(letor_data, tmp_path):
  p = _train(tmp_path, letor_data, "--config.train.loss=bce")
  assert p.returncode == 2 and "train.loss" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("policy", ("skip", "zero", "one"))
def test_queries_without_a_relevant_document_follow_eval_no_relevant(tmp_path, policy):
  import jax
  from rankjax.experiment import build
  from rankjax.train import evaluate
  lines = [f"{0 if q % 4 == 0 else (q + d) % 3} qid:{q} 1:{d} 2:{q % 7} 3:{(d * q) % 5}" for q in range(40)
           for d in range(5)]  # Queries 0, 4, 8, ... have no relevant document.
  (tmp_path / "l.txt").write_text("\n".join(lines) + "\n")
  assert data_cli.main(["letor", "--input", str(tmp_path / "l.txt"), "--eval-input", str(tmp_path / "l.txt"),
                        "--output", str(tmp_path / "data")]) == 0
  results = {}
  for p in ("skip", policy):
    config = load_config_file(LTR_CONFIG)
    config.data.path, config.train.eval_batch_size, config.eval.no_relevant = str(tmp_path / "data"), 16, p
    config.mesh.shape = (1, 1)
    exp = build(config, None, jax.devices()[:1])
    with jax.set_mesh(exp.partitioner.mesh):
      results[p] = evaluate(exp, exp.init_fn(0))
  skip, ours = results["skip"], results[policy]
  assert skip["queries"] == 30 and skip["queries_skipped"] == 10
  fill = {"skip": None, "zero": 0.0, "one": 1.0}[policy]
  for key in ("ndcg@10", "mrr", "map", "precision@5", "recall@5"):
    expected = skip[key] if fill is None else (30 * skip[key] + 10 * fill) / 40
    assert ours[key] == pytest.approx(expected, rel=1e-6), key
  assert ours["queries"] == (30 if policy == "skip" else 40)


def _loss_lists(seed, ties):
  """Random lists with padding, three all-zero-relevance lists, a padding-only and a
  single-document list; scores rounded (ties) or distinct."""
  rng = np.random.default_rng(seed)
  relevance = rng.integers(0, 4, (16, 9)).astype(np.float32)
  relevance[:3] = 0.0
  scores = rng.normal(size=(16, 9)).astype(np.float32)
  scores = np.round(scores, 1) + 0.05 if ties else scores  # +0.05: no score exactly at a kink (0).
  mask = rng.random((16, 9)) < 0.75
  mask[3] = False
  mask[4] = np.arange(9) == 0
  return jnp.asarray(scores, jnp.float32), jnp.asarray(relevance), jnp.asarray(mask)


RAX_LOSSES = {"approx_ndcg": "approx_t12n(ndcg_metric)", "softmax": "softmax_loss", "poly1_softmax": "poly1_softmax_loss", "pairwise_hinge": "pairwise_hinge_loss", "listmle": "listmle_loss", "sigmoid": "pointwise_sigmoid_loss",
              "mse": "pointwise_mse_loss", "pairwise_logistic": "pairwise_logistic_loss"}


@pytest.mark.parametrize("name", sorted(RAX_LOSSES))
def test_ranking_loss_value_and_gradient_equal_rax(name):
  import jax
  import rax
  ours = lambda s, r, m: losses.mean_of(losses.RANKING_LOSSES[name](s, r, m.astype(jnp.float32)))  # noqa: E731
  if name == "approx_ndcg":  # What rax.approx_t12n(rax.ndcg_metric) computes (its wrapper needs jax.util).
    approx_ranks = functools.partial(rax.utils.approx_ranks, step_fn=jax.nn.sigmoid)
    oracle = lambda s, r, where: -rax.ndcg_metric(s, r, where=where, rank_fn=approx_ranks)  # noqa: E731
  else:
    oracle = getattr(rax, RAX_LOSSES[name])
  theirs = lambda s, r, m: oracle(s, r, where=m)  # noqa: E731
  for ties in (True, False):
    scores, relevance, mask = _loss_lists(0, ties)
    np.testing.assert_allclose(ours(scores, relevance, mask), theirs(scores, relevance, mask), rtol=1e-5)
  # Gradients on distinct scores: where two scores tie, rax's ListMLE splits the gradient between
  # them differently from the derivative (checked against finite differences below).
  grad_ours = jax.grad(ours)(scores, relevance, mask)
  grad_theirs = jax.grad(theirs)(scores, relevance, mask)
  np.testing.assert_allclose(grad_ours, grad_theirs, atol=1e-5)


@pytest.mark.parametrize("topn", (1, 3, 10, None))
def test_lambda_ndcg_value_and_gradient_equal_rax_lambdaloss(topn):
  import jax
  import rax
  ours = lambda s, r, m: losses.mean_of(losses.lambda_ndcg_loss_terms(s, r, m.astype(jnp.float32), topn=topn))  # noqa: E731
  weights = functools.partial(rax.dcg_lambdaweight, topn=topn, normalize=True)
  theirs = lambda s, r, m: rax.pairwise_logistic_loss(s, r, where=m, lambdaweight_fn=weights)  # noqa: E731
  for ties in (True, False):
    scores, relevance, mask = _loss_lists(1, ties)
    np.testing.assert_allclose(ours(scores, relevance, mask), theirs(scores, relevance, mask), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(ours)(scores, relevance, mask), jax.grad(theirs)(scores, relevance, mask),
                               atol=1e-6)
  assert float(ours(scores, relevance, mask)) > 0


@pytest.mark.parametrize("name", sorted(losses.RANKING_LOSSES))
def test_every_ranking_loss_is_the_same_on_lists_cut_to_a_bucket_width(name):
  """A length-bucketed batch drops padding columns only: each loss (lambda_ndcg given the stored
  width, as the ranking task does) and its gradient stay the same."""
  import jax
  scores, relevance, mask = _loss_lists(2, ties=False)
  mask = mask & (jnp.arange(9) < 6)  # Every list within its first 6 positions: widths 6..9 hold them.
  loss = losses.RANKING_LOSSES[name]
  if name == "lambda_ndcg":
    loss = functools.partial(loss, topn=3, list_size=9)
  full = lambda s: losses.mean_of(loss(s, relevance, mask.astype(jnp.float32)))  # noqa: E731
  for width in (6, 7):
    cut = lambda s: losses.mean_of(loss(s, relevance[:, :width], mask[:, :width].astype(jnp.float32)))  # noqa: E731
    np.testing.assert_allclose(cut(scores[:, :width]), full(scores), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(cut)(scores[:, :width]), jax.grad(full)(scores)[:, :width], atol=1e-7)


def test_listmle_gradient_at_tied_scores_is_the_derivative():
  import jax
  scores, relevance, mask = _loss_lists(0, ties=True)
  loss = lambda s: losses.mean_of(losses.listmle_loss_terms(s.astype(jnp.float32), relevance, mask))  # noqa: E731
  grad = np.asarray(jax.grad(loss)(scores))
  base = np.asarray(scores, np.float64)
  for i, j in zip(*np.nonzero(np.asarray(mask)[:8])):
    step = np.zeros_like(base)
    step[i, j] = 1e-2
    numeric = (float(loss(jnp.asarray(base + step))) - float(loss(jnp.asarray(base - step)))) / 2e-2
    assert grad[i, j] == pytest.approx(numeric, abs=2e-3), (i, j)


@pytest.mark.parametrize("loss", sorted(losses.RANKING_LOSSES))
def test_every_ranking_loss_trains_the_ranker_by_name(letor_data, loss):
  config = load_config_file(LTR_CONFIG)
  config.data.path, config.train.loss, config.train.batch_size = str(letor_data), loss, 16
  for loss_value in _three_step_losses(config):
    assert np.isfinite(loss_value) and loss_value != 0  # approx_ndcg: minus an NDCG.


def _three_step_losses(config) -> list[float]:
  """The losses of three train steps of `config` on one device."""
  import jax
  from rankjax.experiment import build
  config.mesh.shape = (1, 1)
  validate(config, 1)
  exp = build(config, None, jax.devices()[:1])
  batches = pipeline.train_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size,
                                    num_batches=3, seed=0, spec=exp.task.batch_spec)
  out = []
  with jax.set_mesh(exp.partitioner.mesh):
    state = exp.init_fn(0)
    for batch in batches:
      state, metrics = exp.train_fn(state, exp.partitioner.place_batch(batch, exp.batch_shardings))
      out.append(float(metrics["loss"]))
  return out


def _attention_scorer(list_size=7, features=5):
  from flax import nnx
  from rankjax.config import base_config, model_module
  from rankjax.model_inputs import InputSpec
  config = base_config("ltr_attention")
  config.model.document_mlp, config.model.num_heads, config.model.feed_forward_dim = (16, 8), 2, 16
  spec = InputSpec(heads=("score",), num_document_features=features, list_size=list_size)
  return model_module("ltr_attention").create(config, spec, rngs=nnx.Rngs(0))


def test_listwise_attention_scorer_is_permutation_equivariant_and_ignores_padding():
  from rankjax.model_inputs import ModelInputs
  model = _attention_scorer()
  rng = np.random.default_rng(0)
  documents = rng.normal(size=(3, 7, 5)).astype(np.float32)
  mask = np.ones((3, 7), bool)
  mask[1, 5:] = False
  score = lambda d, m: np.asarray(model(ModelInputs(documents=jnp.asarray(d), document_mask=jnp.asarray(m)))["score"])  # noqa: E731
  base = score(documents, mask)
  permutation = rng.permutation(7)
  np.testing.assert_allclose(score(documents[:, permutation], mask[:, permutation]), base[:, permutation], atol=1e-5)
  changed = documents.copy()
  changed[1, 5:] = 100.0  # Padding documents' features never reach a real document's score.
  np.testing.assert_allclose(score(changed, mask)[1, :5], base[1, :5], atol=1e-5)
  other = documents.copy()
  other[0, 6] += 1.0  # But another real document of the list does: the score has context.
  assert np.abs(score(other, mask)[0, :6] - base[0, :6]).max() > 1e-4


@pytest.mark.parametrize("scorer", ("ltr_mlp", "ltr_attention"))
def test_ltr_letor_config_trains_either_scorer_with_lambda_ndcg(letor_data, scorer):
  config = load_config_file(str(REPO / "configs" / "ltr_letor.py"), scorer)
  config.data.path, config.train.loss, config.train.batch_size = str(letor_data), "lambda_ndcg", 16
  for loss_value in _three_step_losses(config):
    assert np.isfinite(loss_value) and loss_value > 0


@pytest.mark.slow
def test_a_letor_validation_file_selects_the_best_step_and_the_eval_file_is_scored_once(tmp_path):
  rng = np.random.default_rng(5)
  weights = rng.normal(size=8)
  files = {name: _write_letor(tmp_path / f"{name}.txt", first, n, weights, rng)
           for name, first, n in (("train", 1, 160), ("vali", 500, 30), ("test", 1000, 40))}
  data = tmp_path / "data"
  assert data_cli.main(["letor", "--input", str(files["train"]), "--eval-input", str(files["test"]),
                        "--validation-input", str(files["vali"]), "--output", str(data)]) == 0
  manifest = layout.read_manifest(data)
  assert {k: v["num_records"] for k, v in manifest["splits"].items()} == {"train": 160, "eval": 40, "validation": 30}
  assert manifest["source"]["validation_files"] == [str(files["vali"])]
  workdir = tmp_path / "run"
  p = _train(workdir, data, "--config.train.steps=30", "--config.train.eval_every=10",
             "--config.train.early_stopping.metric=ndcg@10")
  assert p.returncode == 0, p.stderr
  validation, (test,) = _events(workdir, "validation"), _events(workdir, "eval")
  assert [e["step"] for e in validation] == [10, 20, 30] and all(e["queries"] <= 30 for e in validation)
  best = max(validation, key=lambda e: e["ndcg@10"])["step"]
  records = layout.open_split(data, manifest, "eval")[:]
  with_relevant = ((records["relevance"] > 0) & (records["mask"] > 0)).any(axis=1).sum()
  assert test["best_step"] == best and test["queries"] == with_relevant  # eval.no_relevant=skip
  assert f"test split scored at step {best}" in p.stdout


def test_train_list_size_samples_each_long_list_without_replacement_and_keeps_short_lists_whole(letor_data):
  import jax
  from rankjax.experiment import build
  config = load_config_file(LTR_CONFIG)
  config.data.path, config.train.list_size, config.mesh.shape = str(letor_data), 6, (1, 1)
  validate(config, 1)
  exp = build(config, None, jax.devices()[:1])
  records = layout.open_split(letor_data, exp.manifest, "train")[:32]
  batch = exp.task.batch_spec.read(records)
  batch["features"][..., 0] = np.arange(batch["mask"].shape[1])  # Feature 0 names the document's position.
  state = exp.init_fn(0)
  samples = [jax.device_get(exp.task.train_batch(state.replace(step=state.step + s), batch)) for s in (0, 0, 1)]
  np.testing.assert_array_equal(samples[0]["features"], samples[1]["features"])  # Deterministic per step.
  assert not np.array_equal(samples[0]["features"], samples[2]["features"])  # Afresh each step.
  real = batch["mask"].sum(axis=1).astype(int)
  assert real.max() > 6 > real.min()  # Lists of 3..20 documents: both kinds present.
  for sample in samples:
    assert sample["mask"].shape == (32, 6)
    for i in range(32):
      positions = sample["features"][i, :, 0][sample["mask"][i] > 0].astype(int)
      assert len(positions) == min(real[i], 6) and len(set(positions)) == len(positions)
      assert (positions < real[i]).all()  # Real documents only, never padding.
      np.testing.assert_array_equal(sample["relevance"][i][sample["mask"][i] > 0], batch["relevance"][i, positions])


@pytest.mark.slow
def test_a_sampled_train_list_size_still_scores_whole_eval_lists(letor_data, straight_run, tmp_path):
  p = _train(tmp_path, letor_data, "--config.train.steps=30", "--config.train.list_size=4")
  assert p.returncode == 0, p.stderr
  (sampled,), (whole,) = _events(tmp_path, "eval"), _events(straight_run[0], "eval")
  assert sampled["queries"] == whole["queries"] and sampled["ndcg@10"] != whole["ndcg@10"]


# ---------------------------------------------------------------- length-bucketed batches

def _lists_of(batch, weight=None):
  """Each real list of a batch as bytes of its documents (relevance, features), padding cut off."""
  keep = np.ones(len(batch["mask"]), bool) if weight is None else weight > 0
  return [batch["relevance"][i][batch["mask"][i] > 0].tobytes() + batch["features"][i][batch["mask"][i] > 0].tobytes()
          for i in np.flatnonzero(keep)]


def _expected_width(batch, stored):
  """The smallest of 8, 12, 16, 24, 32, 48, ... (2^k and 1.5 x 2^k) that holds the longest list."""
  longest = int(batch["mask"].sum(axis=1).max())
  widths = sorted({2 ** k for k in range(3, 12)} | {3 * 2 ** k for k in range(2, 11)})
  return min(stored, next(w for w in widths if w >= longest))


def test_length_bucketed_eval_batches_hold_every_list_once_whole_in_power_of_two_widths(letor_data):
  manifest, records, spec = _split_and_spec(letor_data, "eval")
  spec = spec.with_weight()
  stored = manifest["max_list_size"]
  plain = pipeline.SequentialBatches(records, 8, spec=spec)
  bucketed = pipeline.SequentialBatches(records, 8, spec=spec, length_buckets=True)
  halves = [pipeline.SequentialBatches(records, 8, p, 2, spec=spec, length_buckets=True) for p in (0, 1)]
  seen, widths = [], set()
  for i in range(len(bucketed)):
    batch = bucketed[i]
    width = batch["mask"].shape[1]
    assert width == _expected_width(batch, stored) and batch["features"].shape[1] == width
    widths.add(width)
    seen += _lists_of(batch, batch["weight"])
    for p, half in enumerate(halves):  # Each process's share: its rows of the global batch, same width.
      share = half[i]
      np.testing.assert_array_equal(share["features"], batch["features"][p * 4:(p + 1) * 4])
  assert len(widths) >= 2  # Several buckets (lists of 3..20 documents: widths 8, 12, 16, 20).
  expected = [x for i in range(len(plain)) for x in _lists_of(plain[i], plain[i]["weight"])]
  assert sorted(seen) == sorted(expected) and len(seen) == len(records)


def test_length_bucketed_train_batches_sort_runs_by_length_and_keep_each_epoch_s_lists(letor_data):
  manifest, records, spec = _split_and_spec(letor_data, "train")
  plain = pipeline.ShuffledBatches(records, 16, seed=3, spec=spec)
  bucketed = pipeline.ShuffledBatches(records, 16, seed=3, spec=spec, length_window=4)
  again = pipeline.ShuffledBatches(records, 16, seed=3, spec=spec, length_window=4)
  halves = [pipeline.ShuffledBatches(records, 16, 3, p, 2, spec=spec, length_window=4) for p in (0, 1)]
  per_epoch = plain.batches_per_epoch
  assert per_epoch == 10  # Runs of 4, 4 and 2 batches.
  spreads = []
  for epoch in range(2):
    for run_start in range(0, per_epoch, 4):
      indices = range(epoch * per_epoch + run_start, epoch * per_epoch + min(run_start + 4, per_epoch))
      got, want = [], []
      for i in indices:
        batch = bucketed[i]
        assert batch["mask"].shape[1] == _expected_width(batch, manifest["max_list_size"])
        lengths = batch["mask"].sum(axis=1)
        spreads.append(lengths.max() - lengths.min())
        got += _lists_of(batch)
        want += _lists_of(plain[i])
        np.testing.assert_array_equal(batch["features"], again[i]["features"])
        shares = [half[i] for half in halves]
        assert {s["mask"].shape[1] for s in shares} == {batch["mask"].shape[1]}
        assert sorted(_lists_of(shares[0]) + _lists_of(shares[1])) == sorted(_lists_of(batch))
      assert sorted(got) == sorted(want)  # A run holds the lists of the same batches unbucketed.
  plain_spreads = [np.ptp(plain[i]["mask"].sum(axis=1)) for i in range(2 * per_epoch)]
  assert np.mean(spreads) < 0.5 * np.mean(plain_spreads)  # Lists of like lengths share a batch.


@pytest.mark.slow
def test_length_buckets_leave_eval_metrics_unchanged_and_bucketed_training_learns(letor_data, straight_run, tmp_path):
  p = _train(tmp_path / "unbucketed", letor_data, "--config.train.steps=30", "--config.eval.length_buckets=False")
  assert p.returncode == 0, p.stderr
  (bucketed,), (unbucketed,) = _events(straight_run[0], "eval"), _events(tmp_path / "unbucketed", "eval")
  for key, value in unbucketed.items():
    if isinstance(value, float):
      assert bucketed[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
  p = _train(tmp_path / "train_buckets", letor_data, "--config.train.steps=30", "--config.train.length_buckets=4")
  assert p.returncode == 0, p.stderr
  (trained,) = _events(tmp_path / "train_buckets", "eval")
  manifest = layout.read_manifest(letor_data)
  records = layout.open_split(letor_data, manifest, "eval")[:]
  assert trained["ndcg@10"] > _random_ndcg(records["relevance"], records["mask"], 10) + 0.05
