"""rankjax's click models against LightGBM on a real table: the Caravan insurance data (CoIL 2000
challenge: 5,822 customers, 85 socio-demographic and product-ownership attributes, 6% bought a
caravan policy) from the ISLP wheel on PyPI, fetched at run time (nothing is committed).

Protocol: a fixed test split (25% of the rows, drawn once from seed 20001, the same for every
run); per seed, the same validation split (20% of the remaining rows, rankjax's
`data.validation_fraction` Holdout with order "random") serves both sides' early stopping
(rankjax: validation AUC every eval_every steps, the test split scored at the best step;
LightGBM: validation AUC, the best iteration, and the best of a small grid of tree sizes; rankjax:
the best of three embedding learning rates; with several --configs, also the config chosen by
validation AUC per seed, printed as "rankjax, config chosen on validation"). Test AUC for both by scikit-learn's roc_auc_score
(checked against rankjax's own eval AUC). Every attribute is an integer code: rankjax reads each
both as a dense value (standardised from the train split's statistics) and as a bucketised
categorical feature (one embedding row per code seen in train); LightGBM gets the 85 values.
LightGBM is installed at run time, not a dependency:

  pip install lightgbm && python scripts/table_vs_lightgbm.py --out /tmp/caravan [--seeds 0 1 2]
      [--configs logreg dcnv2 finalmlp] [--set train.dropout=0.1 ...] [--no-lightgbm]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ltr_vs_lightgbm import apply_override  # Its sibling in scripts/: KEY=VALUE on a config.

WHEEL, MEMBER = "ISLP==0.6.0", "ISLP/data/Caravan.csv"
TEST_FRACTION, TEST_SEED = 0.25, 20001
ROOT = pathlib.Path(__file__).resolve().parents[1]
# LightGBM's (num_leaves, min_child_samples), learning rate 0.01, early stopping after 200 rounds.
LIGHTGBM_GRID = [(leaves, min_child) for leaves in (4, 8, 16, 31) for min_child in (20, 80)]
RANKJAX_LEARNING_RATES = (0.1, 0.02, 0.005)  # embedding.learning_rate (the tables hold most parameters).


def fetch(out: pathlib.Path) -> pa.Table:
  """Caravan.csv from the ISLP wheel: 85 integer attributes and Purchase (Yes/No)."""
  path = out / "Caravan.csv"
  if not path.exists():
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL, "-d", str(out)],
                   check=True, capture_output=True)
    wheel = next(out.glob("ISLP-*.whl"), None) or next(out.glob("islp-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
      path.write_bytes(archive.read(MEMBER))
  return pa_csv.read_csv(path)


def prepare(table: pa.Table, out: pathlib.Path, codes: str) -> tuple[pathlib.Path, list[str], np.ndarray]:
  """train.parquet / test.parquet (label 0/1 + the attributes) and the spec; returns the dataset
  directory, the attribute names and the test labels."""
  features = [c for c in table.column_names if c not in ("Purchase", "")]
  label = (np.asarray(table["Purchase"].to_pylist()) == "Yes").astype(np.float32)
  rng = np.random.default_rng(TEST_SEED)
  test = np.zeros(len(label), bool)
  test[rng.choice(len(label), int(round(TEST_FRACTION * len(label))), replace=False)] = True
  columns = {"label": label, **{c: np.asarray(table[c].to_numpy(), np.float64) for c in features}}
  for name, rows in (("train", ~test), ("test", test)):
    pq.write_table(pa.table({k: v[rows] for k, v in columns.items()}), out / f"{name}.parquet")  # Same for both.
  train_values = {c: np.unique(columns[c][~test]) for c in features}
  spec = {"label": "label", "dense": features,
          "categorical": [{"name": f"{c}_code", "column": c,
                           "boundaries": [float(b) for b in (train_values[c][1:] + train_values[c][:-1]) / 2]}
                          for c in features if len(train_values[c]) > 1 and (codes == "all" or c == "MOSTYPE")]}
  (out / "spec.json").write_text(json.dumps(spec))
  data = out / f"data_{codes}"
  if not (data / "manifest.json").exists():
    from rankjax.cli import data as data_cli
    assert data_cli.main(["table", "--input", str(out / "train.parquet"), "--eval-input", str(out / "test.parquet"),
                          "--output", str(data), "--spec", str(out / "spec.json")]) == 0
  return data, features, label[test]


def run_rankjax(data: pathlib.Path, work: pathlib.Path, name: str, seed: int, test_labels: np.ndarray,
                overrides: tuple[str, ...] = ()) -> dict:
  from sklearn.metrics import roc_auc_score
  from rankjax import train as train_lib
  from rankjax.config import load_config_file
  config = load_config_file(str(ROOT / "configs" / f"{name}.py"))
  config.data.path, config.seed, config.data.shuffle_seed = str(data), seed, seed
  config.data.validation_fraction, config.data.validation_order = 0.2, "random"
  config.train.steps, config.train.batch_size, config.train.eval_batch_size = 3000, 64, 64
  config.train.eval_every, config.train.log_every, config.checkpoint.every_steps = 25, 25, 3000
  config.train.early_stopping.metric, config.train.early_stopping.patience = "auc", 10
  config.train.progress_bar, config.eval.write_scores = False, True
  config.checkpoint.keep_best_metric = ""
  for assignment in overrides:
    apply_override(config, assignment)
  workdir = work / "_".join([f"rankjax_{name}_{seed}", data.name, *overrides]).replace("/", "-")
  shutil.rmtree(workdir, ignore_errors=True)  # A rerun trains afresh (a finished workdir would be reported as is).
  summary = train_lib.train(config, workdir, log=lambda _: None)
  scores = pq.read_table(workdir / "eval_scores.parquet").to_pydict()
  order = np.argsort(scores["row"])
  auc = float(roc_auc_score(test_labels, np.asarray(scores["score"])[order]))
  assert abs(auc - summary["eval_auc"]) < 1e-3, (auc, summary["eval_auc"])  # The same metric (binned on device).
  return {"test_auc": auc, "best_step": summary["best_step"], "best_validation_auc": summary["best_validation_auc"]}


def run_lightgbm(data: pathlib.Path, features: list[str], seed: int) -> dict:
  import lightgbm
  from sklearn.metrics import roc_auc_score
  from rankjax.data.pipeline import Holdout
  x, y = {}, {}
  for split in ("train", "test"):
    table = pq.read_table(data.parent / f"{split}.parquet")
    x[split] = np.stack([table[c].to_numpy() for c in features], axis=1)
    y[split] = table["label"].to_numpy()
  fit, validation = Holdout(0.2, "random", seed).indices(len(y["train"]))
  best = None
  for leaves, min_child in LIGHTGBM_GRID:  # Chosen by validation AUC, as rankjax's best step is.
    model = lightgbm.LGBMClassifier(n_estimators=5000, learning_rate=0.01, num_leaves=leaves, metric="auc",
                                    min_child_samples=min_child, subsample=0.8, subsample_freq=1,
                                    colsample_bytree=0.5, reg_lambda=1.0, random_state=seed, verbose=-1)
    model.fit(x["train"][fit], y["train"][fit], eval_set=[(x["train"][validation], y["train"][validation])],
              callbacks=[lightgbm.early_stopping(200, first_metric_only=True, verbose=False)])
    score = model.best_score_["valid_0"]["auc"]
    if best is None or score > best[0]:
      best = (score, model, leaves, min_child)
  _, model, leaves, min_child = best
  scores = model.predict_proba(x["test"], num_iteration=model.best_iteration_)[:, 1]
  return {"test_auc": float(roc_auc_score(y["test"], scores)), "best_iteration": int(model.best_iteration_),
          "num_leaves": leaves, "min_child_samples": min_child, "best_validation_auc": float(best[0])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--configs", nargs="*", default=["logreg", "deepfm"], help="rankjax configs (none: LightGBM only)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a rankjax config override for every rankjax run (e.g. train.dropout=0.1)")
  parser.add_argument("--no-lightgbm", action="store_true", help="rankjax runs only")
  parser.add_argument("--codes", choices=("all", "subtype"), default="all",
                      help="the attributes read as categorical codes besides as dense values: all of them, or only "
                           "the customer subtype (MOSTYPE)")
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  data, features, test_labels = prepare(fetch(args.out), args.out, args.codes)
  results = {}
  for seed in args.seeds:
    if not args.no_lightgbm:
      results[f"lightgbm/{seed}"] = run_lightgbm(data, features, seed)
      print(json.dumps({"model": "lightgbm", "seed": seed, **results[f"lightgbm/{seed}"]}), flush=True)
    for name in args.configs:
      runs = []
      for rate in RANKJAX_LEARNING_RATES:  # Chosen by validation AUC, as LightGBM's tree size is.
        overrides = (f"embedding.learning_rate={rate}", *args.set)
        runs.append({**run_rankjax(data, args.out, name, seed, test_labels, overrides), "overrides": overrides})
        print(json.dumps({"model": f"rankjax {name}", "seed": seed, **runs[-1]}), flush=True)
      results[f"{name}/{seed}"] = max(runs, key=lambda r: r["best_validation_auc"])
  if len(args.configs) > 1:  # The config as well as its rate chosen by validation AUC, per seed.
    for seed in args.seeds:
      best = max(args.configs, key=lambda name: results[f"{name}/{seed}"]["best_validation_auc"])
      results[f"rankjax/{seed}"] = {**results[f"{best}/{seed}"], "config": best}
  for name in [*([] if args.no_lightgbm else ["lightgbm"]), *args.configs, *(["rankjax"] if len(args.configs) > 1 else [])]:
    chosen = [results[f"{name}/{s}"] for s in args.seeds]
    values = [r["test_auc"] for r in chosen]
    print(json.dumps({"model": name if name != "rankjax" else f"rankjax, config chosen on validation among {args.configs}",
                      "test_auc_mean": float(np.mean(values)), "test_auc_std": float(np.std(values)),
                      "seeds": args.seeds,
                      "chosen": [[r["config"], *r["overrides"]] if "config" in r else r.get("overrides", r.get("num_leaves"))
                                 for r in chosen]}))


if __name__ == "__main__":
  main()
