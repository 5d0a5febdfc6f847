"""The step time `rankjax plan --predict-time` predicts against the one `rankjax bench train` measures,
side by side in one process on this CPU (the numbers of BENCHMARKS.md, "Predicted vs measured").

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python scripts/plan_vs_measured.py \
      --configs configs/default.py,configs/dlrm_small_cpu.py,configs/deepfm.py --devices 1 \
      [--shardings row_wise,table_wise] [--steps 20] [--set KEY=VALUE ...] [--device-kind h200] [--no-predict]

One JSON line per (config, sharding): predicted step ms (the sum model and the roofline max),
measured median step ms, and their ratio predicted / measured.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import jax

from rankjax.config import load_config_file, validate
from rankjax.experiment import data_shape
from rankjax.perf import step_time
from rankjax.perf.bench import bench


def _get(config, dotted: str):
  for name in dotted.split("."):
    config = config[name]
  return config


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", required=True, help="comma-separated config files")
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--shardings", default="", help="comma-separated embedding.sharding values (default: the config's)")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override, repeatable")
  parser.add_argument("--device-kind", default="cpu", choices=step_time.DEVICE_KINDS,
                      help="the peaks the prediction divides by (cpu: calibrated here; a GPU kind: its datasheet)")
  parser.add_argument("--no-predict", action="store_true", help="measure only (samples/s per config)")
  args = parser.parse_args(argv)
  devices = jax.devices()[:args.devices]
  peak = None
  failures = 0
  for path in args.configs.split(","):
    for sharding in args.shardings.split(",") if args.shardings else [None]:
      try:
        row = _row(path, sharding, args, devices, peak)
      except Exception as error:  # One config's failure is reported, and the others still run.
        failures += 1
        row = {"config": path, "sharding": sharding, "error": f"{type(error).__name__}: {error}"[:2000]}
      peak = row.pop("_peak", peak)
      print(json.dumps(row), flush=True)
  return 1 if failures else 0


def _row(path: str, sharding: str | None, args: argparse.Namespace, devices: list[jax.Device],
         peak: step_time.Peak | None) -> dict:
  config = load_config_file(path)
  for key, _, text in (a.partition("=") for a in args.set + ([f"embedding.sharding={sharding}"] if sharding else [])):
    old = _get(config, key)
    config.update_from_flattened_dict({key: (text.lower() == "true") if isinstance(old, bool) else type(old)(text)})
  validate(config, len(devices))
  workdir = pathlib.Path(tempfile.gettempdir()) / "rankjax_bench" / pathlib.Path(path).stem
  row = {"config": path, "sharding": config.embedding.sharding, "devices": len(devices),
         "batch": config.train.batch_size}
  if not args.no_predict:
    predicted = step_time.predict(config, data_shape(config), devices, args.device_kind, peak)
    if args.device_kind == "cpu":
      row["_peak"] = step_time.Peak(**predicted["peak_values"])  # One calibration for every row.
  measured = bench(config, workdir, args.steps, args.warmup, devices)
  row.update({"measured_ms": round(measured["step_ms_median"], 3),
              "samples_per_s": round(measured["samples_per_sec"]), "compile_s": round(measured["compile_s"], 2),
              "device_kind": measured["device_kind"]})
  if args.no_predict:
    return row
  peak_used = step_time.Peak(**predicted["peak_values"])
  row.update({
      "predicted_ms": round(predicted["step_s"] * 1e3, 3),
      "ratio_predicted_over_measured": round(predicted["step_s"] * 1e3 / measured["step_ms_median"], 3),
      "roofline_ms": round(predicted["roofline_s"] * 1e3, 3),
      "compute_ms": round(predicted["compute_s"] * 1e3, 3), "memory_ms": round(predicted["memory_s"] * 1e3, 3),
      "collective_ms": round(predicted["collective_s"] * 1e3, 3),
      "overhead_ms": round(predicted["overhead_s"] * 1e3, 3), "kernels": predicted["kernels_per_device"],
      "compute_dtype": predicted["compute_dtype"], "peak": predicted["peak"],
      "peak_flops_per_s": peak_used.flops_per_s, "peak_bytes_per_s": peak_used.bytes_per_s})
  return row


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
