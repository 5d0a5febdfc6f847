"""The report of `rankjax plan`: the embedding plan of a config, per table and per device, with the compiled
train step's memory analysis when the step compiles for the target devices; with `--predict-time`,
each candidate plan's predicted step time (rankjax.perf.step_time) and the fastest that fits."""

from __future__ import annotations

import json

import jax
import ml_collections

from rankjax.config import task_class, validate
from rankjax.errors import ConfigError
from rankjax.embedding import planner
from rankjax.embedding.builder import configured_tables, table_hosts
from rankjax.experiment import compile_abstract, data_shape
from rankjax.perf import step_time
from rankjax.tasks.ctr import column_aliases


def compiled_memory(config: ml_collections.ConfigDict, shape: dict) -> dict | None:
  """memory_analysis() of the compiled train step on the visible devices, from abstract inputs."""
  analysis = compile_abstract(config, shape, jax.devices())[2].memory_analysis()
  if analysis is None:
    return None
  return {k: int(getattr(analysis, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "generated_code")}


# Uniform plans compared with the configured one by --predict-time.
CANDIDATES = ("row_wise", "table_wise", "column_wise", "replicated")


def print_plan(config: ml_collections.ConfigDict, devices: int | None, device_memory: int | None,
               predict_kind: str | None = None) -> planner.Plan | None:
  """Prints the plan (None when the task has no tables) and the compiled step's memory; with
  `predict_kind` (rankjax.perf.step_time.DEVICE_KINDS), each candidate's predicted step time."""
  num_devices = devices or jax.device_count()
  validate(config, num_devices)
  shape = data_shape(config)
  tables = task_class(config.task.name).embedding_tables(config, shape)
  tables = configured_tables(config, tables, num_devices, column_aliases(shape))
  if not tables:
    print(f"task {config.task.name!r} with model {config.model.name!r} has no embedding tables: "
          "dense parameters only, replicated on every device")
    result = None
  else:
    result = _print_tables(config, tables, num_devices, device_memory)
  if jax.device_count() == num_devices and not predict_kind:
    memory = compiled_memory(config, shape)
    if memory:
      print("compiled train step, per device: " + json.dumps(memory))
  if predict_kind and tables:
    print_predictions(config, shape, num_devices, device_memory, predict_kind)
  return result


def print_predictions(config: ml_collections.ConfigDict, shape: dict, num_devices: int, device_memory: int | None,
                      kind: str) -> list[dict]:
  """Each candidate plan's bytes per device and predicted step time on `kind`; names the fastest
  that fits. Returns the rows (a row that cannot be built has `error`)."""
  if jax.device_count() < num_devices:
    raise ConfigError("--devices", f"predicting step times compiles the step for {num_devices} devices; "
                      f"{jax.device_count()} are visible")
  devices = jax.devices()[:num_devices]
  candidates = CANDIDATES + (("table_row_wise",) if table_hosts(config, num_devices) > 1 else ())
  names = [config.embedding.sharding] + [c for c in candidates if c != config.embedding.sharding]
  rows, peak = [], None
  for name in names:
    candidate = config.copy_and_resolve_references()
    candidate.embedding.sharding = name
    row = {"plan": name + (" (configured)" if name == config.embedding.sharding else "")}
    try:
      tables = configured_tables(candidate, task_class(config.task.name).embedding_tables(candidate, shape),
                                 num_devices, column_aliases(shape))
      row["max_bytes_per_device"] = int(planner.plan(tables, num_devices, optimizer=config.embedding.optimizer,
                                                     num_hosts=table_hosts(config, num_devices)).device_bytes.max())
      if device_memory is not None and row["max_bytes_per_device"] > device_memory:
        row["error"] = f"does not fit in {device_memory:,} B"
      else:
        row |= step_time.predict(candidate, shape, devices, kind, peak)
        peak = step_time.Peak(**row.pop("peak_values"))
    except (ConfigError, ValueError) as err:
      row["error"] = str(err)
    rows.append(row)
  ok = [r for r in rows if "error" not in r]
  print(f"\npredicted train step on {ok[0]['peak'] if ok else kind}, {num_devices} devices, "
        f"batch {config.train.batch_size} (rankjax/perf/step_time.py):")
  print(f"{'plan':<26}{'max bytes/device':>18}{'compute ms':>12}{'memory ms':>11}{'collective ms':>15}"
        f"{'step ms':>10}{'samples/s':>12}")
  for r in rows:
    if "error" in r:
      print(f"{r['plan']:<26}  cannot: {r['error']}")
      continue
    print(f"{r['plan']:<26}{r['max_bytes_per_device']:>18,}{r['compute_s'] * 1e3:>12.4g}{r['memory_s'] * 1e3:>11.4g}"
          f"{r['collective_s'] * 1e3:>15.4g}{r['step_s'] * 1e3:>10.4g}{r['samples_per_s']:>12,.0f}")
  if ok:
    best = min(ok, key=lambda r: r["step_s"])
    name = best["plan"].removesuffix(" (configured)")
    print(f"fastest that fits: {name} (--config.embedding.sharding={name})")
  return rows


def _print_tables(config: ml_collections.ConfigDict, tables: list, num_devices: int,
                  device_memory: int | None) -> planner.Plan:
  hosts = table_hosts(config, num_devices)
  result = planner.plan(tables, num_devices, optimizer=config.embedding.optimizer, device_memory=device_memory,
                        num_hosts=hosts)
  print(f"{'table':<14}{'rows':>12}{'dim':>5}  {'sharding':<15}{'bytes total':>16}{'max bytes/device':>18}")
  for t, p in zip(tables, result.tables):
    print(f"{t.name:<14}{t.vocab_size:>12,}{t.dim:>5}  {p.sharding:<15}{p.bytes_total:>16,}{max(p.bytes_per_device):>18,}")
  print(f"\nper device (embedding params + optimizer state), {num_devices} devices"
        + (f" on {hosts} hosts (host-major)" if hosts > 1 else "") + ":")
  for d, b in enumerate(result.device_bytes):
    print(f"  device {d:>3}: {int(b):>16,} B")
  print(f"imbalance (max/mean): {result.imbalance:.3f}")
  return result
