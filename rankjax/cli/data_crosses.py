"""`rankjax data crosses --path DATASET`: which feature pairs interact (rankjax/data/cross_selection.py),
ranked, with the `--config.model.crosses=...` override of the pairs worth a cross."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from rankjax.data import cross_selection, layout


def parser(parser_class) -> argparse.ArgumentParser:
  p = parser_class(prog="rankjax data crosses", description=__doc__.splitlines()[0])
  p.add_argument("--path", required=True, help="a dataset directory (manifest.json + splits)")
  p.add_argument("--records", type=int, default=1_000_000,
                 help="train records sampled (default 1,000,000; all when the split is smaller)")
  p.add_argument("--min-count", type=int, default=cross_selection.MIN_COUNT,
                 help=f"rows a cell needs to count (default {cross_selection.MIN_COUNT})")
  p.add_argument("--min-z", type=float, default=3.0, help="the score a pair needs to be proposed (default 3)")
  p.add_argument("--top", type=int, default=20, help="pairs printed (default 20)")
  p.add_argument("--label-index", type=int, default=0, help="the label column, for data with several (default 0)")
  p.add_argument("--seed", type=int, default=0, help="of the record sample")
  return p


def run(args: argparse.Namespace) -> list[cross_selection.PairScore]:
  from rankjax.tasks.ctr import column_aliases
  directory = pathlib.Path(args.path)
  manifest = layout.read_manifest(directory)
  if args.records < 1:
    raise ValueError(f"--records must be >= 1, got {args.records}")
  if args.min_count < 1:  # Before sampling: score_pairs checks it too.
    raise ValueError(f"--min-count must be >= 1, got {args.min_count}")
  records = layout.open_split(directory, manifest, "train", verify=False)
  dtype = records.dtype
  if "cat" not in dtype.names or "label" not in dtype.names:
    raise layout.DataError(f"{directory}: not click data (its records have no 'cat' and 'label' fields)")
  vocab = [int(v) for v in manifest["vocab_sizes"]]
  hotness = [int(h) for h in manifest.get("hotness") or [1] * len(vocab)]
  raw = manifest.get("raw_ids") or [False] * len(vocab)
  starts = np.concatenate([[0], np.cumsum(hotness)[:-1]]).astype(int)
  features = [f for f in range(len(vocab)) if hotness[f] == 1 and not raw[f]]
  if len(features) < 2:
    raise layout.DataError(f"{directory}: fewer than two single-id features with rows (multi-hot and raw-id "
                           "features are left out)")
  rng = np.random.default_rng(args.seed)
  take = np.sort(rng.choice(len(records), min(args.records, len(records)), replace=False))
  sample = records[take]
  labels = sample["label"].reshape(len(take), -1)
  if not 0 <= args.label_index < labels.shape[1]:
    raise ValueError(f"--label-index must be in [0, {labels.shape[1]}), got {args.label_index}")
  ids = np.asarray(sample["cat"]).reshape(len(take), -1)[:, starts[features]]
  bad = (ids < 0) | (ids >= np.array([vocab[f] for f in features]))
  if bad.any():  # Padding or out-of-vocabulary ids: the row's pairs would have no cell.
    keep = ~bad.any(axis=1)
    ids, labels = ids[keep], labels[keep]
  names = [f"cat_{f}" for f in features]
  scores = cross_selection.score_pairs(ids, labels[:, args.label_index], [vocab[f] for f in features], names,
                                       args.min_count)
  alias = {feature: column for column, feature in column_aliases(manifest).items()}
  print(f"rankjax data crosses: {len(ids):,} train records of {directory}"
        + (f" ({int(bad.any(axis=1).sum()):,} sampled rows with padding or out-of-range ids left out)"
           if bad.any() else "")
        + f", {len(features)} single-id features, {len(scores)} pairs")
  print(f"{'pair':<26}{'columns':<16}{'z':>9}{'cells':>10}{'rows':>11}")
  for s in scores[:args.top]:
    columns = " x ".join(alias.get(f, f) for f in s.features) if alias else ""
    print(f"{' x '.join(s.features):<26}{columns:<16}{s.z:>9.1f}{s.cells:>10,}{s.rows:>11,}")
  chosen = [s.features for s in scores if s.z >= args.min_z]
  crosses = "(" + ",".join(f"('{a}','{b}')" for a, b in chosen) + ("," if len(chosen) == 1 else "") + ")"
  print(f"pairs with z >= {args.min_z:g}: {len(chosen)}; as Wide & Deep's crosses: "
        f"--config.model.crosses=\"{crosses}\"")
  return scores
