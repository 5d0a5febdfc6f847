"""What length-bucketed batches save on long query lists (BENCHMARKS.md, "Length-bucketed batches").

  python scripts/length_buckets_bench.py [--queries 300] [--lengths uniform|skewed] [--out DIR] [--eval-only]

Synthetic LETOR lists (20 features, graded relevance from a planted linear score), `uniform`
lengths in [200, 1000] or `skewed` ones (log-normal, median 60, capped at 1000, as web-search
sets are), converted with `rankjax data letor`. Then, in one process:
1. the whole eval split scored by `rankjax.train.evaluate` with eval.length_buckets off and on,
   alternated (after one warm-up pass each, so compiles are not timed), and the metrics of both;
2. `rankjax train` of configs/ltr_mslr.py on whole lists (softmax, batch 16, 300 steps) with
   train.length_buckets=0 and =8: wall time, lists/s (after the first 8 steps; the bucketed run's
   later compiles, one per new width, included) and test NDCG@10.
One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from rankjax import train as train_lib
from rankjax.config import load_config_file
from rankjax.data import letor
from rankjax.experiment import build

CONFIG = "configs/ltr_mslr.py"


def write_lists(path: pathlib.Path, queries: int, lengths: str, seed: int) -> None:
  rng = np.random.default_rng(seed)
  weights = rng.normal(size=20)
  if lengths == "uniform":
    sizes = rng.integers(200, 1001, queries)
  else:
    sizes = np.clip(rng.lognormal(np.log(60), 1.0, queries), 2, 1000).astype(int)
  with open(path, "w") as f:
    for q, size in enumerate(sizes):
      x = rng.normal(size=(size, 20))
      relevance = np.digitize(x @ weights + rng.normal(size=size), [1.0, 2.5, 4.0, 5.5])
      for rel, row in zip(relevance, x):
        f.write(f"{rel} qid:{q} " + " ".join(f"{i + 1}:{v:.3f}" for i, v in enumerate(row)) + "\n")


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--queries", type=int, default=300)
  parser.add_argument("--lengths", choices=("uniform", "skewed"), default="uniform")
  parser.add_argument("--out", default="", help="work directory; its data is reused when present")
  parser.add_argument("--eval-only", action="store_true", help="skip the two training runs")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out or tempfile.mkdtemp())
  out.mkdir(parents=True, exist_ok=True)
  data, made_by = out / "data", out / "data_arguments.json"
  arguments = {"queries": args.queries, "lengths": args.lengths}
  if (data / "manifest.json").exists() and made_by.exists() and json.loads(made_by.read_text()) == arguments:
    manifest = json.loads((data / "manifest.json").read_text())  # Made by an earlier run with these arguments.
  else:
    for split, seed in (("train", 0), ("test", 1)):
      write_lists(out / f"{split}.txt", args.queries, args.lengths, seed)
    manifest = letor.convert([out / "train.txt"], data, letor.LetorOptions(eval_inputs=(out / "test.txt",), workers=2))
    made_by.write_text(json.dumps(arguments))
  lengths = manifest["ingest"]["rows_written"] / manifest["ingest"]["queries_written"]
  print(json.dumps({"lists": manifest["ingest"]["queries_written"], "max_list_size": manifest["max_list_size"],
                    "mean_list_size": round(lengths, 1)}), flush=True)

  config = load_config_file(CONFIG)
  config.data.path = str(data)
  config.train.eval_batch_size = 16
  exp = build(config, out / "work")
  state = exp.init_fn(0)
  times = {False: [], True: []}
  metrics = {}
  for repeat in range(3):
    for buckets in (False, True):
      exp.config.eval.length_buckets = buckets
      start = time.perf_counter()
      metrics[buckets] = train_lib.evaluate(exp, state)
      jax.block_until_ready(metrics[buckets])
      if repeat:  # The first pass of each compiles its shapes.
        times[buckets].append(time.perf_counter() - start)
  for buckets in (False, True):
    print(json.dumps({"eval": "bucketed" if buckets else "padded", "seconds": [round(t, 3) for t in times[buckets]],
                      "ndcg@10": metrics[buckets]["ndcg@10"], "loss": metrics[buckets]["loss"]}), flush=True)

  for window in () if args.eval_only else (0, 8):
    workdir = out / f"train_{window}"
    shutil.rmtree(workdir, ignore_errors=True)  # A finished workdir would be reported, not trained.
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rankjax.cli", "train", "--config", CONFIG, "--workdir", str(workdir),
                    f"--config.data.path={data}", "--config.train.loss=softmax", "--config.train.batch_size=16",
                    "--config.train.eval_batch_size=16", "--config.train.steps=300", "--config.train.log_every=10",
                    f"--config.train.length_buckets={window}", "--config.train.progress_bar=False"],
                   check=True, capture_output=True)
    summary = json.loads((workdir / "summary.json").read_text())
    print(json.dumps({"train_length_buckets": window, "wall_s": round(time.perf_counter() - start, 1),
                      "lists_per_sec": summary["lists_per_sec"], "ndcg@10": summary["eval_ndcg@10"]}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
