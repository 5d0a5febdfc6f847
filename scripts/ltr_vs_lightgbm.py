"""rankjax's rankers against LightGBM LambdaRank on the MSLR-WEB10K sample shipped in the rankeval
sdist (msn1.fold1.train.5k.txt / msn1.fold1.test.5k.txt: 5,000 documents each, 136 features,
relevance 0..4), fetched from PyPI at run time (nothing is committed).

Protocol: one validation split (20% of the train queries, drawn at random from the seed) serves
both: rankjax stops early on its NDCG@10 and scores the test split at the best step; LightGBM
stops early on the same queries. Test NDCG@10 for both by rankjax.metrics.ndcg_at_k over the test
queries with a relevant document (rankjax's eval.no_relevant=skip; checked against rankjax's own
eval on its scores). LightGBM is installed at run time, not a dependency:

  pip install lightgbm && python scripts/ltr_vs_lightgbm.py --out /tmp/ltr_bench [--seeds 0 1 2]
      [--set task.normalize=standardize --set train.dropout=0.1 ...] [--no-lightgbm]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow.parquet as pq

SAMPLE = "rankeval-0.8.2/rankeval/test/data/msn1.fold1.{}.5k.txt"
LOSSES = ("softmax", "lambda_ndcg", "pairwise_logistic", "listmle", "approx_ndcg")


def fetch(out: pathlib.Path) -> dict[str, pathlib.Path]:
  """The train and test sample files, from the rankeval 0.8.2 sdist."""
  files = {split: out / f"msn1.{split}.txt" for split in ("train", "test")}
  if all(p.exists() for p in files.values()):
    return files
  subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  "--no-build-isolation", "rankeval==0.8.2", "-d", str(out)], check=True, capture_output=True)
  with tarfile.open(out / "rankeval-0.8.2.tar.gz") as archive:
    for split, path in files.items():
      path.write_bytes(archive.extractfile(SAMPLE.format(split)).read())
  return files


def test_ndcg(relevance: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> float:
  from rankjax import metrics
  relevant = ((relevance > 0) & (mask > 0)).any(axis=1)
  return metrics.ndcg_at_k(relevance[relevant], scores[relevant], mask[relevant], 10)


def apply_override(config, assignment: str) -> None:
  """KEY=VALUE on the config, VALUE parsed as the key's current type."""
  key, _, text = assignment.partition("=")
  *parents, leaf = key.split(".")
  node = config
  for name in parents:
    node = node[name]
  old = node[leaf]
  node[leaf] = (text.lower() == "true") if isinstance(old, bool) else type(old)(text)


def run_rankjax(data: pathlib.Path, work: pathlib.Path, loss: str, seed: int, records,
                overrides: tuple[str, ...] = ()) -> dict:
  from rankjax import train as train_lib
  from rankjax.config import load_config_file
  config = load_config_file(str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "ltr_letor.py"))
  config.data.path, config.train.loss, config.seed, config.data.shuffle_seed = str(data), loss, seed, seed
  config.data.validation_fraction, config.data.validation_order = 0.2, "random"
  config.train.steps, config.train.batch_size, config.train.eval_batch_size = 1500, 8, 8
  config.train.eval_every, config.train.log_every, config.checkpoint.every_steps = 25, 25, 1500
  config.train.early_stopping.metric, config.train.early_stopping.patience = "ndcg@10", 8
  config.train.progress_bar, config.eval.write_scores = False, True
  config.checkpoint.keep_best_metric = ""
  for assignment in overrides:
    apply_override(config, assignment)
  workdir = work / f"rankjax_{loss}_{seed}" if not overrides else work / f"rankjax_{loss}_{seed}_{'_'.join(overrides)}"
  summary = train_lib.train(config, workdir, log=lambda _: None)
  table = pq.read_table(workdir / "eval_scores.parquet").to_pydict()
  scores = np.zeros(records["mask"].shape)
  for row, values in zip(table["row"], table["score"]):
    scores[row, :len(values)] = values
  own = test_ndcg(records["relevance"], scores, records["mask"])
  assert abs(own - summary["eval_ndcg@10"]) < 1e-5, (own, summary["eval_ndcg@10"])  # The same metric.
  return {"test_ndcg@10": summary["eval_ndcg@10"], "best_step": summary["best_step"],
          "best_validation_ndcg@10": summary["best_validation_ndcg@10"]}


def _rows(records, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(features of the real documents, their relevance, documents per list) of `lists`."""
  mask = records["mask"][lists] > 0
  return records["features"][lists][mask], records["relevance"][lists][mask], mask.sum(axis=1)


def run_lightgbm(train_records, test_records, seed: int) -> dict:
  import lightgbm
  from rankjax.data.pipeline import Holdout
  fit, validation = Holdout(0.2, "random", seed).indices(len(train_records))
  x, y, groups = _rows(train_records, fit)
  vx, vy, vgroups = _rows(train_records, validation)
  model = lightgbm.LGBMRanker(objective="lambdarank", n_estimators=2000, learning_rate=0.05, num_leaves=31,
                              min_child_samples=20, subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                              random_state=seed, verbose=-1)
  model.fit(x, y, group=groups, eval_set=[(vx, vy)], eval_group=[vgroups], eval_at=[10],
            callbacks=[lightgbm.early_stopping(50, verbose=False)])
  mask = test_records["mask"] > 0
  scores = np.zeros(mask.shape)
  scores[mask] = model.predict(test_records["features"][mask], num_iteration=model.best_iteration_)
  return {"test_ndcg@10": test_ndcg(test_records["relevance"], scores, test_records["mask"]),
          "best_iteration": int(model.best_iteration_)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--losses", nargs="+", default=list(LOSSES))
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a rankjax config override for every rankjax run (e.g. task.normalize=standardize)")
  parser.add_argument("--no-lightgbm", action="store_true", help="rankjax runs only")
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  from rankjax.cli import data as data_cli
  from rankjax.data import layout
  files, data = fetch(args.out), args.out / "data"
  if not (data / layout.MANIFEST).exists():
    assert data_cli.main(["letor", "--input", str(files["train"]), "--eval-input", str(files["test"]),
                          "--output", str(data)]) == 0
  manifest = layout.read_manifest(data)
  train_records, test_records = (layout.open_split(data, manifest, s)[:] for s in ("train", "eval"))
  results = {}
  for seed in args.seeds:
    if not args.no_lightgbm:
      results[f"lightgbm/{seed}"] = run_lightgbm(train_records, test_records, seed)
      print(json.dumps({"model": "lightgbm_lambdarank", "seed": seed, **results[f"lightgbm/{seed}"]}), flush=True)
    for loss in args.losses:
      results[f"{loss}/{seed}"] = run_rankjax(data, args.out, loss, seed, test_records, tuple(args.set))
      print(json.dumps({"model": f"rankjax ltr_mlp {loss}", "seed": seed, "overrides": args.set,
                        **results[f"{loss}/{seed}"]}), flush=True)
  for name in [*([] if args.no_lightgbm else ["lightgbm"]), *args.losses]:
    values = [results[f"{name}/{s}"]["test_ndcg@10"] for s in args.seeds]
    print(json.dumps({"model": name, "test_ndcg@10_mean": float(np.mean(values)),
                      "test_ndcg@10_std": float(np.std(values)), "seeds": args.seeds}))


if __name__ == "__main__":
  main()
