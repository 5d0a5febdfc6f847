"""WORKDIR/training_curves.png: the train loss and every eval metric against the step, drawn from
metrics.jsonl at the end of a run (and by `rankjax plot`). matplotlib is optional (the `plot`
extra); without it the run says how to get the plot and carries on."""

from __future__ import annotations

import json
import math
import pathlib

PLOT_FILE = "training_curves.png"
# Eval fields that are counts or bounds rather than quality metrics: not plotted.
_NOT_PLOTTED = ("examples", "queries", "gauc_groups", "auc_error_bound", "gauc_error_bound")


def _series(events: list[dict], split: str) -> dict[str, tuple[list[int], list[float]]]:
  """name -> (steps, values) of the split's finite scalar fields."""
  series: dict[str, tuple[list[int], list[float]]] = {}
  for event in events:
    if event.get("split") != split:
      continue
    for name, value in event.items():
      if name in ("step", "split") or name.split("/")[-1] in _NOT_PLOTTED:
        continue
      if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        steps, values = series.setdefault(name, ([], []))
        steps.append(int(event["step"]))
        values.append(float(value))
  return series


def write(workdir: str | pathlib.Path) -> pathlib.Path:
  """Draws metrics.jsonl into WORKDIR/training_curves.png (one panel for the train and eval loss,
  one per other eval metric); returns its path. Raises ImportError without matplotlib, ValueError without events."""
  import matplotlib
  matplotlib.use("Agg")  # Files only: no display on training hosts.
  from matplotlib import pyplot as plt

  workdir = pathlib.Path(workdir)
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    raise ValueError(f"{path}: no metrics to plot (run `rankjax train` first)")
  events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  train = {k: v for k, v in _series(events, "train").items() if k == "loss" or k.startswith("loss/")}
  # The periodic evaluations: of the validation split when the run has one (the eval split is then
  # the test split, scored once at the end).
  split = "validation" if any(e.get("split") == "validation" for e in events) else "eval"
  evaluation = _series(events, split)
  if not train and not evaluation:
    raise ValueError(f"{path}: no train or eval events to plot")
  losses = {f"train {k}": v for k, v in train.items()}
  if "loss" in evaluation:
    losses[f"{split} loss"] = evaluation.pop("loss")
  panels = [("loss", losses)] + [(f"{split} {name}", {name: series}) for name, series in evaluation.items()]
  columns = min(3, len(panels))
  rows = math.ceil(len(panels) / columns)
  figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
  for ax, (title, series) in zip(axes.ravel(), panels):
    for name, (steps, values) in series.items():
      ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(series) > 1:
      ax.legend(fontsize="small")
  for ax in axes.ravel()[len(panels):]:
    ax.set_visible(False)
  figure.tight_layout()
  out = workdir / PLOT_FILE
  figure.savefig(out, dpi=100)
  plt.close(figure)
  return out
