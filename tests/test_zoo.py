"""The feature-interaction CTR zoo (models/): every model maps its inputs to one logit per head,
trains on 8x1 and 2x4 meshes exactly as on one device, and, trained the same way on data with
planted order-2 and order-3 crosses, beats logistic regression."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rankjax import train as train_lib
from rankjax.config import ConfigError, base_config, model_module, validate
from rankjax.data import pipeline
from rankjax.experiment import build
from rankjax.model_inputs import KeyedEmbeddings, ModelInputs

INTERACTION_MODELS = ("deepfm", "xdeepfm", "dcnv2", "autoint", "finalmlp", "masknet", "wide_deep")
MULTITASK_MODELS = ("mmoe", "ple", "esmm")
SEQUENCE_MODELS = ("din", "bst")
SMALL = {  # Model sizes that keep a step milliseconds-long.
    "logreg": {},
    "deepfm": {"embed_dim": 8, "deep_mlp": (32, 16)},
    "xdeepfm": {"embed_dim": 8, "cin_layers": (8, 8), "deep_mlp": (32, 16)},
    "dcnv2": {"embed_dim": 8, "cross_layers": 2, "cross_rank": 4, "num_experts": 2, "deep_mlp": (32, 16)},
    "autoint": {"embed_dim": 8, "attention_layers": 2, "num_heads": 2, "attention_dim": 4, "deep_mlp": (32,), "use_wide": True},
    "finalmlp": {"embed_dim": 8, "stream1_mlp": (32, 16), "stream2_mlp": (32, 16), "gate_mlp": (8,),
                 "fusion_heads": 4, "gate1_features": ("cat_0",)},
    "masknet": {"embed_dim": 8, "num_blocks": 2, "block_dim": 16, "mask_ratio": 1, "deep_mlp": (16,)},
    "wide_deep": {"embed_dim": 8, "deep_mlp": (32, 16), "crosses": (("cat_0", "cat_1"), ("cat_2", "cat_4")),
                  "cross_buckets": 512},
    "mmoe": {"embed_dim": 8, "num_experts": 3, "expert_mlp": (32, 16), "tower_mlp": (8,)},
    "ple": {"embed_dim": 8, "levels": 2, "task_experts": 1, "shared_experts": 2, "expert_mlp": (32, 16),
            "tower_mlp": (8,)},
    "esmm": {"embed_dim": 8, "tower_mlp": (32, 16)},
    "din": {"embed_dim": 8, "attention_mlp": (8,), "deep_mlp": (32, 16), "target_feature": "cat_5",
            "history_feature": "cat_6"},
    "bst": {"embed_dim": 8, "num_heads": 2, "feed_forward_dim": 16, "deep_mlp": (32, 16), "target_feature": "cat_5",
            "history_feature": "cat_6"},
}


def zoo_config(name: str, **model):
  c = base_config(name)
  for key, value in {**SMALL[name], **model}.items():
    c.model[key] = value
  s = c.data.synthetic
  s.num_train, s.num_eval, s.vocab_sizes = 8192, 2048, (50, 20, 100, 7, 30, 60)
  s.num_interacting_pairs, s.num_interacting_triples = 6, 3
  if name in MULTITASK_MODELS:
    c.task.name, c.task.heads, s.conversion = "multitask", ("click", "conversion"), True
  if name in SEQUENCE_MODELS:
    s.sequence_length = 5  # cat_6: up to 5 earlier items of cat_5's vocabulary.
  c.train.batch_size, c.train.eval_batch_size, c.train.steps = 256, 1024, 3
  c.train.progress_bar = False
  return c


def random_inputs(spec, batch: int, seed: int = 0) -> ModelInputs:
  """ModelInputs of random values for an InputSpec (every embedding dim in feature order)."""
  rng = np.random.default_rng(seed)
  values = {d: jnp.asarray(rng.normal(size=(batch, sum(f.length for f in spec.embedded if f.dim == d), d)),
                           jnp.float32) for d in spec.embedding_dims}
  return ModelInputs(dense=jnp.asarray(rng.normal(size=(batch, spec.num_dense)), jnp.float32),
                     embedded=KeyedEmbeddings(spec.embedded, values, {f.name: jnp.ones((batch, f.length), bool)
                                                                      for f in spec.embedded if not f.pooled}))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One directory for every model; the click data and the click + conversion data are each
  generated once (the synthetic data is kept per spec)."""
  root = tmp_path_factory.mktemp("zoo")
  return lambda name: root / ("click_conversion" if name in MULTITASK_MODELS else
                               "sequence" if name in SEQUENCE_MODELS else "click")


@pytest.mark.parametrize("name", ("logreg", *INTERACTION_MODELS, *MULTITASK_MODELS, *SEQUENCE_MODELS))
def test_model_gives_one_finite_logit_per_head(name, data_dir):
  config = zoo_config(name)
  config.mesh.shape = (1, 1)
  validate(config, 1)
  spec = dataclasses.replace(build(config, data_dir(name), jax.devices()[:1]).task.inputs, heads=("click", "conversion"))
  model = model_module(name).create(config, spec, rngs=nnx.Rngs(0))
  outputs = model(random_inputs(spec, 5))
  assert {"click", "conversion"} <= set(outputs)
  for logits in outputs.values():
    assert logits.shape == (5,) and np.isfinite(np.asarray(logits)).all()
  if name != "logreg":  # Logistic regression's heads share the id weights and start equal.
    assert not np.allclose(outputs["click"], outputs["conversion"])


def run_steps(config, workdir, devices, num_steps=3):
  exp = train_lib.build(config, workdir, devices)
  with jax.set_mesh(exp.partitioner.mesh):
    state = exp.init_fn(config.seed)
    batches = pipeline.train_iterator(exp.data_dir, exp.manifest, global_batch_size=config.train.batch_size,
                                      num_batches=num_steps, seed=0, spec=exp.task.batch_spec)
    losses = []
    for batch in batches:
      state, metrics = exp.train_fn(state, exp.partitioner.place_batch(batch, exp.batch_shardings))
      losses.append(float(metrics["loss"]))
    return exp, jax.device_get(state), losses


@pytest.mark.slow
@pytest.mark.parametrize("name", (*INTERACTION_MODELS, *MULTITASK_MODELS, *SEQUENCE_MODELS))
def test_sharded_training_equals_one_device(name, data_dir):
  config = zoo_config(name)
  # SGD keeps the update linear in the gradient, so a sum's order cannot be amplified (Adam's
  # g / sqrt(v) turns 1e-9 of a near-zero gradient into 1e-6 of a parameter).
  config.train.dense_optimizer, config.train.dense_learning_rate = "sgd", 0.05
  config.mesh.shape = (1, 1)
  ref_exp, ref_state, ref_losses = run_steps(config, data_dir(name), jax.devices()[:1])
  for shape in ((8, 1), (2, 4)):
    config.mesh.shape = shape
    exp, state, losses = run_steps(config, data_dir(name), jax.devices())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=str(shape))
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=str(shape))
    tables = exp.task.engine.table_values(state.embedding)
    for table, want in ref_exp.task.engine.table_values(ref_state.embedding).items():
      np.testing.assert_allclose(tables[table], want, rtol=1e-5, atol=1e-6, err_msg=f"{shape} {table}")


def test_wide_and_deep_crossed_ids_are_hashed_per_pair_and_padding_stays_padding():
  from rankjax.tasks.crossed_features import Cross, crossed_ids
  ids = jnp.asarray([[1, 2, 3], [1, 2, 4], [-1, 2, 3], [2, 1, 3]], jnp.int32)
  crossed = np.asarray(crossed_ids(ids, (Cross("a_x_b", (0, 1), 97), Cross("a_x_c", (0, 2), 97))))
  assert crossed.shape == (4, 2) and crossed.dtype == np.int32
  assert crossed[0, 0] == crossed[1, 0]  # Same (a, b) pair, same row.
  assert crossed[0, 1] != crossed[1, 1] or crossed[0, 0] != crossed[3, 0]
  assert crossed[2, 0] == -1 and crossed[2, 1] == -1
  assert ((crossed[crossed >= 0] >= 0) & (crossed[crossed >= 0] < 97)).all()


def test_crosses_of_unknown_or_multi_hot_features_are_config_errors(data_dir):
  config = zoo_config("wide_deep", crosses=(("cat_0", "nope"),))
  config.mesh.shape = (1, 1)
  with pytest.raises(ConfigError, match="model.crosses"):
    build(config, data_dir("wide_deep"), jax.devices()[:1])


@pytest.mark.parametrize("name,key,value", [("dcnv2", "cross_type", "diagonal"), ("masknet", "structure", "x"),
                                            ("finalmlp", "fusion_heads", 5), ("xdeepfm", "cin_layers", (3, 4)),
                                            ("autoint", "num_heads", 0), ("deepfm", "deep_mlp", ())])
def test_bad_model_config_names_the_key(name, key, value):
  config = zoo_config(name, **{key: value})
  with pytest.raises(ConfigError, match=f"model.{key}"):
    validate(config, 1)


def test_esmm_conversion_logit_is_the_logit_of_pctr_times_pcvr():
  from rankjax.models.esmm import product_logit
  a = np.array([-30.0, -2.0, 0.0, 3.0, 30.0], np.float32)
  b = np.array([1.0, -5.0, 0.5, 40.0, 30.0], np.float32)
  p = 1 / (1 + np.exp(-a.astype(np.float64))) / (1 + np.exp(-b.astype(np.float64)))
  got = np.asarray(product_logit(jnp.asarray(a), jnp.asarray(b)), np.float64)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(1 / (1 + np.exp(-got)), p, rtol=1e-5)


def test_click_conversion_data_converts_only_after_a_click_and_records_bayes_auc_per_label(data_dir):
  from rankjax.data import layout
  exp = build(zoo_config("esmm"), data_dir("esmm"), jax.devices()[:1])
  manifest = exp.manifest
  assert manifest["labels"] == ["click", "conversion"]
  assert set(manifest["bayes_optimal_eval_auc_by_label"]) == {"click", "conversion"}
  records = layout.open_split(exp.data_dir, manifest, "train")
  label = np.asarray(records["label"])
  assert label.shape[1] == 2 and (label[:, 1] <= label[:, 0]).all()
  assert 0.05 < label[:, 1].sum() / label[:, 0].sum() < 0.9


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_history_padding_never_contributes(name, data_dir):
  """Changing the embedding behind a padded history position changes no logit; changing a real
  position's does (with the history in use), and the ablation ignores the history entirely."""
  config = zoo_config(name)
  config.mesh.shape = (1, 1)
  spec = build(config, data_dir(name), jax.devices()[:1]).task.inputs
  history = next(f for f in spec.embedded if f.name == "cat_6")
  assert not history.pooled and history.length == 5
  model = model_module(name).create(config, spec, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  (dim,) = spec.embedding_dims
  values = rng.normal(size=(4, spec.num_embedded_vectors, dim)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
  start = spec.num_embedded_vectors - 5  # The history's positions come last (its table is last).
  values[:, start:][~mask] = 0.0  # The engine zeroes padding rows.
  dense = jnp.asarray(rng.normal(size=(4, spec.num_dense)), jnp.float32)

  def logits(v, m=model):
    emb = KeyedEmbeddings(spec.embedded, {dim: jnp.asarray(v)}, {"cat_6": jnp.asarray(mask),
                                                                 "cat_5": jnp.ones((4, 1), bool)})
    return np.asarray(m(ModelInputs(dense=dense, embedded=emb))["click"])

  base = logits(values)
  padded = values.copy()
  padded[0, start + 3] = 5.0  # A padding position of example 0 (mask says padding).
  np.testing.assert_allclose(logits(padded), base, rtol=1e-6)
  real = values.copy()
  real[0, start] += 1.0
  assert abs(logits(real)[0] - base[0]) > 1e-4
  config.model.use_history = False
  ablation = model_module(name).create(config, spec, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(logits(real, ablation), logits(values, ablation), rtol=1e-6)
