"""The config schema (every known key with its default and type) and its validation.

Experiment files in configs/ start from `base_config()` and change values; `validate` rejects
unknown keys, wrong types and impossible combinations with an error naming the key.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import importlib.util
import pathlib
import pkgutil
from typing import Any

import ml_collections

from rankjax.data.feature_stats import NORMALIZATIONS
from rankjax.data.validation import POLICIES as INVALID_RECORD_POLICIES
from rankjax.dense_optim import DENSE_OPTIMIZERS as _DENSE_OPTIMIZERS
from rankjax.dense_optim import LR_SCHEDULES
from rankjax.embedding import optimizers as _sparse_optimizers
from rankjax.embedding.sharding import SHARDINGS as _SHARDINGS
from rankjax.embedding.dynamic import EVICTIONS
from rankjax.embedding.tables import COMBINERS, DTYPES, IDENTITY_FIELDS, INITIALIZERS, KINDS, EmbeddingTableConfig
from rankjax.errors import ConfigError

__all__ = ["ConfigError", "base_config", "load_config_file", "model_module", "task_class", "validate"]


def model_module(name: str):
  """The model module `name`: a zoo model `rankjax.models.<name>` (models/<name>.py), else any
  importable module of that name or dotted path (`my_models.logreg`, on PYTHONPATH). Its
  `default_config()` is the model schema; README "Adding a model" lists what it defines."""
  candidates = ([] if "." in name else [f"rankjax.models.{name}"]) + [name]
  for module_name in candidates:
    try:
      return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
      if not (e.name and module_name.startswith(e.name)):
        raise  # The model module exists but imports something missing.
  raise ConfigError("model.name", f"no model named {name!r}: not in rankjax.models ({', '.join(zoo_models())}) "
                    "and not an importable module")


def zoo_models() -> tuple[str, ...]:
  """The models shipped in rankjax.models (models/)."""
  package = importlib.import_module("rankjax.models")
  return tuple(sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")))


def task_class(name: str):
  """The Task class registered as `name` in rankjax.tasks.TASKS."""
  tasks = importlib.import_module("rankjax.tasks").TASKS
  if name not in tasks:
    raise ConfigError("task.name", f"must be one of {tuple(tasks)}, got {name!r}")
  return tasks[name]


def model_tasks(model) -> tuple[str, ...]:
  """The tasks a model module serves (its TASKS; the first is its default)."""
  return tuple(getattr(model, "TASKS", ("ctr",)))


def base_config(model: str = "dlrm") -> ml_collections.ConfigDict:
  """Every key rankjax knows, with defaults. Configs change values, never add keys."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Parameter initialisation and the RNG carried in the train state.

  module = model_module(model)
  c.model = module.default_config()
  c.model.name = model

  c.task = ml_collections.ConfigDict()
  # What is learned: ctr (one binary label) | multitask (one binary head per label column) |
  # ranking (query lists); the registry is rankjax.tasks.TASKS. Default: the model's first task.
  c.task.name = model_tasks(module)[0]
  c.task.heads = ("click", "conversion")  # multitask: head names, one per label column.
  c.task.label_columns = ()  # multitask: each head's label column; () = 0, 1, ... in head order.
  c.task.loss_weights = ()  # multitask: each head's weight in the loss; () = 1 each.
  # Dense inputs (ranking: document features; ctr/multitask: dense features) normalised with the
  # train split's statistics from the manifest: "auto" (log1p, then standardised, for heavy-tailed
  # features; standardised otherwise) | "standardize" | "log1p" | "min_max" | "none"
  # (rankjax/data/feature_stats.py). The run's summary.json records which features took log1p.
  c.task.normalize = "auto"
  # retrieval: lower each in-batch negative's logit by log of its share of the train split (Yi et al. 2019).
  c.task.log_q_correction = True
  # retrieval: M extra negatives per step, corpus items drawn uniformly (mixed negative sampling,
  # Yang et al. 2020); 0 = in-batch negatives only. A multiple of the batch shards.
  c.task.uniform_negatives = 0

  c.data = ml_collections.ConfigDict()
  c.data.path = ""  # A dataset directory (manifest.json + binary splits); "" = synthetic under workdir.
  # Scales every table to ceil(rows * row_scale) (so a big model fits one device or a CPU); ids of
  # real data fold modulo the scaled rows, synthetic data is generated at the scaled size.
  c.data.row_scale = 1.0
  c.data.shuffle_seed = 0
  c.data.label_index = 0  # Which label column to train on, for data with several (multi-task tables).
  # Records whose values the task's batch rejects (labels not 0/1, ids outside the vocabulary,
  # non-finite features, negative relevance): "error" (one line naming the record) or "skip"
  # (left out, counted and reported).
  c.data.invalid_records = "error"
  c.data.verify_checksums = True  # sha256 of every shard on first open (then cached per file).  # Global shuffle permutation is a function of (shuffle_seed, epoch).
  # The validation split (periodic evals, early stopping, the best step) when the dataset has none:
  # this fraction of the train split, held out from training; 0 = none (periodic evals then score
  # the eval split). Order "last" (the newest records of time-ordered input) or "random".
  c.data.validation_fraction = 0.0
  c.data.validation_order = "last"
  c.data.read_threads = 2  # Grain threads that gather batches.
  c.data.prefetch_batches = 4  # Grain prefetch buffer, in batches.
  c.data.synthetic = ml_collections.ConfigDict()
  # "ctr": labelled examples with a planted click model (below); "retrieval": users picking items
  # by a planted two-tower preference (rankjax/data/synthetic_retrieval.py; num_train, num_eval,
  # seed, latent_dim, zipf_exponent, signal_scale and the sizes under `retrieval` apply).
  c.data.synthetic.kind = "ctr"
  c.data.synthetic.retrieval = ml_collections.ConfigDict()
  c.data.synthetic.retrieval.num_users = 5000
  c.data.synthetic.retrieval.num_segments = 20
  c.data.synthetic.retrieval.num_items = 2000
  c.data.synthetic.retrieval.num_categories = 40
  c.data.synthetic.seed = 1234
  c.data.synthetic.num_train = 3_000_000
  c.data.synthetic.num_eval = 100_000
  # > 0: a validation split of this many records, drawn after the eval split (the train and eval
  # records stay the same); see select_on_validation.
  c.data.synthetic.num_validation = 0
  c.data.synthetic.num_dense = 13
  c.data.synthetic.vocab_sizes = (
      1000, 500, 2000, 1500, 300, 20, 1200, 600, 3, 2000, 800, 2000, 900,
      30, 1500, 2000, 10, 700, 400, 4, 2000, 15, 15, 1800, 100, 1600)
  c.data.synthetic.zipf_exponent = 1.2
  c.data.synthetic.latent_dim = 4  # Rank of the planted pairwise interactions.
  c.data.synthetic.num_interacting_pairs = 12
  c.data.synthetic.num_interacting_triples = 0  # Planted order-3 crosses (the zoo's interaction data).
  c.data.synthetic.conversion = False  # A second label, conversion after a click (multi-task data).
  c.data.synthetic.sequence_length = 0  # > 0: a behaviour-sequence feature of up to this many items.
  c.data.synthetic.signal_scale = 1.0  # Scales every planted effect; larger = easier task.
  c.data.synthetic.hotness = ()  # Max ids per feature (multi-hot, padded with -1); () = one each.

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1400
  c.train.batch_size = 2048
  c.train.eval_batch_size = 8192
  c.train.log_every = 100
  c.train.eval_every = 0  # 0 = evaluate only at the end.
  # Early stopping on the validation split (see data.validation_fraction): the metric of the evals
  # every train.eval_every steps to select by ("" = off; e.g. auc, logloss, ndcg@10, click/auc);
  # stop once it has not improved by min_delta for `patience` evals (0 = train all steps). The best
  # step is kept, and the test (eval) split is scored at it at the end.
  c.train.early_stopping = ml_collections.ConfigDict()
  c.train.early_stopping.metric = ""
  c.train.early_stopping.patience = 0
  c.train.early_stopping.min_delta = 0.0
  c.train.dense_optimizer = "adam"  # adam | adagrad | sgd
  c.train.dense_learning_rate = 1e-3
  # The dense learning rate over the run: linear warm-up over warmup_steps, then constant, or a
  # cosine / linear decay to 0 at train.steps (embedding tables keep embedding.learning_rate).
  c.train.lr_schedule = "constant"
  c.train.warmup_steps = 0
  # Dense parameters: decoupled (AdamW-style) weight decay of the kernels, and clipping of the
  # dense gradients to this global norm; 0 = off (the optimizer is then exactly optax's).
  c.train.weight_decay = 0.0
  c.train.grad_clip_norm = 0.0
  # Dropout after every ReLU of the model's MLPs (rankjax.layers.MLP: the zoo's deep, tower, expert
  # and bottom MLPs), in train steps only; 0 = off (nothing drawn).
  c.train.dropout = 0.0
  # The task's loss (its LOSSES): bce for ctr/multitask; softmax | pairwise_logistic for ranking.
  c.train.loss = next(iter(task_class(c.task.name).LOSSES))
  c.train.ndcg_k = 10  # Ranking eval: NDCG@k.
  # Ranking: documents per training list; a longer list is a uniform sample of its documents, drawn
  # afresh each step (without replacement, from the run's seed and the step). 0 = whole lists.
  # Evaluation always scores whole lists.
  c.train.list_size = 0
  # Ranking: lists of like lengths batched together, each batch's list axis cut to the next 2^k or
  # 1.5 x 2^k above its longest list, so padding does not dominate the step: the epoch's order sorted by
  # length within runs of this many batches, the batches of a run in a seeded random order
  # (rankjax/data/pipeline.py ShuffledBatches). 0 = off (batches as drawn, padded to the longest list).
  c.train.length_buckets = 0

  c.eval = ml_collections.ConfigDict()
  # Click heads' AUC comes from on-device histograms of the logits in this many bins (see
  # rankjax/streaming_metrics.py); every eval reports the bound on its distance to the exact AUC.
  c.eval.auc_bins = 262144
  # GAUC: the categorical feature whose id is the group (a user or query id: "cat_3"); "" = off.
  # Memory: heads x the feature's vocabulary x group_bins x 8 bytes, replicated on each device.
  c.eval.group_feature = ""
  c.eval.group_bins = 2048
  # Ranking eval: NDCG@k, DCG@k, precision@k and recall@k at these cutoffs (plus train.ndcg_k),
  # MRR and MAP, each the mean over queries. A query without a relevant document has no ideal
  # ranking: "skip" (left out and counted as queries_skipped), "zero" or "one" (scores that).
  c.eval.ranking_cutoffs = (1, 3, 5, 10)
  c.eval.no_relevant = "skip"
  # Ranking eval: lists scored shortest first, each batch cut to the next 2^k or 1.5 x 2^k above its
  # longest list (every list whole; the metrics are sums over lists, so only rounding can change).
  c.eval.length_buckets = True
  # Write the final model's score of every eval record to WORKDIR/eval_scores.parquet (columns
  # `row` and `score` / `score_<head>`; the layout `rankjax predict` writes).
  c.eval.write_scores = False
  # Eval (and an exported model) scores each device's share of an eval batch in blocks of this
  # many rows (examples or lists) when they divide it, else at once; 0 = at once. An export scores
  # in the same blocks, so its scores equal the trainer's bit for bit and a request of one row
  # costs one block, not one eval batch.
  c.eval.block_rows = 256
  c.train.progress_bar = True  # On a terminal; elsewhere (logs, SLURM, CI) a line every progress_every_s.
  c.train.progress_every_s = 30.0
  # Steps dispatched ahead of the host: a bound (2 processes' CPU collectives deadlocked with ~100;
  # 10 never did in 3 tries; 8 costs nothing measurable on the default run, 2 cost 5%).
  c.train.max_steps_in_flight = 8
  c.train.step_timeout_s = 600.0  # No step finishing for this long: exit 5 naming the step (0 = off).
  c.train.stop_grace_s = 60.0  # After SIGTERM/SIGINT: exit 5 if the current step takes longer than this.
  c.train.compute_dtype = "float32"  # float32 | bfloat16: forward/backward precision (params stay float32).
  # JAX persistent compilation cache: "" = ~/.cache/rankjax/jax_compilation_cache, "none" = off.
  c.train.compilation_cache_dir = ""

  c.embedding = ml_collections.ConfigDict()
  # replicated | table_wise | row_wise | column_wise | gspmd_row_wise (baseline) | table_row_wise (each table
  # on one host of a mesh whose table_rows axes start with "host", its rows over that host's devices) | auto (planner).
  c.embedding.sharding = "row_wise"
  # sgd | adagrad | row_wise_adagrad | adam (lazy moments) | ftrl: fused, touches looked-up rows only.
  c.embedding.optimizer = "row_wise_adagrad"
  c.embedding.learning_rate = 0.1
  # L2 on the rows a step looks up: each lookup adds l2 x row to that row's gradient (the gradient
  # of l2/2 x the sum over the batch's lookups of |row|^2), so a row is regularised as often as it
  # is seen (the usual frequency-aware CTR recipe); rows not looked up are untouched. 0 = off.
  c.embedding.l2 = 0.0
  # The tables' learning rate over the run, as train.lr_schedule for the dense one: linear warm-up
  # over embedding.warmup_steps, then constant, or a cosine / linear decay to 0 at train.steps
  # (sgd, adagrad, row_wise_adagrad, adam; FTRL's rate is part of its accumulator rule).
  c.embedding.lr_schedule = "constant"
  c.embedding.warmup_steps = 0
  c.embedding.initial_accumulator = 0.0  # adagrad, row_wise_adagrad.
  c.embedding.epsilon = 1e-8  # adagrad, row_wise_adagrad, adam.
  c.embedding.beta1 = 0.9  # adam.
  c.embedding.beta2 = 0.999  # adam.
  c.embedding.l1 = 0.0  # ftrl.
  c.embedding.l2 = 0.0  # ftrl.
  c.embedding.dtype = "float32"  # float32 | bfloat16 table storage.
  # row_wise: each device sends each owner shard its distinct ids by all-to-all, with room for this
  # multiple of an even share (ids per device / shards). A step with more for one owner takes the
  # exact all-gather path (about 4x the bytes); the share of such steps is the train metric
  # embedding_exchange_fallback. Raise it if that is often above 0; >= shards never falls back.
  c.embedding.exchange_capacity = 1.25
  # table_row_wise on a mesh with hosts: a host's devices merge their ids for each owner host into
  # distinct ones before they cross hosts, with room for this multiple of an even share of the
  # host's ids per owner (rankjax/embedding/sharding/table_row_wise.py); what crosses hosts is
  # proportional to it. A step with more takes the exact all-gather path (the same metric).
  c.embedding.host_exchange_capacity = 1.25
  # Per-table overrides, "TABLE:KEY=VALUE" with KEY in sharding|optimizer|dtype|combiner|initializer|
  # qr_buckets (e.g. "cat_0:qr_buckets=1000": a quotient-remainder table), rows ("cat_0:rows=5000":
  # ids hashed into 5000 rows, id mod rows), or a dynamic table's
  # kind=dynamic|capacity|admit_after|eviction=lfu|ttl|decay|ttl|map_shards ("cat_0:kind=dynamic",
  # "cat_0:capacity=100000": raw ids get rows without collisions, rankjax/embedding/dynamic.py;
  # "cat_0:map_shards=8": its map split by id over the devices, rankjax/embedding/dynamic_shards.py);
  # they win over the defaults above and over the planner.
  c.embedding.overrides = ()

  # On a NaN/inf loss or gradient norm: "stop" (exit 3 naming the step) or "skip" (drop the
  # update, count it in the train metrics as skipped_steps). A checkpoint never holds non-finite values.
  c.train.on_non_finite = "stop"

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500
  c.checkpoint.max_to_keep = 2  # The latest K checkpoints are kept ...
  # ... plus the best by this eval metric (the task's EVAL_METRICS: "auc" | "logloss"; ranking:
  # "ndcg" at train.ndcg_k; "" = none).
  c.checkpoint.keep_best_metric = ""
  c.checkpoint.async_save = True
  # Resume a checkpoint trained on other data (its fingerprint differs). Model shapes must still match.
  c.checkpoint.allow_data_change = False

  c.distributed = ml_collections.ConfigDict()
  # Explicit multi-process settings; empty/0/-1 = auto-detect (SLURM, Open MPI, Kubernetes) or one process.
  c.distributed.coordinator_address = ""  # HOST:PORT of process 0.
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.cpu_collectives = ""  # "gloo" for multi-process CPU runs (tests).
  c.distributed.initialization_timeout_s = 300
  c.distributed.heartbeat_timeout_s = 30  # A lost peer fails the others after about this long.

  c.mesh = ml_collections.ConfigDict()
  # Mesh axes (names) and sizes; one size may be -1 to take the remaining devices.
  c.mesh.axes = ("data", "model")
  c.mesh.shape = (-1, 1)
  # Logical axis -> mesh axes. Sharding is data: change it here, not in model code.
  c.mesh.rules = (
      ("batch", ("data", "model")),
      ("table_rows", ("data", "model")),
      ("embed", ()),
  )
  return c


def select_on_validation(c: ml_collections.ConfigDict, eval_every: int, *, synthetic_records: int = 0,
                         fraction: float = 0.1, order: str = "last") -> ml_collections.ConfigDict:
  """Model selection on a validation split, as the configs in configs/ ship: the validation split
  is evaluated every `eval_every` steps, the best step by the task's selection metric (AUC, NDCG@k,
  recall@100) is kept, and at the end the test (eval) split is scored at that step, which the final
  line names. Every step is still trained (train.early_stopping.patience 0; raise it to stop early).

  The validation split: the dataset's own (synthetic data: `synthetic_records` drawn after the
  eval split, so the train and eval records are unchanged), else `fraction` of the train split
  held out (`order` "last" or "random", see data.validation_fraction)."""
  c.train.eval_every = eval_every
  c.train.early_stopping.metric = task_class(c.task.name).selection_metric(c)
  c.data.synthetic.num_validation = synthetic_records
  c.data.validation_fraction = fraction
  c.data.validation_order = order
  return c


# Every list of choices is the implementation's registry.
DENSE_OPTIMIZERS = tuple(_DENSE_OPTIMIZERS)
SPARSE_OPTIMIZERS = _sparse_optimizers.NAMES
SHARDINGS = (*(t.value for t in _SHARDINGS), "auto")
FLOAT_DTYPES = tuple(DTYPES)
# Per-table settings `embedding.overrides` may change: the table fields beyond its identity.
OVERRIDE_KEYS = tuple(f.name for f in dataclasses.fields(EmbeddingTableConfig) if f.name not in IDENTITY_FIELDS)


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs the user's config file (configs are code) and returns its `get_config()`."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise ConfigError("config", f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"rankjax_config_{p.stem}", p)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ConfigError("config", f"{path} defines no get_config()")
    config = module.get_config(arg) if arg is not None else module.get_config()
  except ConfigError:
    raise
  except SyntaxError as e:
    raise ConfigError("config", f"{path}:{e.lineno}: syntax error: {e.msg}") from None
  except Exception as e:  # The config is the user's code: name where it failed.
    line = next((f.lineno for f in reversed(_traceback_frames(e)) if f.filename == str(p)), None)
    raise ConfigError("config", f"{path}{f':{line}' if line else ''}: {type(e).__name__}: {e}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError("config", f"{path}: get_config() returned a {type(config).__name__}, not an "
                      "ml_collections.ConfigDict (start from rankjax.config.base_config())")
  return config


def _traceback_frames(error: BaseException) -> list:
  import traceback
  return traceback.extract_tb(error.__traceback__)


def _type_ok(value: Any, default: Any) -> bool:
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def _check_against(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, prefix: str):
  for key in config.keys():
    path = f"{prefix}{key}"
    if key not in schema:
      known = ", ".join(sorted(schema.keys()))
      raise ConfigError(path, f"unknown key (known keys here: {known})")
    value, default = config[key], schema[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(path, f"must be a section (ConfigDict), got {type(value).__name__}")
      _check_against(value, default, path + ".")
    elif default is not None and not _type_ok(value, default):
      raise ConfigError(path, f"must be {type(default).__name__}, got {type(value).__name__} {value!r}")


def _positive(config, key: str):
  section, name = key.rsplit(".", 1)
  value = config
  for part in section.split("."):
    value = value[part]
  if not value[name] > 0:  # Also rejects NaN.
    raise ConfigError(key, f"must be > 0, got {value[name]!r}")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ConfigError naming the key for unknown keys, wrong types, impossible combinations."""
  name = config.get("model", {}).get("name", "dlrm")
  _check_against(config, base_config(name), "")
  for key in ("train.max_steps_in_flight", "train.stop_grace_s", "train.progress_every_s"):
    _positive(config, key)
  if not config.train.step_timeout_s >= 0:
    raise ConfigError("train.step_timeout_s", "must be >= 0 (0 = off)")
  for key in ("train.steps", "train.batch_size", "train.eval_batch_size", "train.log_every",
              "train.dense_learning_rate", "embedding.learning_rate",
              "checkpoint.every_steps", "checkpoint.max_to_keep",
              "data.synthetic.num_train", "data.synthetic.num_eval", "data.read_threads",
              "data.prefetch_batches", "data.synthetic.num_dense", "data.synthetic.latent_dim",
              "data.synthetic.zipf_exponent", "embedding.epsilon", "eval.auc_bins", "eval.group_bins"):
    _positive(config, key)
  vocab = config.data.synthetic.vocab_sizes
  if not vocab or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in vocab):
    raise ConfigError("data.synthetic.vocab_sizes", f"must be a non-empty tuple of positive ints, got {tuple(vocab)}")
  if config.data.label_index < 0:
    raise ConfigError("data.label_index", "must be >= 0")
  if not 0 < config.data.row_scale <= 1:
    raise ConfigError("data.row_scale", f"must be in (0, 1], got {config.data.row_scale}")
  hotness = tuple(config.data.synthetic.hotness)
  if hotness and (len(hotness) != len(vocab) or any(not isinstance(h, int) or h < 1 for h in hotness)):
    raise ConfigError("data.synthetic.hotness", f"needs one positive int per feature ({len(vocab)}), got {hotness}")
  if not config.embedding.initial_accumulator >= 0:
    raise ConfigError("embedding.initial_accumulator", "must be >= 0")
  if config.train.list_size < 0:
    raise ConfigError("train.list_size", "must be >= 0 (0 = whole lists)")
  if isinstance(config.train.length_buckets, bool) or config.train.length_buckets < 0:
    raise ConfigError("train.length_buckets", f"must be an int >= 0 (batches per sorted run; 0 = off), "
                      f"got {config.train.length_buckets!r}")
  if config.train.length_buckets and config.task.name != "ranking":
    raise ConfigError("train.length_buckets", f"batches query lists by length; task {config.task.name!r} has no lists")
  if config.task.normalize not in NORMALIZATIONS:
    raise ConfigError("task.normalize", f"must be one of {NORMALIZATIONS}, got {config.task.normalize!r}")
  if config.task.uniform_negatives < 0:
    raise ConfigError("task.uniform_negatives", "must be >= 0 (0 = in-batch negatives only)")
  if not config.embedding.l2 >= 0:
    raise ConfigError("embedding.l2", "must be >= 0 (0 = off)")
  if not config.data.path and config.data.synthetic.num_train < config.train.batch_size:
    raise ConfigError("data.synthetic.num_train", f"{config.data.synthetic.num_train} records is less than one "
                      f"batch (train.batch_size={config.train.batch_size})")
  if config.data.synthetic.kind not in ("ctr", "retrieval"):
    raise ConfigError("data.synthetic.kind", f"must be 'ctr' or 'retrieval', got {config.data.synthetic.kind!r}")
  for key in ("num_users", "num_segments", "num_items", "num_categories"):
    _positive(config, f"data.synthetic.retrieval.{key}")
  if not 0 <= config.data.validation_fraction < 1:
    raise ConfigError("data.validation_fraction", f"must be in [0, 1), got {config.data.validation_fraction}")
  if config.data.synthetic.num_validation < 0:
    raise ConfigError("data.synthetic.num_validation", "must be >= 0 (0 = no validation split)")
  if config.data.validation_order not in ("last", "random"):
    raise ConfigError("data.validation_order", f"must be 'last' or 'random', got {config.data.validation_order!r}")
  stopping = config.train.early_stopping
  if stopping.patience < 0 or stopping.min_delta < 0:
    raise ConfigError("train.early_stopping.patience" if stopping.patience < 0 else "train.early_stopping.min_delta",
                      "must be >= 0")
  if stopping.metric and stopping.patience and not config.train.eval_every:
    raise ConfigError("train.early_stopping.patience", "needs evaluations during training: set train.eval_every")
  if config.train.eval_every < 0:
    raise ConfigError("train.eval_every", "must be >= 0 (0 = only at the end)")
  if config.data.invalid_records not in INVALID_RECORD_POLICIES:
    raise ConfigError("data.invalid_records", f"must be one of {INVALID_RECORD_POLICIES}")
  if config.train.compute_dtype not in FLOAT_DTYPES:
    raise ConfigError("train.compute_dtype", f"must be one of {FLOAT_DTYPES}")
  if config.train.on_non_finite not in ("stop", "skip"):
    raise ConfigError("train.on_non_finite", "must be 'stop' or 'skip'")
  d = config.distributed
  if d.num_processes > 1 and not (0 <= d.process_id < d.num_processes):
    raise ConfigError("distributed.process_id", f"must be in [0, {d.num_processes}) with num_processes set")
  if d.coordinator_address and ":" not in d.coordinator_address:
    raise ConfigError("distributed.coordinator_address", "must be HOST:PORT")
  if config.train.dense_optimizer not in DENSE_OPTIMIZERS:
    raise ConfigError("train.dense_optimizer", f"must be one of {DENSE_OPTIMIZERS}")
  if config.train.lr_schedule not in LR_SCHEDULES:
    raise ConfigError("train.lr_schedule", f"must be one of {LR_SCHEDULES}, got {config.train.lr_schedule!r}")
  block_rows = config.eval.block_rows
  if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 0:
    raise ConfigError("eval.block_rows", f"must be an int >= 0 (0 = a device's eval batch at once), got {block_rows!r}")
  for key in ("weight_decay", "grad_clip_norm"):
    if not config.train[key] >= 0:  # Also rejects NaN.
      raise ConfigError(f"train.{key}", f"must be >= 0 (0 = off), got {config.train[key]!r}")
  if not 0 <= config.train.dropout < 1:
    raise ConfigError("train.dropout", f"must be in [0, 1) (0 = off), got {config.train.dropout!r}")
  if config.embedding.lr_schedule not in LR_SCHEDULES:
    raise ConfigError("embedding.lr_schedule", f"must be one of {LR_SCHEDULES}, got {config.embedding.lr_schedule!r}")
  if not 0 <= config.embedding.warmup_steps <= config.train.steps:
    raise ConfigError("embedding.warmup_steps", f"must be in [0, train.steps={config.train.steps}], "
                      f"got {config.embedding.warmup_steps}")
  if not 0 <= config.train.warmup_steps <= config.train.steps:
    raise ConfigError("train.warmup_steps", f"must be in [0, train.steps={config.train.steps}], "
                      f"got {config.train.warmup_steps}")
  if config.embedding.optimizer not in SPARSE_OPTIMIZERS:
    raise ConfigError("embedding.optimizer", f"must be one of {SPARSE_OPTIMIZERS}")
  if config.embedding.sharding not in SHARDINGS:
    raise ConfigError("embedding.sharding", f"must be one of {SHARDINGS}")
  if config.embedding.dtype not in FLOAT_DTYPES:
    raise ConfigError("embedding.dtype", f"must be one of {FLOAT_DTYPES}")
  if not config.embedding.exchange_capacity > 0:  # Also rejects NaN.
    raise ConfigError("embedding.exchange_capacity", f"must be > 0, got {config.embedding.exchange_capacity!r}")
  if not config.embedding.host_exchange_capacity > 0:
    raise ConfigError("embedding.host_exchange_capacity",
                      f"must be > 0, got {config.embedding.host_exchange_capacity!r}")
  for entry in config.embedding.overrides:
    table, sep, rest = entry.partition(":")
    key, eq, value = rest.partition("=")
    if not (sep and eq and table) or key not in OVERRIDE_KEYS:
      raise ConfigError("embedding.overrides", f"{entry!r} is not TABLE:KEY=VALUE with KEY in {OVERRIDE_KEYS}")
    if key in ("qr_buckets", "rows", "capacity", "admit_after", "ttl", "map_shards"):
      if not value.isdigit():
        raise ConfigError("embedding.overrides", f"{entry!r}: {key} must be a non-negative int")
      continue
    if key == "decay":
      try:
        if not 0.0 < float(value) <= 1.0:
          raise ValueError
      except ValueError:
        raise ConfigError("embedding.overrides", f"{entry!r}: decay must be a number in (0, 1]") from None
      continue
    allowed = {"sharding": SHARDINGS[:-1], "optimizer": SPARSE_OPTIMIZERS, "dtype": FLOAT_DTYPES,
               "combiner": COMBINERS, "initializer": INITIALIZERS, "kind": KINDS, "eviction": EVICTIONS}[key]
    if value not in allowed:
      raise ConfigError("embedding.overrides", f"{entry!r}: {key} must be one of {allowed}")

  axes, shape = tuple(config.mesh.axes), tuple(config.mesh.shape)
  if len(axes) != len(shape):
    raise ConfigError("mesh.shape", f"has {len(shape)} sizes for {len(axes)} axes {axes}")
  if "data" not in axes:
    raise ConfigError("mesh.axes", "must contain a 'data' axis (the batch axis)")
  if sum(s == -1 for s in shape) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError("mesh.shape", f"sizes must be positive with at most one -1, got {shape}")
  fixed = 1
  for s in shape:
    fixed *= s if s > 0 else 1
  if num_devices % fixed or (-1 not in shape and fixed != num_devices):
    raise ConfigError("mesh.shape", f"{shape} does not fit {num_devices} devices")
  sizes = {a: (s if s > 0 else num_devices // fixed) for a, s in zip(axes, shape)}
  rules = dict(config.mesh.rules)
  for logical, mesh_axes in config.mesh.rules:
    for ax in mesh_axes:
      if ax not in axes:
        raise ConfigError("mesh.rules", f"logical axis {logical!r} maps to unknown mesh axis {ax!r}")
  if "batch" not in rules:
    raise ConfigError("mesh.rules", "needs a 'batch' rule")
  batch_shards = 1
  for ax in rules["batch"]:
    batch_shards *= sizes[ax]
  for key in ("train.batch_size", "train.eval_batch_size"):
    section, field = key.split(".")
    if config[section][field] % batch_shards:
      raise ConfigError(key, f"{config[section][field]} is not divisible by the {batch_shards} batch shards "
                        f"(mesh axes {tuple(rules['batch'])})")
  stray = [ax for ax in rules.get("table_rows", ()) if sizes[ax] > 1 and ax not in rules["batch"]]
  if stray:
    raise ConfigError("mesh.rules", f"tables are sharded over {stray}, which the batch is not: "
                      "the embedding collectives need the batch split over every table shard axis")
  _validate_task(config)


def _validate_task(config: ml_collections.ConfigDict) -> None:
  """The task, the model and the loss fit together; then the model's and the task's own checks."""
  task = task_class(config.task.name)
  model = model_module(config.model.name)
  if config.task.name not in model_tasks(model):
    raise ConfigError("task.name", f"model {config.model.name!r} serves tasks {model_tasks(model)}, "
                      f"got {config.task.name!r}")
  if config.train.loss not in task.LOSSES:
    raise ConfigError("train.loss", f"task {config.task.name!r} trains with one of {tuple(task.LOSSES)}, "
                      f"got {config.train.loss!r}")
  model.validate_config(config)
  task.validate_config(config)
  if config.checkpoint.keep_best_metric not in ("", *task.EVAL_METRICS):
    raise ConfigError("checkpoint.keep_best_metric", f"must be '' or an eval metric of task {config.task.name!r}: "
                      f"one of {task.EVAL_METRICS}, got {config.checkpoint.keep_best_metric!r}")


def config_to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as JSON (tuples become lists): what a run records in WORKDIR/config.json."""
  return json.dumps(config.to_dict(), indent=1, sort_keys=True)


def config_from_json(text: str, source: str = "config.json") -> ml_collections.ConfigDict:
  """A config recorded by `config_to_json`, rebuilt on the schema of its model (lists become the
  schema's tuples); parsed, never executed. Raises ConfigError naming a key the schema lacks."""
  try:
    values = json.loads(text)
    model = values["model"]["name"]
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError("config", f"{source}: not a recorded rankjax config ({e})") from None
  config = base_config(model)

  def as_tuples(v: Any) -> Any:
    return tuple(as_tuples(x) for x in v) if isinstance(v, list) else v

  def fill(node: ml_collections.ConfigDict, given: dict, prefix: str) -> None:
    for key, value in given.items():
      if key not in node:
        raise ConfigError(prefix + key, f"{source}: unknown key for model {model!r}")
      if isinstance(node[key], ml_collections.ConfigDict):
        fill(node[key], value, f"{prefix}{key}.")
      else:
        with node.ignore_type():
          node[key] = as_tuples(value)

  fill(config, values, "")
  return config
